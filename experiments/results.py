"""The files a run leaves in its directory, written atomically: complete under their final name, or absent."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simulator.atomic_file import AtomicFile, atomic_write_bytes
from simulator.timeline import TIMELINE_COLUMNS, TimelineEvent

METRICS_FILE = "metrics.json"
PER_LAYER_FILE = "per_layer.parquet"
TIMELINE_FILE = "timeline.parquet"


def write_run(out_dir: Path, document: dict, per_layer: dict[str, list], timeline: list[TimelineEvent] = ()) -> None:
    """metrics.json (sorted keys: same inputs give the same bytes), the per-layer table and any timeline;
    metrics.json last, so its presence marks a complete run."""
    _write_table(out_dir / PER_LAYER_FILE, pa.table(per_layer))
    if timeline:
        _write_table(out_dir / TIMELINE_FILE, pa.table(dict(zip(TIMELINE_COLUMNS, map(list, zip(*timeline))))))
    atomic_write_bytes(out_dir / METRICS_FILE, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def _write_table(path: Path, table: pa.Table) -> None:
    with AtomicFile(path) as f:
        pq.write_table(table, f.tmp)
