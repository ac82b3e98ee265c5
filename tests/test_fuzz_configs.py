"""Seeded fuzzes of `moe-sim` configurations (issue 14's acceptance): random valid-looking choices of every plug-in
kind, scope, capacity, profile, memory tier, dtype and kind on a small trace, and then of placements, batched serving,
arrivals and the KV cache. Each must either run or be refused in one clean line; a run's counters must add up, and
a run the compiled twins take gives the Python replay's figures."""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import pytest

from experiments.run import simulate
from simulator.errors import InputError
from simulator.presets import get_preset
from tests.helpers import compose_run
from traces.synth import SynthParams, write_synthetic

CONFIGS = 60
POLICIES = ["lru", "lfu", "fifo", "random", "belady", "static", "arc", "sieve", "s3fifo", "lirs", "lfu-aging",
            "moe-infinity", "finemoe"]
PREFETCHERS = ["none", "oracle", "frequency", "transition", "eam", "adaptive"]
MISSES = ["load", "cpu", "low-precision", "skip"]
PROFILES = ["rtx4090_pcie4", "h100_pcie5", "gh200_c2c", "jetson_orin_nano_super", "a100_80g_pcie4"]


@pytest.fixture(scope="module")
def trace() -> str:
    path = Path(tempfile.mkdtemp()) / "fuzz.parquet"
    write_synthetic(path, get_preset("mixtral-8x7b"), SynthParams(sequences=3, tokens_per_sequence=8, seed=11))
    return str(path)


def random_config(rng: random.Random) -> list[str]:
    scope = rng.choice(["layer", "global"])
    capacity = rng.randint(1, 9) if scope == "layer" else rng.randint(1, 300)
    out = [f"policy={rng.choice(POLICIES)}", f"prefetch={rng.choice(PREFETCHERS)}", f"miss={rng.choice(MISSES)}",
           f"cache.scope={scope}", f"cache.capacity={capacity}", f"hardware={rng.choice(PROFILES)}",
           f"replay.timed={rng.choice(['true', 'true', 'false'])}", f"seed={rng.randint(0, 3)}"]
    if rng.random() < 0.3:
        out.append("cache.reset_per_sequence=true")
    if rng.random() < 0.3:
        out += ["memory.home=nvme", f"memory.path={rng.choice(['staged', 'gds'])}"]
        if rng.random() < 0.5:
            out.append(f"memory.dram_capacity={rng.randint(1, 200)}")
    if rng.random() < 0.2:
        out.append(f"model.dtype={rng.choice(['fp16', 'int4', 'fp8'])}")
    if rng.random() < 0.1:
        out.append("model.kind=mole")
    return out


def check_summary(m: dict, overrides: list[str]) -> None:
    """What every run's figures satisfy, whatever its configuration."""
    assert m["hits"] + m["misses"] == m["accesses"] > 0, overrides
    issued = m["prefetch_useful"] + m["prefetch_late"] + m["prefetch_wasted"] + m["prefetch_unused_at_end"]
    assert m["prefetch_issued"] == issued, overrides
    for name, value in m.items():
        if isinstance(value, float):
            assert math.isfinite(value), (name, overrides)
        if name.endswith("utilisation") or name.startswith("h2d_utilisation"):
            assert value is None or 0.0 <= value <= 1.0 + 1e-12, (name, value, overrides)
    if m["total_time_s"] is not None:
        assert m["stall_time_s"] >= 0 and m["idle_time_s"] >= 0, overrides
        assert math.isclose(m["total_time_s"], m["compute_time_s"] + m["stall_time_s"] + m["idle_time_s"],
                            rel_tol=1e-9, abs_tol=1e-12), overrides


def test_random_configurations_run_or_refuse_cleanly(trace):
    rng = random.Random(2026)
    ran = refused = 0
    for _ in range(CONFIGS):
        overrides = random_config(rng)
        try:
            result = simulate(compose_run(f"trace.path={trace}", "replay.progress=false", *overrides))
        except InputError as err:
            assert "\n" not in str(err) and str(err), overrides
            refused += 1
            continue
        ran += 1
        check_summary(result.metrics.summary(), overrides)
    assert ran >= CONFIGS // 3 and refused >= 1  # the fuzz reaches both outcomes


