"""Our learned expert predictor beside MoE-Beyond's recorded one, on MoE-Beyond's shared test set.

    python -m experiments.reproduce.moe_beyond_learned [--shared ../shared] [--predictor FILE | --save-predictor FILE]
                                                       [--json OUT]

Trains a predictor (`simulator.expert_predictor`, default settings) on the shared 1,000-prompt training archive
(prompts 1001..2000; the test set is prompts 1..100, disjoint), or loads one, then scores both predictors on the
test set by one implementation (`traces.predictor_training`: precision, recall and F1 of the routed experts,
accuracy over every per-expert decision, and MoE-Beyond's "F1", the macro F1 of routed and not routed), and replays
each as a prefetcher of MoE-Beyond's cache: global LRU, 166 slots (10% of 26 × 64), reset per prompt as its
simulator does, the next layer's top-6 requested after each router (`horizon=1`), hit-rate-only and timed
(rtx4090_pcie4; a prefetch crosses PCIe like a demand fetch, behind them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
from experiments.reproduce.moe_beyond import SLOTS
from experiments.run import simulate
from simulator.atomic_file import atomic_write_bytes
from simulator.expert_predictor import ExpertPredictor, Features, Training
from traces.importers.moe_beyond import PREDICTION, import_files
from traces.predictor_training import evaluate_predictor, evaluate_recorded, train_files

ARCHIVE = "deepseek_v2_lite_moebeyond_training_data_eamc.tar.gz"
TEST = "moe-beyond-test-predicted"
PAPER = {"accuracy": 0.975, "macro_f1": 0.866}


def replay(trace: Path, prefetch: dict, timed: bool) -> dict:
    run = RunConfig(
        trace=TraceConfig(path=str(trace)),
        model=ModelConfig(),
        hardware=HardwareConfig(profile="rtx4090_pcie4"),
        policy={"_target_": "lru"},
        prefetch=prefetch,
        cache=CacheConfig(capacity=SLOTS, scope="global", reset_per_sequence=True),
        replay=ReplayConfig(timed=timed, progress=False),
    )
    return simulate(run).metrics.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2].parent / "shared"))
    parser.add_argument("--predictor", help="use this predictor file instead of training one")
    parser.add_argument("--save-predictor", help="keep the trained predictor here")
    parser.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args(argv)
    real = Path(args.shared) / "traces" / "real"
    if not (real / TEST).is_dir() or (args.predictor is None and not (real / ARCHIVE).is_file()):
        print(f"moe_beyond_learned: {real} lacks {TEST}/ or {ARCHIVE} (the shared MoE-Beyond data are needed)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test = tmp / "test.parquet"
        import_files([real / TEST], test)
        if args.predictor:
            predictor, path = ExpertPredictor.load(args.predictor), Path(args.predictor)
            print(f"predictor {path} (trained on {', '.join(predictor.training.traces)})")
        else:
            with tarfile.open(real / ARCHIVE) as archive:
                archive.extractall(tmp / "csv", filter="data")
            train = tmp / "train.parquet"
            import_files(sorted(p for p in (tmp / "csv").rglob("*.csv")), train)
            path = Path(args.save_predictor) if args.save_predictor else tmp / "predictor.json"
            start = time.perf_counter()
            predictor = train_files([train], path, horizon=1, features=Features(), training=Training())
            print(f"trained on the archive ({ARCHIVE}) in {time.perf_counter() - start:.0f} s: "
                  f"{dataclasses.asdict(predictor.features)}, hidden {predictor.training.hidden}, "
                  f"{predictor.training.epochs} epochs, seed {predictor.training.seed}")
        rows = {
            "no prefetch": (None, {"_target_": None}),
            "MoE-Beyond recorded": (evaluate_recorded(test, PREDICTION), {"_target_": "recorded", "horizon": 1}),
            "ours (learned)": (evaluate_predictor(predictor, test),
                               {"_target_": "learned", "model": str(path), "horizon": 1}),
        }
        table = {}
        for name, (scores, prefetch) in rows.items():
            hit_only, timed = replay(test, prefetch, False), replay(test, prefetch, True)
            table[name] = {**(scores.overall() if scores else {}), "hit_rate": hit_only["hit_rate"],
                           "hit_rate_timed": timed["hit_rate"], "time_per_token_s": timed["time_per_token_s"]}
    columns = ("precision", "recall", "f1", "macro_f1", "accuracy", "hit_rate", "hit_rate_timed")
    print(f"MoE-Beyond test set (100 prompts, 1,543 tokens), global LRU {SLOTS} slots reset per prompt, next layer's "
          f"top-6 prefetched; paper: accuracy {PAPER['accuracy']}, F1 (macro) {PAPER['macro_f1']}")
    print(f"{'predictor':<22}" + "".join(f"{c:>16}" for c in columns) + f"{'ms/token timed':>16}")
    for name, row in table.items():
        cells = "".join(f"{row[c]:>16.4f}" if c in row else f"{'-':>16}" for c in columns)
        print(f"{name:<22}{cells}{row['time_per_token_s'] * 1e3:>16.2f}")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(table, sort_keys=True, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
