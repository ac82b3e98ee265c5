"""Importers of public routing-trace formats into our Parquet format (one module per format).

What they share lives here: turning command-line inputs (files or folders) into an ordered file list, reading JSON
lines, the summary an import returns, and writing per-file chunks as row groups of a sensible size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.registry import Registry
from traces.format import TraceChunk, TraceMeta, TraceWriter

ROW_GROUP_ROWS = 1 << 16
"""Rows per Parquet row group: small per-file chunks (a 26-token prompt is 676 rows) are merged up to this."""


@dataclass
class ImportSummary:
    """What an import wrote, for the command line to report."""

    path: Path
    rows: int
    sequences: int
    tokens: int
    notes: list[str] = field(default_factory=list)
    """One-line remarks worth showing the user (e.g. gaps the importer filled)."""


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that orders the numbers inside a name by value: prompt_2 before prompt_10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


def expand_inputs(inputs: Iterable[str | Path], suffix: str) -> list[Path]:
    """Files as given; a folder stands for its `*suffix` files in natural name order."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted((p for p in item.iterdir() if p.is_file() and p.name.endswith(suffix)), key=lambda p: natural_key(p.name))
            if not found:
                raise InputError(f"{item}: folder has no *{suffix} files")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    if not files:
        raise InputError("input: no input files given")
    return files


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """The objects of a JSON-lines file with their line numbers, blank lines skipped; a line that is not a JSON
    object is an InputError naming the file and line."""
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}: line {number}: json: {err.msg} at column {err.colno}") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}: line {number}: json: {type(obj).__name__} is not an object")
                yield number, obj
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: read: {err}") from None


def concat_chunks(chunks: list[TraceChunk]) -> TraceChunk:
    """One chunk holding the rows of `chunks` in order (all must carry the same optional columns)."""
    if len(chunks) == 1:
        return chunks[0]

    def cat(name):
        parts = [getattr(c, name) for c in chunks]
        return None if parts[0] is None else np.concatenate(parts)

    names = chunks[0].predictions.keys()
    return TraceChunk(
        sequence=cat("sequence"),
        token=cat("token"),
        layer=cat("layer"),
        experts=cat("experts"),
        weights=cat("weights"),
        token_id=cat("token_id"),
        phase=cat("phase"),
        predictions={n: [ids for c in chunks for ids in c.predictions[n]] for n in names},
        candidates=cat("candidates"),
        candidate_scores=cat("candidate_scores"),
    )


def rebatch(chunks: Iterable[TraceChunk], rows: int = ROW_GROUP_ROWS) -> Iterator[TraceChunk]:
    """Merge consecutive chunks until each holds at least `rows` rows (the last may hold fewer)."""
    pending: list[TraceChunk] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk)
        if count >= rows:
            yield concat_chunks(pending)
            pending, count = [], 0
    if pending:
        yield concat_chunks(pending)


def write_chunks(path: str | Path, meta: TraceMeta, chunks: Iterable[TraceChunk], **columns) -> tuple[int, int, int]:
    """Write `chunks` atomically to `path`; `columns` are TraceWriter's optional-column flags.

    Returns (rows, sequences, tokens), counted as the rows go by.
    """
    rows = sequences = tokens = 0
    last = (-1, -1)
    with TraceWriter(path, meta, **columns) as writer:
        for chunk in rebatch(chunks):
            writer.write(chunk)
            rows += len(chunk)
            seq = np.concatenate(([last[0]], chunk.sequence))
            tok = np.concatenate(([last[1]], chunk.token))
            new_seq = seq[1:] != seq[:-1]
            sequences += int(new_seq.sum())
            tokens += int((new_seq | (tok[1:] != tok[:-1])).sum())
            last = (chunk.sequence[-1], chunk.token[-1])
    return rows, sequences, tokens


IMPORTERS = Registry("import format", {
    "moe-beyond": "traces.importers.moe_beyond",
    "vllm-jsonl": "traces.importers.vllm_jsonl",
    "moe-infinity-eam": "traces.importers.moe_infinity_eam",
    "moe-lrc": "traces.importers.moe_lrc",
    "long": "traces.importers.long_format",
    "vllm-routed": "traces.importers.vllm_routed",
    "sglang-routed": "traces.importers.sglang_routed",
    "routed-npy": "traces.importers.routed_npy",
    "megatron-routing": "traces.importers.megatron_routing",
})
"""`moe-trace import --format NAME`: each entry is a module with `import_files(inputs, out, model)` and
`DEFAULT_MODEL` (a preset name, or None where the files do not name the model); `long`'s also takes `columns`, the
text of `--columns`."""
