"""moe-lrc ("Not All Models Suit Expert Offloading"): model-level SCH(m=16, ρ=1, 2), SRP(16) and the LRU/LFU/Belady
hit rates under the same convention, on the shared real traces, next to the published values (REFERENCE.md §4).

    python -m experiments.reproduce.sch [--shared ../shared]

The paper evaluates 512-token sequences; the long DeepSeek prompt is therefore also cut into 512-token pieces
(`split=512`). The shared Mixtral trace is one HumanEval problem (218 tokens). Published values are read off the
paper's plots (±0.01) and average 11 data sets, so close but not equal is expected.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from traces.importers import moe_beyond, vllm_jsonl
from traces.locality.analyze import analyze

KEYS = ("sch_m16_rho1", "sch_m16_rho2", "lru_rho2", "lfu_rho2", "belady_rho2", "srp_m16")
PUBLISHED = {
    "deepseek-v2-lite": (0.376, 0.580, 0.420, 0.375, 0.650, 0.379),
    "mixtral-8x7b": (0.455, 0.741, 0.614, 0.597, 0.818, 0.494),
}
TRACES = {  # name: (importer, source under traces/real, published row, split)
    "DeepSeek prompt 1351, 512-token pieces": (moe_beyond, "deepseek_v2_lite_moebeyond_prompt_1351_data.csv", "deepseek-v2-lite", 512),
    "DeepSeek test set (100 prompts)": (moe_beyond, "moe-beyond-test-predicted", "deepseek-v2-lite", None),
    "Mixtral HumanEval 0": (vllm_jsonl, "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl", "mixtral-8x7b", None),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2].parent / "shared"))
    args = parser.parse_args(argv)
    real = Path(args.shared) / "traces" / "real"
    if not real.is_dir():
        print(f"sch: {real} is absent (the shared real traces are needed)", file=sys.stderr)
        return 2
    header = f"{'trace':<40}" + "".join(f"{k:>14}" for k in KEYS)
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (importer, source, model, split) in TRACES.items():
            trace = Path(tmp) / "trace.parquet"
            importer.import_files([real / source], trace)
            doc, _ = analyze(trace, segments=(16,), rhos=(1.0, 2.0), bootstrap=0, split=split)
            print(f"{name:<40}" + "".join(f"{doc[k]:>14.3f}" for k in KEYS))
            print(f"{'  published ' + model:<40}" + "".join(f"{v:>14.3f}" for v in PUBLISHED[model]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
