"""The files a run leaves in its directory, written atomically: complete under their final name, or absent."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

METRICS_FILE = "metrics.json"
PER_LAYER_FILE = "per_layer.parquet"
TIMELINE_FILE = "timeline.parquet"
TIMELINE_COLUMNS = ("resource", "start_s", "end_s", "id", "what")
"""A timeline event: the GPU or a link, when, the MoE layer (GPU) or expert key layer·E + expert (links; -1 unknown)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run(out_dir: Path, document: dict, per_layer: dict[str, list], timeline: list[tuple] = ()) -> None:
    """metrics.json (sorted keys: same inputs give the same bytes), the per-layer table and any timeline;
    metrics.json last, so its presence marks a complete run."""
    _write_table(out_dir / PER_LAYER_FILE, pa.table(per_layer))
    if timeline:
        _write_table(out_dir / TIMELINE_FILE, pa.table(dict(zip(TIMELINE_COLUMNS, map(list, zip(*timeline))))))
    atomic_write_bytes(out_dir / METRICS_FILE, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def _write_table(path: Path, table: pa.Table) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    pq.write_table(table, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