SERVING_CONFIGS = 24
PLACEMENTS = ["gpu-cache", "cpu-experts", "dynamic-split", "static-layers"]
ALL_PROFILES = ["rtx4090_pcie4", "a100_80g_pcie4", "rtx3060_pcie3", "t4_pcie3", "rtx4090_2x_xeon6454s",
                "rtx2080_pcie3_ddr4x4", "h200_pcie5_nvme5", "quadro_rtx6000_pcie3"]


def random_serving_config(rng: random.Random) -> list[str]:
    scope = rng.choice(["layer", "global"])
    capacity = rng.randint(2, 8) if scope == "layer" else rng.randint(2, 256)
    out = [f"policy={rng.choice(['lru', 'lfu', 'fifo', 'sieve', 's3fifo', 'arc', 'lirs'])}",
           f"prefetch={rng.choice(['none', 'none', 'frequency', 'transition'])}",
           f"cache.scope={scope}", f"cache.capacity={capacity}", f"hardware={rng.choice(ALL_PROFILES)}",
           f"seed={rng.randint(0, 3)}"]
    placement = rng.choice(PLACEMENTS)
    out.append(f"placement={placement}")
    if placement == "static-layers":
        out.append(f"placement.cpu_layers={rng.choice(['4', '[0,8,16,26]', '31'])}")
    if placement != "gpu-cache" and rng.random() < 0.5:
        out.append(f"placement.gpu_prefill_min_tokens={rng.choice([1, 2, 32])}")
    if placement in ("gpu-cache", "static-layers") and rng.random() < 0.3:
        out.append("miss=cpu")
    if rng.random() < 0.7:
        out += ["serve=continuous", f"serve.max_batch={rng.choice([1, 2, 3, 8])}",
                f"serve.prompt_tokens={rng.choice([0, 2, 4])}"]
        if rng.random() < 0.5:
            out += ["serve.arrival=poisson", f"serve.rate_rps={rng.choice([0.5, 10, 1000])}"]
        if rng.random() < 0.4:
            out.append("serve.kv=dynamic")
        if rng.random() < 0.3:
            out.append(f"serve.max_batched_tokens={rng.choice([2, 3, 16])}")
    if rng.random() < 0.3:
        out.append(f"runtime.cpu_step_overhead_s={rng.choice([1e-4, 1e-3])}")
    if rng.random() < 0.3:
        out.append(f"runtime.layer_overhead_s={rng.choice([1e-4, 1e-3])}")
    if rng.random() < 0.2:
        out.append(f"model.dtype={rng.choice(['int4', 'fp8', 'q4_k_m'])}")
    return out


def test_random_serving_and_placement_configurations(trace):
    """Placements, batched serving, arrivals and the KV cache at random: every run adds up (the makespan is compute,
    stall and the wait for arrivals) and the default replay (compiled twins where they apply) gives exactly the
    Python replay's figures."""
    rng = random.Random(2027)
    ran = refused = 0
    for _ in range(SERVING_CONFIGS):
        overrides = [f"trace.path={trace}", "replay.progress=false", *random_serving_config(rng)]
        try:
            default = simulate(compose_run(*overrides)).metrics.summary()
        except InputError as err:
            assert "\n" not in str(err) and str(err), overrides
            refused += 1
            continue
        ran += 1
        check_summary(default, overrides)
        python = simulate(compose_run(*overrides, "replay.compiled=false")).metrics.summary()
        assert python.keys() == default.keys(), overrides
        for name, value in default.items():
            if isinstance(value, float):
                assert math.isclose(value, python[name], rel_tol=1e-9, abs_tol=1e-15), (name, value, python[name], overrides)
            else:
                assert value == python[name], (name, overrides)
    assert ran >= SERVING_CONFIGS // 2 and refused >= 1
