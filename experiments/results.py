"""The files a run leaves in its directory, written atomically: complete under their final name, or absent."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simulator.atomic_file import AtomicFile, atomic_write_bytes
from simulator.metrics import ITERATION_COLUMNS, REQUEST_COLUMNS
from simulator.timeline import TIMELINE_COLUMNS, TimelineEvent

METRICS_FILE = "metrics.json"
PER_LAYER_FILE = "per_layer.parquet"
TIMELINE_FILE = "timeline.parquet"
REQUESTS_FILE = "requests.parquet"
ITERATIONS_FILE = "iterations.parquet"


def write_run(out_dir: Path, document: dict, per_layer: dict[str, list], timeline: list[TimelineEvent] = (),
              requests: list[tuple] | None = None, iterations: list[tuple] | None = None) -> None:
    """metrics.json (sorted keys: same inputs give the same bytes), the per-layer table, any timeline, and a batched
    replay's requests and iterations; metrics.json last, so its presence marks a complete run."""
    _write_table(out_dir / PER_LAYER_FILE, pa.table(per_layer))
    if timeline:
        _write_table(out_dir / TIMELINE_FILE, pa.table(dict(zip(TIMELINE_COLUMNS, map(list, zip(*timeline))))))
    for name, columns, rows in ((REQUESTS_FILE, REQUEST_COLUMNS, requests), (ITERATIONS_FILE, ITERATION_COLUMNS, iterations)):
        if rows is not None:
            table = pa.table({c: pa.array([row[i] for row in rows], pa.int64() if c in _INTEGER else pa.float64())
                              for i, c in enumerate(columns)})
            _write_table(out_dir / name, table)
    atomic_write_bytes(out_dir / METRICS_FILE, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


_INTEGER = {"sequence", "prompt_tokens", "output_tokens", "requests", "tokens", "prefill_tokens", "kv_bytes", "expert_slots"}


def _write_table(path: Path, table: pa.Table) -> None:
    with AtomicFile(path) as f:
        pq.write_table(table, f.tmp)
