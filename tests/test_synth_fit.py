"""Fitted synthetic traces: per-layer LRU within 3 points of the trace they were fitted to, deterministic output,
saved fits, one-line errors; on the shared DeepSeek and Mixtral traces when ../shared is present."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.errors import InputError
from simulator.presets import get_preset
from traces.cli import main
from traces.format import TraceFile
from traces.locality import cache
from traces.locality.grid import load_grid
from traces.synth import SynthParams, write_synthetic
from traces.synth_fit import fit_trace, load_fit, save_fit, write_fitted

RHOS = (1, 2, 4)


def per_layer_lru(path) -> dict[int, np.ndarray]:
    """Per-layer LRU hit rate at C = ρ·k, cache kept across sequences (moe-sim cache.scope=layer), per layer."""
    grid = load_grid(path)
    L, k = grid.model.moe_layers, grid.model.top_k
    streams = cache.layer_streams(grid, persist=True)
    d = cache.lru_distances(streams).reshape(-1, L, k)
    valid = streams.keys.reshape(-1, L, k) >= 0
    out = {}
    for rho in RHOS:
        rate = (((d >= 0) & (d < rho * k)) & valid).sum(axis=(0, 2)) / valid.sum(axis=(0, 2))
        out[rho] = np.empty(L)
        out[rho][streams.order] = rate
    return out


def assert_lru_matches(real, synthetic, tolerance=0.03):
    a, b = per_layer_lru(real), per_layer_lru(synthetic)
    for rho in RHOS:
        worst = np.abs(a[rho] - b[rho]).max()
        assert worst <= tolerance, f"ρ={rho}: worst layer differs by {worst:.3f}"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A 'real' trace from the knob generator: skewed, reused, cross-layer correlated, 3 sequences."""
    path = tmp_path_factory.mktemp("real") / "real.parquet"
    write_synthetic(path, get_preset("deepseek-v2-lite"),
                    SynthParams(sequences=3, tokens_per_sequence=300, seed=4, skew=1.0, reuse=0.35, cross_layer=0.4))
    return path


def test_fit_matches_per_layer_lru_and_is_deterministic(real, tmp_path):
    fit = fit_trace(real, calibration_tokens=1500)
    out = tmp_path / "s.parquet"
    write_fitted(out, fit, sequences=2, tokens_per_sequence=2000, seed=3)
    assert_lru_matches(real, out)
    again = tmp_path / "again.parquet"
    write_fitted(again, fit, sequences=2, tokens_per_sequence=2000, seed=3)
    assert out.read_bytes() == again.read_bytes()
    other = tmp_path / "other.parquet"
    write_fitted(other, fit, sequences=2, tokens_per_sequence=2000, seed=4)
    assert out.read_bytes() != other.read_bytes()
    rows = np.concatenate([c.experts for c in TraceFile(out).chunks()])  # TraceFile checks ranges, repeats, order
    assert rows.shape == (2 * 2000 * 26, 6) and (rows >= 0).all()


def test_saved_fit_round_trips(real, tmp_path):
    fit = fit_trace(real, calibration_tokens=1000)
    save_fit(fit, tmp_path / "fit.json")
    assert load_fit(tmp_path / "fit.json") == fit
    for name, value, fragment in (("depth", 0, "field 'depth'"), ("follow_boost", [-1.0] * 26, "field 'follow_boost'")):
        doc = json.loads((tmp_path / "fit.json").read_text())
        doc[name] = value
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match=fragment):
            load_fit(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a routing fit"):
        load_fit(tmp_path / "bad.json")


def test_cli_synth_fit(real, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("traces.synth_fit.CALIBRATION_TOKENS", 1000)
    out = tmp_path / "s.parquet"
    code = main(["synth", "--fit", str(real), "--tokens", "100", "--sequences", "2", "--save-fit",
                 str(tmp_path / "fit.json"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "fitted to real.parquet" in capsys.readouterr().out
    assert TraceFile(out).meta.provenance["source_format"] == "synthetic-fitted"
    code = main(["synth", "--fit", str(tmp_path / "missing.json"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.json" in err


@pytest.mark.parametrize("name, importer, tokens", [
    ("deepseek_v2_lite_moebeyond_prompt_1351_data.csv", "moe_beyond", 6000),
    ("mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl", "vllm_jsonl", 6000),
])
def test_fit_to_shared_traces(shared_traces, tmp_path, name, importer, tokens):
    import importlib

    module = importlib.import_module(f"traces.importers.{importer}")
    real_path = tmp_path / "real.parquet"
    module.import_files([shared_traces / name], real_path)
    fit = fit_trace(real_path, calibration_tokens=2000)
    out = tmp_path / "s.parquet"
    write_fitted(out, fit, sequences=2, tokens_per_sequence=tokens // 2)
    assert_lru_matches(real_path, out)
