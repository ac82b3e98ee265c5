"""`moe-sim-report`: every completed run of a sweep in one tidy table, and a compact summary.

One row per `metrics.json` under the sweep directory (a run without one is unfinished or failed and is only
counted). Columns: `run` (the job directory, relative to the sweep), short names `policy`, `prefetch`, `miss`
(registered names; the absent plug-in is named too, `none` and `load`, never a missing value), `hardware` and `trace`,
the resolved config flattened to dotted names as they are overridden (`cache.capacity`, `replay.timed`, ...), the
model as the run resolved it (`model.name`, `model.moe_layers`, ..., `model.bytes_per_expert`), the cache in experts
and GB (`cache_experts`, `cache_gb`) and every metric under its own name (`hit_rate`, `stall_time_s`, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd

from experiments.results import METRICS_FILE, PER_LAYER_FILE
from policies.miss_handling import MISS_HANDLERS
from policies.placements import PLACEMENTS
from policies.prefetchers import PREFETCHERS
from policies.registry import POLICIES
from simulator.errors import InputError
from simulator.model import MoEModel
from simulator.registry import Registry

PLUGINS: dict[str, Registry] = {"policy": POLICIES, "prefetch": PREFETCHERS, "miss": MISS_HANDLERS,
                                "placement": PLACEMENTS}
"""The plug-in kinds a run chooses, each a config group whose `_target_` the report names by its registered name."""
MISSING = "n/a"
"""The label of a config key a run does not have (a parameter of another plug-in)."""


def short_name(registry: Registry, target: str | None) -> str:
    """The registered name of a `_target_` (`policies.lru.LRUCache` -> `lru`, None -> `none` or `load`), else the
    class name."""
    name = registry.name_of(target)
    return name if name in registry else name.rsplit(".", 1)[-1]


def trace_name(path: str | None) -> str:
    return Path(path).stem if path else "default"


def flatten(node: dict, prefix: str = "") -> dict:
    """Nested dicts to dotted keys; lists become JSON text, so every cell is a scalar."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def run_row(path: Path, sweep_dir: Path) -> dict:
    doc = json.loads(path.read_text())
    config = doc["config"]
    model = MoEModel.from_dict(doc["model"])
    cache = config["cache"]
    experts = cache["capacity"] * (model.moe_layers if cache["scope"] == "layer" else 1)
    row = {"run": str(path.parent.relative_to(sweep_dir))}
    for kind, registry in PLUGINS.items():
        row[kind] = short_name(registry, (config.get(kind) or {}).get("_target_"))
    row |= {
        "hardware": doc["hardware"],
        "trace": trace_name(config["trace"]["path"]),
    }
    row.update(flatten(config))
    row.update(flatten({**doc["model"], "bytes_per_expert": model.bytes_per_expert}, "model."))
    row["cache_experts"] = experts
    row["cache_gb"] = experts * model.bytes_per_expert / 1e9
    row.update(doc["metrics"])
    return row


def metrics_files(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.rglob(METRICS_FILE) if not any(part.startswith(".") for part in p.relative_to(sweep_dir).parts))


def unfinished_runs(sweep_dir: Path) -> list[Path]:
    """Job directories (Hydra left `.hydra/` there) without metrics.json: interrupted or failed jobs."""
    return sorted(p.parent for p in sweep_dir.rglob(".hydra") if not (p.parent / METRICS_FILE).exists())


