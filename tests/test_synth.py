"""The synthetic generator: reproducible, valid, and each knob moves the statistic it is meant to move."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from simulator.errors import InputError
from simulator.presets import get_preset
from traces.format import TraceFile
from traces.info import summarize
from traces.synth import SynthParams, write_synthetic
from traces.synth_fit import fit_digest, load_fit, write_fitted

DEEPSEEK = get_preset("deepseek-v2-lite")
DATA = Path(__file__).parents[1] / "traces" / "data"
DEFAULT_TRACE = DATA / "default.parquet"
DEFAULT_FIT = DATA / "deepseek_v2_lite_fit.json"
DEFAULT_TRACE_ARGS = {"sequences": 4, "tokens_per_sequence": 400, "seed": 0, "vocab_size": 32000}
"""The arguments of the command in traces/data/README.md (a synthetic trace fitted to the shared DeepSeek traces)."""


def synth(tmp_path, name="t.parquet", model=DEEPSEEK, **params) -> Path:
    path = tmp_path / name
    write_synthetic(path, model, SynthParams(**{"sequences": 2, "tokens_per_sequence": 150, **params}))
    return path


def grid(path) -> np.ndarray:
    """Expert ids as [sequence·token, layer, k] (synthetic traces have every (token, layer))."""
    trace = TraceFile(path)
    m = trace.meta.model
    return np.concatenate([c.experts for c in trace.chunks()]).reshape(-1, m.moe_layers, m.top_k)


def test_same_arguments_give_identical_bytes(tmp_path):
    a = synth(tmp_path, "a.parquet", seed=5)
    b = synth(tmp_path, "b.parquet", seed=5)
    c = synth(tmp_path, "c.parquet", seed=6)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_rows_are_valid_and_complete(tmp_path):
    path = synth(tmp_path, skew=3.0, reuse=0.5, cross_layer=0.5)  # high skew forces many redraws for distinctness
    trace = TraceFile(path)
    chunks = list(trace.chunks(extras=True))  # TraceFile rejects repeated experts, ids out of range, bad order
    weights = np.concatenate([c.weights for c in chunks])
    assert trace.num_rows == 2 * 150 * DEEPSEEK.moe_layers
    assert (np.diff(weights, axis=1) <= 0).all(), "slots in router order: weights descending"
    assert np.allclose(weights.sum(axis=1), 1, atol=0.02)
    assert trace.has_token_id and trace.meta.provenance["reuse"] == 0.5


def test_skew_concentrates_popularity(tmp_path):
    flat = summarize(synth(tmp_path, "flat.parquet", skew=0.0, reuse=0.0, cross_layer=0.0))["popularity"]
    steep = summarize(synth(tmp_path, "steep.parquet", skew=1.5, reuse=0.0, cross_layer=0.0))["popularity"]
    assert np.mean(steep["top_share"]) > np.mean(flat["top_share"]) + 0.2
    assert np.mean(steep["entropy_bits"]) < np.mean(flat["entropy_bits"]) - 0.5
    assert np.mean(flat["entropy_bits"]) > flat["uniform_entropy_bits"] - 0.1, "skew 0 is uniform"


def test_reuse_raises_consecutive_overlap(tmp_path):
    none = summarize(synth(tmp_path, "none.parquet", skew=0.0, reuse=0.0, cross_layer=0.0))["consecutive_overlap"]["mean"]
    half = summarize(synth(tmp_path, "half.parquet", skew=0.0, reuse=0.5, cross_layer=0.0))["consecutive_overlap"]["mean"]
    k, n = DEEPSEEK.top_k, DEEPSEEK.experts_per_layer
    assert abs(none - k / n) < 0.02, "independent uniform draws share k/E of their experts"
    assert abs(half - (0.5 + 0.5 * k / n)) < 0.04


def test_cross_layer_makes_next_layer_predictable(tmp_path):
    def predictability(path) -> float:
        """Share of next-layer slots equal to the most frequent successor of the same slot's expert one layer below."""
        ids = grid(path)
        E = DEEPSEEK.experts_per_layer
        hits = total = 0
        for layer in range(ids.shape[1] - 1):
            pairs = np.bincount((ids[:, layer] * E + ids[:, layer + 1]).ravel(), minlength=E * E).reshape(E, E)
            hits += pairs.max(axis=1).sum()
            total += pairs.sum()
        return hits / total

    low = predictability(synth(tmp_path, "low.parquet", reuse=0.0, cross_layer=0.0))
    high = predictability(synth(tmp_path, "high.parquet", reuse=0.0, cross_layer=0.8))
    assert high > low + 0.4


def test_bad_parameters_name_the_field(tmp_path):
    with pytest.raises(InputError, match="field 'reuse': 1.5"):
        synth(tmp_path, reuse=1.5)
    with pytest.raises(InputError, match="field 'sequences'"):
        synth(tmp_path, sequences=0)


def per_layer_lru_hit_rate(path, slots: int) -> float:
    """Per-layer LRU over the whole trace; a token's k lookups are judged before any of them is inserted."""
    ids = grid(path)
    caches = [OrderedDict() for _ in range(ids.shape[1])]
    hits = 0
    for token in ids.tolist():
        for cache, experts in zip(caches, token):
            hits += sum(e in cache for e in experts)
            for e in experts:
                cache[e] = None
                cache.move_to_end(e)
            while len(cache) > slots:
                cache.popitem(last=False)
    return hits / ids.size


def test_shipped_default_trace(tmp_path):
    trace = TraceFile(DEFAULT_TRACE)
    assert DEFAULT_TRACE.stat().st_size < 1_000_000
    assert 20_000 <= trace.num_rows <= 60_000
    fit = load_fit(DEFAULT_FIT)
    assert trace.meta.provenance == {"source_format": "synthetic-fitted", "generator": "traces.synth_fit",
                                     "generator_version": 1, **DEFAULT_TRACE_ARGS, "fit_file": DEFAULT_FIT.name,
                                     "fit_sha256_16": fit_digest(fit), "fitted_to": fit.source["file"]}
    again = tmp_path / "again.parquet"
    write_fitted(again, fit, **DEFAULT_TRACE_ARGS, fit_file=DEFAULT_FIT.name)
    assert again.read_bytes() == DEFAULT_TRACE.read_bytes(), "README command regenerates the shipped trace"
    assert 0.40 <= per_layer_lru_hit_rate(DEFAULT_TRACE, 16) <= 0.60
