"""`moe-sim-cost`: the smallest expert cache that keeps stall time under a given share of total time, per policy.

The question a deployer asks: for this model, this trace (workload) and this machine, how much GPU memory must the
expert cache get before waiting for PCIe stops dominating? For each policy the answer is found by bisection over
the cache capacity, each probe one timed simulation (`experiments.run.simulate`).

Bisection assumes the stall fraction does not rise when the cache grows. That holds closely for stack-like policies
(LRU, Belady, LFU on these traces: a larger cache holds what a smaller one would) but is not guaranteed: FIFO can show
Belady's anomaly, Random depends on its seed, and time can shift with the order of transfers. Where the assumption
fails, the answer is a capacity that meets the target with the one below it failing, not necessarily the smallest;
`--check` rescans every capacity below the answer to confirm it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
from experiments.run import resolve_model, simulate
from policies.registry import POLICIES
from simulator.errors import InputError
from traces.format import TraceFile


@dataclass(frozen=True)
class Probe:
    capacity: int
    stall_fraction: float
    hit_rate: float
    time_per_token_s: float


def smallest_meeting(probe: Callable[[int], float], lo: int, hi: int, target: float) -> int | None:
    """The smallest c in [lo, hi] with probe(c) <= target, for a probe that does not increase with c; None when even
    probe(hi) exceeds the target. Calls probe about log2(hi - lo) + 2 times."""
    if probe(hi) > target:
        return None
    if probe(lo) <= target:
        return lo
    while hi - lo > 1:  # invariant: probe(lo) > target >= probe(hi)
        mid = (lo + hi) // 2
        if probe(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def run_config(policy: str, capacity: int, *, trace: str | None, hardware: str, model: str | None, dtype: str | None,
               scope: str, seed: int = 0) -> RunConfig:
    if policy not in POLICIES:
        raise InputError(f"policy {policy!r}: unknown policy (known: {', '.join(sorted(POLICIES))})")
    return RunConfig(
        trace=TraceConfig(path=trace),
        model=ModelConfig(preset=model, dtype=dtype),
        hardware=HardwareConfig(profile=hardware),
        policy={"_target_": POLICIES[policy].replace(":", ".")},
        cache=CacheConfig(capacity=capacity, scope=scope),
        replay=ReplayConfig(timed=True, progress=False),
        seed=seed,
    )


def capacity_range(run: RunConfig) -> tuple[int, int, int, int]:
    """(smallest capacity, largest capacity, experts per unit of capacity, bytes per expert) for the run's model."""
    model = resolve_model(TraceFile(run.trace_path), run)
    if run.cache.scope == "layer":
        return model.top_k, model.experts_per_layer, model.moe_layers, model.bytes_per_expert
    return model.top_k, model.total_experts, 1, model.bytes_per_expert


def cost_table(policies: list[str], max_stall: float, *, trace: str | None = None, hardware: str = "rtx4090_pcie4",
               model: str | None = None, dtype: str | None = None, scope: str = "layer", seed: int = 0,
               check: bool = False, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per policy: the smallest cache meeting `stall_fraction <= max_stall`, in experts and GB."""
    if not 0 <= max_stall <= 1:
        raise InputError(f"--max-stall: {max_stall} is not a fraction in 0..1")
    def config(policy: str, capacity: int) -> RunConfig:
        return run_config(policy, capacity, trace=trace, hardware=hardware, model=model, dtype=dtype, scope=scope, seed=seed)

    lo, hi, per_unit, bytes_per_expert = capacity_range(config("lru", 1))
    rows = []
    for policy in policies:
        probes: dict[int, Probe] = {}

        def stall(capacity: int) -> float:
            if capacity not in probes:
                metrics = simulate(config(policy, capacity)).metrics.summary()
                probes[capacity] = Probe(capacity, metrics["stall_fraction"], metrics["hit_rate"], metrics["time_per_token_s"])
                if log:
                    log(f"  {policy} capacity={capacity}: stall {metrics['stall_fraction']:.3f}")
            return probes[capacity].stall_fraction

        best = smallest_meeting(stall, lo, hi, max_stall)
        checked = None
        if check and best is not None:
            checked = all(stall(c) > max_stall for c in range(lo, best))
        at = probes[best] if best is not None else probes[hi]
        experts = None if best is None else best * per_unit
        rows.append({
            "policy": policy,
            "capacity": best,
            "cache_experts": experts,
            "cache_gb": None if best is None else experts * bytes_per_expert / 1e9,
            "stall_fraction": at.stall_fraction,
            "hit_rate": at.hit_rate,
            "time_per_token_ms": at.time_per_token_s * 1e3,
            "simulations": len(probes),
            **({"checked": checked} if check else {}),
        })
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="moe-sim-cost",
        description="Smallest expert cache (experts and GB) that keeps stall time under a share of total time, per policy.",
    )
    parser.add_argument("--trace", help="routing trace (Parquet); default: the shipped synthetic trace")
    parser.add_argument("--hardware", default="rtx4090_pcie4", help="profile name or YAML file (default rtx4090_pcie4)")
    parser.add_argument("--model", help="model preset matching the trace (default: the trace's own model)")
    parser.add_argument("--dtype", help="expert weight type, e.g. int4 (default: the model's)")
    parser.add_argument("--policies", default="lru,lfu,belady", help="comma-separated policy names (default lru,lfu,belady)")
    parser.add_argument("--max-stall", type=float, default=0.1, help="largest acceptable stall_time / total_time (default 0.1)")
    parser.add_argument("--scope", choices=["layer", "global"], default="layer",
                        help="layer: capacity is per MoE layer; global: one cache over all layers (default layer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="also simulate every capacity below each answer (slow)")
    parser.add_argument("--out", type=Path, help="write the table as CSV too")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every simulation")
    args = parser.parse_args(argv)
    try:
        table = cost_table([p.strip() for p in args.policies.split(",") if p.strip()], args.max_stall,
                           trace=args.trace, hardware=args.hardware, model=args.model, dtype=args.dtype,
                           scope=args.scope, seed=args.seed, check=args.check,
                           log=(lambda line: print(line, file=sys.stderr)) if args.verbose else None)
    except InputError as err:
        print(f"moe-sim-cost: {err}", file=sys.stderr)
        sys.exit(2)
    unit = "per layer" if args.scope == "layer" else "in all"
    print(f"smallest cache with stall <= {args.max_stall:.0%} of total time "
          f"(trace {args.trace or 'default'}, {args.hardware}, capacity {unit}):")
    with pd.option_context("display.width", 160):
        print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}"))
    for row in table[table["capacity"].isna()].itertuples():
        print(f"{row.policy}: not reachable: even a full cache stalls {row.stall_fraction:.1%} "
              f"(cold misses: every expert is loaded once)")
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