SORT_KEYS = ["trace", "hardware", "cache.scope", "policy", "cache.capacity", "run"]


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy table of every completed run under `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise InputError(f"{sweep_dir}: no such sweep directory")
    rows = []
    for path in metrics_files(sweep_dir):
        try:
            rows.append(run_row(path, sweep_dir))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not a moe-sim metrics file ({type(err).__name__}: {err})") from None
    if not rows:
        raise InputError(f"{sweep_dir}: no completed run (no {METRICS_FILE}) under it")
    table = pd.DataFrame(rows)
    return table.sort_values([k for k in SORT_KEYS if k in table]).reset_index(drop=True)


def load_layers(sweep_dir: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """The per-layer tables of `runs` stacked, each row carrying its run's `run` and `policy` ... `cache.capacity`."""
    keys = [k for k in ["run", "policy", "hardware", "trace", "cache.scope", "cache.capacity"] if k in runs]
    frames = []
    for record in runs[keys].to_dict("records"):
        path = Path(sweep_dir) / record["run"] / PER_LAYER_FILE
        if path.exists():
            frames.append(pd.read_parquet(path).assign(**record))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


IDENTITY = {"run", "policy._target_", "prefetch._target_", "miss._target_", "placement._target_", "trace.path",
            "hardware.profile",
            "replay.progress", "replay.batch_rows"}
"""Config columns the summary does not group by: the short names stand for them, or they leave results alone."""


RESOLVED_MODEL = {f"model.{f.name}" for f in fields(MoEModel)} - {"model.name", "model.kind"} | {"model.bytes_per_expert"}
"""Model columns the run resolved, not chose; `model.kind` is also the config's choice (moe, mole) and may vary."""


def labels(column: pd.Series) -> pd.Series:
    """A column as text labels, a missing value (a key another plug-in does not have) as `n/a`: every value counts
    as a value when deciding what varies and when grouping."""
    return column.astype(object).where(column.notna(), MISSING).map(str)


def varying(table: pd.DataFrame, exclude: set[str] = frozenset()) -> list[str]:
    """Config columns (dotted, and `seed`, `hardware`, `trace`, `prefetch`, `miss`) that take more than one value. A
    plug-in's parameter (`prefetch.horizon`) counts only where it varies among runs of the same plug-in."""
    candidates = ["trace", "hardware", "seed", "prefetch", "miss", "placement"] + [c for c in table.columns if "." in c and c not in RESOLVED_MODEL]
    out = []
    for c in candidates:
        if c not in table or c in IDENTITY | {"policy", "cache.capacity"} | exclude:
            continue
        kind = c.split(".", 1)[0]
        values = labels(table[c])
        if kind in PLUGINS and "." in c:
            if values.groupby(table[kind]).nunique().max() > 1:
                out.append(c)
        elif values.nunique() > 1:
            out.append(c)
    return out


def pivot(table: pd.DataFrame, value: str, index_extra: list[str], scale: float = 1.0) -> pd.DataFrame:
    data = table.assign(**{value: table[value] * scale}, **{c: labels(table[c]) for c in index_extra})
    return data.pivot_table(index=[*index_extra, "policy"], columns="cache.capacity", values=value, aggfunc="mean")


def summary(table: pd.DataFrame, unfinished: int = 0) -> str:
    lines = [f"{len(table)} completed runs" + (f"; {unfinished} job directories without {METRICS_FILE}" if unfinished else "")]
    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.max_rows", 60):
        # hit rate does not depend on the machine: one table over the other varying columns
        hit = pivot(table, "hit_rate", varying(table, {"hardware", "replay.timed"}))
        lines += ["", "hit rate (rows: policy; columns: cache.capacity)", hit.to_string(float_format="{:.3f}".format)]
        timed = table[table["time_per_token_s"].notna()] if "time_per_token_s" in table else table.iloc[:0]
        if len(timed):
            extra = varying(timed, {"replay.timed"})
            tpt = pivot(timed, "time_per_token_s", extra, 1e3)
            stall = pivot(timed, "stall_fraction", extra)
            lines += ["", "time per token, ms", tpt.to_string(float_format="{:.2f}".format),
                      "", "stall fraction of total time", stall.to_string(float_format="{:.3f}".format)]
    return "\n".join(lines)


def write_table(table: pd.DataFrame, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    csv = out.with_suffix(".csv")
    table.to_csv(csv, index=False)
    return csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="moe-sim-report",
        description="Collect every completed run of a sweep (every metrics.json under SWEEP_DIR) into one table.",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    parser.add_argument("--out", type=Path, help="the table as Parquet, with a CSV beside it (default SWEEP_DIR/runs.parquet)")
    args = parser.parse_args(argv)
    try:
        table = load_runs(args.sweep_dir)
    except InputError as err:
        print(f"moe-sim-report: {err}", file=sys.stderr)
        sys.exit(2)
    out = args.out or args.sweep_dir / "runs.parquet"
    csv = write_table(table, out)
    print(summary(table, len(unfinished_runs(args.sweep_dir))))
    print(f"\n{len(table)} rows × {len(table.columns)} columns -> {out} and {csv}")


if __name__ == "__main__":
    main()
