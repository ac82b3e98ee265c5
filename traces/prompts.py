"""Prompts for the recorder: a text file, a JSON-lines file, or a data set on disk.

  *.jsonl / *.json       one JSON object per line, the prompt in field `text_field` (default `text`)
  *.parquet / *.arrow    a table with a string column `text_field` (`.arrow`: Arrow IPC file or stream)
  *.csv                  a table with a header and a column `text_field`
  a folder               a data set on disk: its *.parquet files, or else its *.arrow files (what Hugging Face
                         `datasets.Dataset.save_to_disk` writes), in natural name order
  anything else          plain text, one prompt per line; blank lines are skipped

Empty prompts are refused (a model cannot route zero tokens); every error is one line naming the file and where.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from simulator.errors import InputError
from traces.importers import natural_key


def load_prompts(path: str | Path, text_field: str = "text", limit: int | None = None) -> list[str]:
    """The prompts in `path`, in file order, at most `limit` of them."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise InputError(f"prompts: limit {limit} is not a positive number")
    if path.is_dir():
        prompts = _folder(path, text_field)
    elif not path.is_file():
        raise InputError(f"{path}: no such prompts file or folder")
    elif path.suffix in (".jsonl", ".json"):
        prompts = _jsonl(path, text_field)
    elif path.suffix in (".parquet", ".arrow", ".csv"):
        prompts = _column(path, _read_table(path), text_field)
    else:
        prompts = _lines(path)
    if not prompts:
        raise InputError(f"{path}: holds no prompts")
    return prompts[:limit]


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [line for line in text.splitlines() if line.strip()]


def _jsonl(path: Path, field: str) -> list[str]:
    prompts = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"{path}: line {number}: not JSON ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise InputError(f"{path}: line {number}: field '{field}' is missing or not a string")
            if not record[field]:
                raise InputError(f"{path}: line {number}: field '{field}' is empty")
            prompts.append(record[field])
    return prompts


def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix == ".csv":
            return pa_csv.read_csv(path)
        try:
            return ipc.open_file(path).read_all()
        except pa.ArrowInvalid:
            return ipc.open_stream(path).read_all()
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable {path.suffix[1:]} table ({str(err).strip().splitlines()[0]})") from None


def _column(path: Path, table: pa.Table, field: str) -> list[str]:
    if field not in table.column_names:
        raise InputError(f"{path}: column '{field}' is missing (has: {', '.join(table.column_names)}); choose one with --text-field")
    column = table.column(field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"{path}: column '{field}' has type {column.type}, expected strings")
    prompts = column.to_pylist()
    for row, prompt in enumerate(prompts):
        if not prompt:
            raise InputError(f"{path}: row {row}: field '{field}' is empty")
    return prompts


def _folder(path: Path, field: str) -> list[str]:
    for suffix in (".parquet", ".arrow"):
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix == suffix), key=lambda p: natural_key(p.name))
        if files:
            return [prompt for f in files for prompt in _column(f, _read_table(f), field)]
    if (path / "dataset_dict.json").is_file():
        raise InputError(f"{path}: a data set with splits; give the folder of one split (e.g. {path / 'train'})")
    raise InputError(f"{path}: folder has no *.parquet or *.arrow files")
