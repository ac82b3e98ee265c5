"""MoE-Beyond's comparison: global LRU holding 10% of DeepSeek-V2-Lite's 26×64 experts, without and with its
learned predictor, on the shared 100-prompt test set (predictions recorded beside the true routing).

    python -m experiments.reproduce.moe_beyond [--shared ../shared]

The paper reports the GPU cache hit rate going from 17% to 72%. Its public simulator
(cache_simulator/infinity_moe_sim.py in the MoE-Beyond repository) starts a fresh cache for each prompt and loads
the predicted experts of a (token, layer) into the cache just before that layer's lookup, without counting them.
Here: scope global, 166 slots (⌊0.1 · 1664⌋), hit-rate-only replay, `prefetch=recorded` with horizon 1 (the next
layer's predictions are loaded after each router: just in time, as that simulator does). We print the cache
persisting across prompts and reset per prompt. Assumed differences: that simulator also excludes the first 10
tokens of each prompt from the count (warm-up); we count every access.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
from experiments.run import simulate
from traces.importers.moe_beyond import import_files

PAPER = {"none": 0.17, "recorded": 0.72}
SLOTS = 166  # 10% of 26 × 64


def hit_rate(trace: Path, prefetch: str, reset: bool) -> dict:
    run = RunConfig(
        trace=TraceConfig(path=str(trace)),
        model=ModelConfig(),
        hardware=HardwareConfig(profile="rtx4090_pcie4"),
        policy={"_target_": "lru"},
        prefetch={"_target_": None} if prefetch == "none" else {"_target_": "recorded", "horizon": 1},
        cache=CacheConfig(capacity=SLOTS, scope="global", reset_per_sequence=reset),
        replay=ReplayConfig(timed=False, progress=False),
    )
    return simulate(run).metrics.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2].parent / "shared"))
    args = parser.parse_args(argv)
    source = Path(args.shared) / "traces" / "real" / "moe-beyond-test-predicted"
    if not source.is_dir():
        print(f"moe_beyond: {source} is absent (the shared MoE-Beyond test set is needed)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "moe_beyond_test.parquet"
        import_files([source], trace)
        print(f"MoE-Beyond test set: 100 prompts, global LRU, {SLOTS} of 1664 experts (10%), hit-rate-only replay")
        print(f"{'cache':<22}{'prefetch':<12}{'hit rate':>9}{'paper':>8}{'prefetch precision':>20}")
        for reset in (True, False):
            for prefetch in ("none", "recorded"):
                m = hit_rate(trace, prefetch, reset)
                label = "reset per prompt" if reset else "kept across prompts"
                precision = f"{m['prefetch_precision']:.3f}" if prefetch != "none" else "-"
                print(f"{label:<22}{prefetch:<12}{m['hit_rate']:>9.3f}{PAPER[prefetch]:>8.2f}{precision:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
