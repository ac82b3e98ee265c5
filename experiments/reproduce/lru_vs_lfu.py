"""In-depth Analysis (Lin, He, Chen; arXiv 2511.05814): LFU against the LRU baseline of mixtral-offloading, with
per-layer expert caches, on the shared real traces, Belady as the bound.

    python -m experiments.reproduce.lru_vs_lfu [--shared ../shared] [--out results.csv]

The paper proposes LFU over mixtral-offloading's per-layer LRU (Mixtral-8x7B, top-2). Here: each shared trace is
imported into a temporary directory (they carry no licence and are never committed), then replayed per layer
(scope=layer, cache kept across sequences) with LRU, LFU (fewest uses since loaded, ties to least recent) and Belady
at several cache sizes, timed on the RTX 4090 + PCIe 4 profile:
  Mixtral-8x7B, HumanEval problem 0 (vLLM log)       capacities 2..7 of 8 (4 = mixtral-offloading on 16 GB)
  DeepSeek-V2-Lite, MoE-Beyond prompt 1351            capacities 8, 12, 16, 24, 32 of 64
  DeepSeek-V2-Lite, MoE-Beyond test set (100 prompts) the same
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
from experiments.run import simulate
from traces.importers import moe_beyond, vllm_jsonl

POLICIES = ("lru", "lfu", "belady")
HARDWARE = "rtx4090_pcie4"
TRACES = {  # name: (importer, source under traces/real, per-layer capacities)
    "mixtral_humaneval0": (vllm_jsonl, "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl", (2, 3, 4, 5, 6, 7)),
    "deepseek_prompt1351": (moe_beyond, "deepseek_v2_lite_moebeyond_prompt_1351_data.csv", (8, 12, 16, 24, 32)),
    "deepseek_test100": (moe_beyond, "moe-beyond-test-predicted", (8, 12, 16, 24, 32)),
}


def run(trace: Path, policy: str, capacity: int) -> dict:
    config = RunConfig(
        trace=TraceConfig(path=str(trace)),
        model=ModelConfig(),
        hardware=HardwareConfig(profile=HARDWARE),
        policy={"_target_": policy},
        cache=CacheConfig(capacity=capacity, scope="layer"),
        replay=ReplayConfig(timed=True, progress=False),
    )
    return simulate(config).metrics.summary()


def table(real: Path, tmp: Path) -> pd.DataFrame:
    rows = []
    for name, (importer, source, capacities) in TRACES.items():
        trace = tmp / f"{name}.parquet"
        importer.import_files([real / source], trace)
        for capacity in capacities:
            row = {"trace": name, "capacity": capacity}
            for policy in POLICIES:
                m = run(trace, policy, capacity)
                row[f"{policy}_hit"] = m["hit_rate"]
                row[f"{policy}_ms_per_token"] = m["time_per_token_s"] * 1e3
            rows.append(row)
    out = pd.DataFrame(rows)
    out["lfu_minus_lru"] = out["lfu_hit"] - out["lru_hit"]
    out["lfu_miss_reduction"] = 1 - (1 - out["lfu_hit"]) / (1 - out["lru_hit"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2].parent / "shared"))
    parser.add_argument("--out", type=Path, help="write the table as CSV")
    args = parser.parse_args(argv)
    real = Path(args.shared) / "traces" / "real"
    missing = [src for _, src, _ in TRACES.values() if not (real / src).exists()]
    if missing:
        print(f"lru_vs_lfu: {real / missing[0]} is absent (the shared real traces are needed)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result = table(real, Path(tmp))
    print(f"LRU vs LFU, per-layer caches, {HARDWARE}; hit rate and time per token (ms)")
    shown = result[["trace", "capacity", "lru_hit", "lfu_hit", "belady_hit", "lfu_minus_lru", "lfu_miss_reduction",
                    "lru_ms_per_token", "lfu_ms_per_token", "belady_ms_per_token"]]
    with pd.option_context("display.width", 200):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        result.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
