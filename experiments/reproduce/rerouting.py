"""Cache-aware routing (ExpertFlow): what re-routing a missed expert to a resident runner-up buys (hit rate, stall)
and what it costs the model (gate mass moved), against the score gap it may lose.

    python -m experiments.reproduce.rerouting --trace T.parquet --capacities 3,4 [--out table.csv] [--figure DIR]

The trace must carry the router's runners-up (`moe-trace record --candidates R`). Each capacity is replayed with the
router's choice (`routing=router`, gap "router") and with `routing=cache-aware` at each `--gaps` value
(`routing.max_score_gap`, router probability; 1 lets any recorded runner-up in), per-layer cache, timed on
`--hardware`. The table's columns: hit rate, time per token, stall fraction, re-routed accesses (share of all
accesses) and the gate mass moved (share of all routed experts' gate mass). `--figure DIR` draws them against the
gap, the router's figures dotted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
from experiments.run import simulate
from simulator.errors import InputError

GAPS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0)
ROUTER = "router"


def run(trace: Path, capacity: int, gap: float | None, policy: str, hardware: str) -> dict:
    """One replay's summary; `gap` None replays the router's choice."""
    routing = {"_target_": None} if gap is None else {"_target_": "cache-aware", "max_score_gap": gap}
    config = RunConfig(trace=TraceConfig(path=str(trace)), model=ModelConfig(), hardware=HardwareConfig(profile=hardware),
                       policy={"_target_": policy}, routing=routing, cache=CacheConfig(capacity=capacity, scope="layer"),
                       replay=ReplayConfig(timed=True, progress=False))
    return simulate(config).metrics.summary()


def table(trace: Path, capacities: list[int], gaps: list[float], policy: str = "lru",
          hardware: str = "rtx4090_pcie4") -> pd.DataFrame:
    rows = []
    for capacity in capacities:
        for gap in (None, *gaps):
            m = run(trace, capacity, gap, policy, hardware)
            rows.append({"capacity": capacity, "gap": ROUTER if gap is None else gap, "hit_rate": m["hit_rate"],
                         "ms_per_token": m["time_per_token_s"] * 1e3, "stall_fraction": m["stall_fraction"],
                         "rerouted_share": m.get("rerouted_accesses", 0) / m["accesses"],
                         "gate_mass_moved_share": m.get("gate_mass_moved_share", 0.0)})
    return pd.DataFrame(rows)


def figure(result: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Hit rate, stall fraction and gate mass moved against the gap, a line per capacity, the router dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.plot import save, set_style

    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.2), constrained_layout=True)
    swept = result[result["gap"] != ROUTER].astype({"gap": float})
    base = result[result["gap"] == ROUTER]
    for (capacity, rows), colour in zip(swept.groupby("capacity"), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for ax, column in zip(axes, ("hit_rate", "stall_fraction", "gate_mass_moved_share")):
            ax.plot(rows["gap"], rows[column], marker="o", markersize=2.5, color=colour, label=f"{capacity} / layer")
            ax.axhline(base.loc[base["capacity"] == capacity, column].iloc[0], color=colour, linestyle=":", linewidth=1)
    for ax, label in zip(axes, ("hit rate", "stall fraction", "gate mass moved (share)")):
        ax.set_xscale("symlog", linthresh=0.005)  # 0 (only ties) and the small gaps where the change starts
        ax.set_xlim(0, swept["gap"].max() * 1.2)
        ax.set_xticks([0, 0.01, 0.1, 1], ["0", "0.01", "0.1", "1"])
        ax.set_xlabel("routing.max_score_gap")
        ax.set_ylabel(label)
    axes[0].legend(title="cache")
    return save(fig, out_dir, "rerouting_vs_gap")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, required=True, help="a trace with candidates (moe-trace record --candidates R)")
    parser.add_argument("--capacities", required=True, help="experts per layer, comma-separated")
    parser.add_argument("--gaps", default=",".join(map(str, GAPS)), help="routing.max_score_gap values, comma-separated")
    parser.add_argument("--policy", default="lru")
    parser.add_argument("--hardware", default="rtx4090_pcie4")
    parser.add_argument("--out", type=Path, help="write the table as CSV")
    parser.add_argument("--figure", type=Path, metavar="DIR", help="write rerouting_vs_gap.png and .pdf there")
    args = parser.parse_args(argv)
    try:
        capacities = [int(c) for c in args.capacities.split(",")]
        gaps = [float(g) for g in args.gaps.split(",")]
    except ValueError as err:
        print(f"rerouting: --capacities / --gaps: {err}", file=sys.stderr)
        return 2
    try:
        result = table(args.trace, capacities, gaps, args.policy, args.hardware)
    except InputError as err:
        print(f"rerouting: {err}", file=sys.stderr)
        return 2
    print(f"cache-aware routing on {args.trace.name}: per-layer {args.policy}, {args.hardware}")
    with pd.option_context("display.width", 200):
        print(result.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        result.to_csv(args.out, index=False)
    if args.figure:
        for path in figure(result, args.figure):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
