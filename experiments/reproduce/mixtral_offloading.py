"""mixtral-offloading (Eliseev & Mazur): per-layer LRU holding 4 of Mixtral-8x7B's 8 experts per layer, with and
without speculative prefetching of the next layer, on the shared Mixtral trace (HumanEval problem 0).

    python -m experiments.reproduce.mixtral_offloading [--shared ../shared]

mixtral-offloading guesses the next layer's experts by applying the next layer's gate to the current hidden state
and loads them ahead. The shared trace has no such column (`moe-trace record` writes one, `pred_speculative`, for
models a user runs), so two stand-ins bracket it: the `transition` prefetcher (learned online from this trace's
routing, one layer ahead) below, and the `oracle` with horizon 1 (a perfect one-layer-ahead guess) above. Hit
rates count a demand that found its prefetch still on the wire as a miss (late); times are on the RTX 3090 + PCIe 4
profile (mixtral-offloading's consumer-GPU setting), experts at fp16 and at int4 (`model.dtype`), as the
repository's quantised experts are about a quarter of fp16.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
from experiments.run import simulate
from traces.importers import vllm_jsonl

SOURCE = "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl"
PREFETCH = {"none": {"_target_": None}, "transition": {"_target_": "transition", "horizon": 1},
            "oracle": {"_target_": "oracle", "horizon": 1}}


def run(trace: Path, prefetch: str, dtype: str, timed: bool) -> dict:
    config = RunConfig(
        trace=TraceConfig(path=str(trace)),
        model=ModelConfig(dtype=dtype),
        hardware=HardwareConfig(profile="rtx3090_pcie4"),
        policy={"_target_": "lru"},
        prefetch=PREFETCH[prefetch],
        cache=CacheConfig(capacity=4, scope="layer"),
        replay=ReplayConfig(timed=timed, progress=False),
    )
    return simulate(config).metrics.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2].parent / "shared"))
    args = parser.parse_args(argv)
    source = Path(args.shared) / "traces" / "real" / SOURCE
    if not source.is_file():
        print(f"mixtral_offloading: {source} is absent (the shared Mixtral trace is needed)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "mixtral.parquet"
        vllm_jsonl.import_files([source], trace)
        print("Mixtral-8x7B, HumanEval 0, per-layer LRU 4 of 8, rtx3090_pcie4")
        print(f"{'prefetch':<12}{'dtype':<7}{'hit rate':>9}{'(unbounded bw)':>16}{'late':>7}{'ms/token':>10}{'stall':>8}")
        for dtype in ("fp16", "int4"):
            for prefetch in PREFETCH:
                timed = run(trace, prefetch, dtype, timed=True)
                ideal = run(trace, prefetch, dtype, timed=False)
                print(f"{prefetch:<12}{dtype:<7}{timed['hit_rate']:>9.3f}{ideal['hit_rate']:>16.3f}"
                      f"{timed['prefetch_late']:>7}{timed['time_per_token_s'] * 1e3:>10.1f}{timed['stall_fraction']:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
