"""moe-sim-cost: bisection finds what a scan of every capacity finds, on a small trace."""

import numpy as np
import pytest

from experiments.cost import cost_table, run_config, smallest_meeting
from experiments.run import simulate
from simulator.presets import get_preset
from traces.synth import SynthParams, write_synthetic


def test_bisection_matches_a_scan_on_non_increasing_sequences():
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = np.sort(rng.random(rng.integers(1, 40)))[::-1]
        target = rng.random()
        calls = []

        def probe(c):
            calls.append(c)
            return values[c]

        expected = next((c for c in range(len(values)) if values[c] <= target), None)
        assert smallest_meeting(probe, 0, len(values) - 1, target) == expected
        assert len(calls) <= np.ceil(np.log2(len(values))) + 2


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cost") / "small.parquet"
    write_synthetic(path, get_preset("deepseek-v2-lite"), SynthParams(sequences=1, tokens_per_sequence=30))
    return str(path)


def test_cost_answer_matches_brute_force_scan(trace):
    target = 0.4
    table = cost_table(["lru", "belady"], target, trace=trace, hardware="gh200_c2c")
    for row in table.itertuples():
        stalls = {c: simulate(run_config(row.policy, c, trace=trace, hardware="gh200_c2c", model=None, dtype=None,
                                         scope="layer")).metrics.summary()["stall_fraction"] for c in range(6, 65)}
        expected = next(c for c in range(6, 65) if stalls[c] <= target)
        assert row.capacity == expected
        assert row.cache_experts == expected * 26
        assert row.cache_gb == pytest.approx(expected * 26 * get_preset("deepseek-v2-lite").bytes_per_expert / 1e9)
        assert row.stall_fraction == stalls[expected]
    lru, belady = table.set_index("policy")["capacity"]
    assert belady <= lru


def test_unreachable_target_has_no_capacity(trace):
    table = cost_table(["lru"], 0.0, trace=trace)
    assert table["capacity"].isna().all() and (table["stall_fraction"] > 0).all()
