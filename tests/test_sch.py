"""SCH against an independent oracle: the one-pass stack algorithm (traces/locality/sch.py) equals a direct
simulation of moe-lrc's rule (tests/locality_reference.py) at every cache size, on random traces, through
`analyze` at both scopes, and on the shared real traces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import toy_model
from tests.locality_reference import reference_sch_hits
from tests.test_locality import write_trace
from traces.locality import sch
from traces.locality.analyze import analyze, capacities
from traces.locality.grid import load_grid


def oracle_curve(tokens: list[list[int]], key_space: int, window: int) -> list[int]:
    return [reference_sch_hits(tokens, C, window)[0] for C in range(1, key_space + 1)]


@st.composite
def streams(draw):
    E = draw(st.integers(2, 9))
    K = draw(st.integers(1, min(E, 4)))
    T = draw(st.integers(1, 14))
    tokens = [draw(st.permutations(range(E)))[:K] for _ in range(T)]
    holes = draw(st.lists(st.tuples(st.integers(0, T - 1), st.integers(0, K - 1)), max_size=3))
    for t, j in holes:  # unrecorded slots: no access
        tokens[t][j] = -1
    return E, tokens, draw(st.integers(1, 8))


@settings(max_examples=150, deadline=None)
@given(streams())
def test_one_pass_equals_the_oracle_at_every_size(case):
    E, tokens, m = case
    curve = sch.hit_curves(np.array(tokens, dtype=np.int32), np.array([0, len(tokens)]), E, m)[0]
    assert curve.tolist() == oracle_curve(tokens, E, m)


def test_drifting_trace_both_scopes_through_analyze(tmp_path):
    """A drifting, skewed trace of 3 sequences (6 layers × 8 experts, top-2): every per-layer and model-level SCH
    value of `analyze` equals the oracle's per-sequence rates averaged over sequences."""
    rng = np.random.default_rng(11)
    L, E, k = 6, 8, 2
    sequences = []
    for length in (40, 25, 9):
        pop = rng.dirichlet(np.full(E, 0.4), size=L)
        tokens = []
        for t in range(length):
            if t % 8 == 0:
                pop = 0.6 * pop + 0.4 * rng.dirichlet(np.full(E, 0.4), size=L)
            tokens.append([[int(v) for v in rng.choice(E, k, replace=False, p=pop[l])] for l in range(L)])
        sequences.append(tokens)
    path = write_trace(tmp_path / "d.parquet", toy_model(layers=L, experts=E, top_k=k), sequences)
    segments, rhos = (1, 3, 16), (0.5, 1, 2, 4)
    doc, _ = analyze(path, segments=segments, rhos=rhos, bootstrap=0)
    grid = load_grid(path)
    for m in segments:
        for rho in rhos:
            c_layer, c_model = capacities(grid, rho)
            key = f"sch_m{m}_rho{rho:g}"
            model = [reference_sch_hits([[l * E + e for l in range(L) for e in tok[l]] for tok in seq], c_model, m)
                     for seq in sequences]
            assert doc[key] == pytest.approx(np.mean([h / a for h, a in model]), abs=1e-12), key
            for layer in range(L):
                rates = [h / a for h, a in (reference_sch_hits([tok[layer] for tok in seq], c_layer, m)
                                            for seq in sequences)]
                assert doc["per_layer"][key][layer] == pytest.approx(np.mean(rates), abs=1e-12), (key, layer)


def _shared_grid(shared_traces, tmp_path, importer, source):
    trace = tmp_path / "real.parquet"
    importer.import_files([shared_traces / source], trace)
    return load_grid(trace)


def test_real_traces_equal_the_oracle(shared_traces, tmp_path):
    """The first tokens of the long DeepSeek-V2-Lite prompt and the Mixtral trace, per layer and model level, at
    the ρ = 1 and 2 sizes with m = 4 and 16 (the oracle is plain Python, so the prefixes are short)."""
    from traces.importers import moe_beyond, vllm_jsonl

    cases = ((moe_beyond, "deepseek_v2_lite_moebeyond_prompt_1351_data.csv", 160, 40),
             (vllm_jsonl, "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl", 218, 60))
    for importer, source, layer_tokens, model_tokens in cases:
        grid = _shared_grid(shared_traces, tmp_path, importer, source)
        L, E = grid.model.moe_layers, grid.model.experts_per_layer
        experts = grid.experts[grid.starts[0]:grid.starts[1]].astype(np.int32)
        for m in (4, 16):
            for rho in (1, 2):
                c_layer, c_model = capacities(grid, rho)
                for layer in range(0, L, 5):
                    tokens = experts[:layer_tokens, layer]
                    mine = sch.hit_curves(tokens, np.array([0, len(tokens)]), E, m)[0][c_layer - 1]
                    assert mine == reference_sch_hits(tokens.tolist(), c_layer, m)[0], (source, m, rho, layer)
                part = experts[:model_tokens]
                keys = np.where(part >= 0, part + (np.arange(L) * E)[None, :, None], -1).reshape(model_tokens, -1)
                mine = sch.hit_curves(keys, np.array([0, model_tokens]), L * E, m)[0][c_model - 1]
                assert mine == reference_sch_hits(keys.tolist(), c_model, m)[0], (source, m, rho)
