"""Request arrival times from a file (`serve.arrival=file`): CSV or Parquet with columns `sequence, arrival_s`.

A production log's timestamps replayed against a trace's sequences; every mistake is one line naming the file, the
row (1-based, after the CSV header) and the value.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from simulator.errors import InputError

COLUMNS = ("sequence", "arrival_s")


def read_arrivals(path: str | Path, sequences: list[int]) -> dict[int, float]:
    """sequence -> arrival time in seconds, for every sequence of `sequences` (more rows are allowed)."""
    path = Path(path)
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    except FileNotFoundError:
        raise InputError(f"serve.arrival_file: {path} does not exist") from None
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"serve.arrival_file: {path} is not a readable {'Parquet' if path.suffix == '.parquet' else 'CSV'} "
                         f"file ({str(err).splitlines()[0]})") from None
    for column in COLUMNS:
        if column not in table.column_names:
            raise InputError(f"serve.arrival_file: {path} has no column '{column}' (it needs: {', '.join(COLUMNS)}; "
                             f"has: {', '.join(table.column_names)})")
    arrivals: dict[int, float] = {}
    for row, (sequence, arrival) in enumerate(zip(table.column("sequence").to_pylist(), table.column("arrival_s").to_pylist()), 1):
        sequence, arrival = _number(sequence), _number(arrival)  # a CSV column with one bad cell is read as text
        if isinstance(sequence, float) and sequence.is_integer():
            sequence = int(sequence)
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise InputError(f"serve.arrival_file: {path} row {row}: sequence={sequence!r} is not an integer")
        if not isinstance(arrival, (int, float)) or isinstance(arrival, bool) or not math.isfinite(arrival) or arrival < 0:
            raise InputError(f"serve.arrival_file: {path} row {row}: arrival_s={arrival!r} is not a time ≥ 0 in seconds")
        if sequence in arrivals:
            raise InputError(f"serve.arrival_file: {path} row {row}: sequence={sequence} appears twice")
        arrivals[sequence] = float(arrival)
    for sequence in sequences:
        if sequence not in arrivals:
            raise InputError(f"serve.arrival_file: {path}: no row for sequence={sequence} of the trace")
    return arrivals


def _number(value):
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value
