"""A generic long format, so a user can bring routing from anywhere: one row per routed expert (one access).

Columns (CSV with a header, or Parquet; other columns are ignored):
  sequence  integer ≥ 0   sequence id
  token     integer ≥ 0   token position within the sequence
  layer     integer ≥ 0   MoE layer: an index 0..L-1, or the model's own layer numbers (then exactly L distinct
                          values, mapped in ascending order to 0..L-1 and kept as the trace's moe_layer_ids)
  expert    integer       routed expert id, 0..E-1
  weight    number        optional gate weight
The rows of one (sequence, token, layer) are its routed experts in router order (their order in the input).
Several inputs are concatenated in order (then sorted); a folder stands for its .csv and .parquet files.
`--columns` reads the fields from other columns, file names or row numbers, and takes a Parquet column of lists as
the experts of one (sequence, token, layer) per row (traces/importers/column_map.py).

A (sequence, token, layer) with fewer than top_k rows is padded with -1 ("no expert recorded": no access), and a
layer missing from a token that other layers have becomes an all -1 row; both are counted in the import notes.
More than top_k rows, a repeated expert, or a value out of range is an error naming the file, row, field and value;
so is a list of experts whose length is not top_k.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import TraceChunk, TraceMeta
from traces.importers import ImportSummary, expand_inputs, write_chunks
from traces.importers.column_map import ColumnMap

IMPORTER_VERSION = 1
DEFAULT_MODEL = None
"""No default: the rows do not name their model; `--model` is required."""
REQUIRED = ("sequence", "token", "layer", "expert")
OPTIONAL = ("weight",)
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
_INT = r"^\s*-?\d{1,10}\s*$"
_FLOAT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*(nan|NaN)\s*$"


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None,
                 columns: str | None = None) -> ImportSummary:
    """Import long-format files into one trace; `columns` is `--columns` (column_map.py), None for the defaults."""
    if model is None:
        raise InputError("arguments: --model is required for --format long (the rows do not name their model)")
    fields = ColumnMap.parse(columns)
    files = expand_inputs(inputs, SUFFIXES)
    data, rows, has_weight = _read_columns(files, fields, model)
    _check_ranges(data, model, rows)
    layer, moe_layer_ids, mapping = _map_layers(data, model, rows)
    groups = _Groups.of(data, layer, model, rows)
    chunk, tokens = _grid_chunk(groups, data, model, has_weight)
    L, k = model.moe_layers, model.top_k
    missing_rows = tokens * L - len(groups.starts)
    padded = int((groups.sizes < k).sum())
    notes = []
    if missing_rows or padded:
        notes.append(f"wrote {missing_rows:,} missing (token, layer) entries as all -1 rows and padded {padded:,} "
                     f"entries with fewer than top_k={k} experts with -1")
    meta = TraceMeta(model=model, moe_layer_ids=moe_layer_ids, provenance={
        "source_format": "long",
        "importer": __name__,
        "importer_version": IMPORTER_VERSION,
        "files": [p.name for p in files],
        "columns": fields.describe(),
        "layer_mapping": mapping,
        "missing_entries": missing_rows,
        "padded_entries": padded,
    })
    rows_written, sequences, n_tokens = write_chunks(out, meta, [chunk], weights=bool(has_weight))
    return ImportSummary(Path(out), rows_written, sequences, n_tokens, notes=notes)


@dataclass
class _Origins:
    """Which file and input row each row of the concatenated columns came from, to name the file, row and field of
    an error (a row with a list of k experts became k rows)."""

    fields: ColumnMap
    starts: list[tuple[Path, int, int]] = field(default_factory=list)
    """(file, its first row in the concatenation, rows per input row), in order."""

    def where(self, row: int) -> str:
        i = max(j for j, (_, first, _) in enumerate(self.starts) if first <= row)
        path, first, stride = self.starts[i]
        return f"{path}: row {(row - first) // stride + 1}"

    def at(self, row: int, name: str) -> str:
        return f"{self.where(row)}: {self.fields.label(name)}"


def _read_columns(files: list[Path], fields: ColumnMap, model: MoEModel) -> tuple[dict[str, np.ndarray], _Origins, bool | None]:
    """The files' fields concatenated in order (a row of k listed experts as k rows), checked as numbers; where each
    row came from; whether they have weights (all or none of them)."""
    cols = {name: [] for name in REQUIRED + OPTIONAL}
    origins = _Origins(fields)
    has_weight = None
    total = 0
    needed = [c for c in map(fields.column, REQUIRED) if c] + ([fields.column("weight")] if "weight" in fields.explicit else [])
    weight = fields.column("weight")
    for path in files:
        table = _read(path, needed + [weight])
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            optional = "" if "weight" in fields.explicit else f" and optionally {weight}"
            raise InputError(f"{path}: header: column '{missing[0]}' is missing (has {table.column_names[:8]}; "
                             f"needs {', '.join(needed)}{optional})")
        weight_here = weight in table.column_names
        if has_weight is not None and weight_here != has_weight:
            raise InputError(f"{path}: header: '{weight}' column {'present' if weight_here else 'absent'}, unlike {files[0].name}")
        has_weight = weight_here
        if table.num_rows == 0:
            raise InputError(f"{path}: rows: the file has no rows")
        experts, stride = _experts(table, fields, path, model)
        cols["expert"].append(experts)
        for name in ("sequence", "token", "layer"):
            column = fields.column(name)
            values = (_integers(table[column], column, fields.label(name), path) if column
                      else fields.derived(name, path, table.num_rows))
            cols[name].append(np.repeat(values, stride))
        if weight_here:
            cols["weight"].append(_weights(table, fields, path, stride))
        origins.starts.append((path, total, stride))
        total += table.num_rows * stride
    return {name: np.concatenate(parts) for name, parts in cols.items() if parts}, origins, has_weight


def _check_ranges(data: dict[str, np.ndarray], model: MoEModel, rows: _Origins) -> None:
    """Every id non-negative, sequence and token within int32, expert below experts_per_layer."""
    E = model.experts_per_layer
    for name, hi in (("sequence", 2**31 - 1), ("token", 2**31 - 1), ("layer", None), ("expert", E - 1)):
        values = data[name]
        bad = np.flatnonzero((values < 0) | ((values > hi) if hi is not None else False))
        if bad.size:
            raise InputError(f"{rows.at(int(bad[0]), name)}: {values[bad[0]]} is outside 0..{hi if hi is not None else ''}")


def _map_layers(data: dict[str, np.ndarray], model: MoEModel, rows: _Origins) -> tuple[np.ndarray, list[int], str]:
    """The layer column as MoE layer indices 0..L-1, the trace's moe_layer_ids, and how they were mapped."""
    L = model.moe_layers
    layer_ids = np.unique(data["layer"])
    if layer_ids.max() < L:
        return data["layer"], list(range(L)), "layer values are MoE layer indices"
    if len(layer_ids) == L:
        return (np.searchsorted(layer_ids, data["layer"]), layer_ids.tolist(),
                f"the {L} distinct layer values in ascending order became MoE layers 0..{L - 1}")
    row = int(np.flatnonzero(data["layer"] >= L)[0])
    raise InputError(f"{rows.at(row, 'layer')}: {data['layer'][row]} is not an MoE layer index 0..{L - 1}, and the "
                     f"input has {len(layer_ids)} distinct layer values, not {model.name}'s {L} layer numbers")


@dataclass
class _Groups:
    """The rows sorted and grouped by (sequence, token, layer): one group per trace row, its experts in router order."""

    order: np.ndarray
    """The sort: sorted row i is input row order[i]."""
    seq: np.ndarray
    tok: np.ndarray
    lay: np.ndarray
    """Sequence, token and MoE layer of each sorted row."""
    starts: np.ndarray
    """Each group's first sorted row."""
    group: np.ndarray
    slot: np.ndarray
    """Each sorted row's group and its place in the group."""
    sizes: np.ndarray
    experts: np.ndarray
    """[groups, top_k] int16, -1 padded."""

    @classmethod
    def of(cls, data: dict[str, np.ndarray], layer: np.ndarray, model: MoEModel, rows: _Origins) -> "_Groups":
        """The groups; InputError for a group of more than top_k experts or one that repeats an expert."""
        k = model.top_k
        order = np.lexsort((layer, data["token"], data["sequence"]))  # stable: router order kept within a group
        seq, tok, lay = data["sequence"][order], data["token"][order], layer[order]
        n = len(order)
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = (seq[1:] != seq[:-1]) | (tok[1:] != tok[:-1]) | (lay[1:] != lay[:-1])
        starts = np.flatnonzero(new_group)
        group = np.cumsum(new_group) - 1
        slot = np.arange(n) - starts[group]
        sizes = np.diff(np.append(starts, n))

        def named(g: int) -> str:
            return (f"(sequence {seq[starts[g]]}, token {tok[starts[g]]}, layer {data['layer'][order[starts[g]]]})")

        bad = np.flatnonzero(sizes > k)
        if bad.size:
            g = int(bad[0])
            raise InputError(f"{rows.at(int(order[starts[g] + k]), 'expert')}: {named(g)} has {sizes[g]} experts, "
                             f"{model.name} routes top_k={k}")
        experts = np.full((len(starts), k), -1, dtype=np.int16)
        experts[group, slot] = data["expert"][order]
        ordered = np.sort(experts, axis=1)
        bad = np.flatnonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))
        if bad.size:
            g = int(bad[0])
            raise InputError(f"{rows.at(int(order[starts[g]]), 'expert')}: {named(g)} repeats an expert: "
                             f"{experts[g].tolist()}")
        return cls(order, seq, tok, lay, starts, group, slot, sizes, experts)


def _grid_chunk(groups: _Groups, data: dict[str, np.ndarray], model: MoEModel, has_weight: bool | None) -> tuple[TraceChunk, int]:
    """The groups laid on the full (token, layer) grid of every (sequence, token) present, as one chunk (a layer
    missing from a token becomes an all -1 row), and the number of tokens."""
    L, k = model.moe_layers, model.top_k
    starts = groups.starts
    g_seq, g_tok, g_lay = groups.seq[starts], groups.tok[starts], groups.lay[starts]
    new_token = np.ones(len(starts), dtype=bool)
    new_token[1:] = (g_seq[1:] != g_seq[:-1]) | (g_tok[1:] != g_tok[:-1])
    token_index = np.cumsum(new_token) - 1
    tokens = int(token_index[-1]) + 1
    grid = np.full((tokens * L, k), -1, dtype=np.int16)
    grid[token_index * L + g_lay] = groups.experts
    chunk = TraceChunk(
        sequence=np.repeat(g_seq[new_token].astype(np.int32), L),
        token=np.repeat(g_tok[new_token].astype(np.int32), L),
        layer=np.tile(np.arange(L, dtype=np.int16), tokens),
        experts=grid,
    )
    if has_weight:
        w = np.full((len(starts), k), np.nan, dtype=np.float32)
        w[groups.group, groups.slot] = data["weight"][groups.order]
        chunk.weights = np.full((tokens * L, k), np.nan, dtype=np.float32)
        chunk.weights[token_index * L + g_lay] = w
    return chunk, tokens


def _read(path: Path, columns: list[str]) -> pa.Table:
    """The file's `columns` (those it has): Parquet as typed, CSV as text (our checks, our messages)."""
    try:
        if path.name.endswith((".parquet", ".pq")):
            present = set(pq.read_schema(path).names)
            return pq.read_table(path, columns=[c for c in dict.fromkeys(columns) if c in present])
        text_types = {name: pa.string() for name in columns}
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=text_types, strings_can_be_null=True))
    except (pa.ArrowException, OSError) as err:
        text = str(err).strip().splitlines()
        kind = "parquet" if path.name.endswith((".parquet", ".pq")) else "csv"
        raise InputError(f"{path}: {kind}: {text[0] if text else type(err).__name__}") from None


def _experts(table: pa.Table, fields: ColumnMap, path: Path, model: MoEModel) -> tuple[np.ndarray, int]:
    """The expert ids, flat, and how many each input row holds: 1, or top_k from a column of lists."""
    name = fields.column("expert")
    column, label = table[name], fields.label("expert")
    if not _is_list(column.type):
        return _integers(column, name, label, path), 1
    _check_lengths(column, label, path, model.top_k, f"experts, {model.name} routes top_k={model.top_k}")
    return _integers(pc.list_flatten(column), name, label, path, model.top_k), model.top_k


def _weights(table: pa.Table, fields: ColumnMap, path: Path, stride: int) -> np.ndarray:
    """The gate weights, flat: one number per row, or lists as long as the rows' lists of experts."""
    name = fields.column("weight")
    column, label = table[name], fields.label("weight")
    if _is_list(column.type) != (stride > 1):
        shape = "lists" if stride > 1 else "one number"
        raise InputError(f"{path}: column '{name}': {label} must hold {shape} per row, as column "
                         f"'{fields.column('expert')}' does")
    if stride == 1:
        return _floats(column, name, label, path)
    _check_lengths(column, label, path, stride, f"weights for its {stride} experts")
    return _floats(pc.list_flatten(column), name, label, path, stride)


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _check_lengths(column, label: str, path: Path, k: int, why: str) -> None:
    """Every row of a list column holds exactly k values."""
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: row {row + 1}: {label}: empty")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != k)
    if bad.size:
        raise InputError(f"{path}: row {bad[0] + 1}: {label}: {column[int(bad[0])].as_py()!r} has {lengths[bad[0]]} "
                         f"values, not {k} {why}")


def _integers(column, name: str, label: str, path: Path, stride: int = 1) -> np.ndarray:
    return _numbers(column, name, label, path, stride, _INT, "an integer", pa.types.is_integer, pa.int64())


def _floats(column, name: str, label: str, path: Path, stride: int = 1) -> np.ndarray:
    return _numbers(column, name, label, path, stride, _FLOAT, "a number",
                    lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), pa.float64())


def _numbers(column, name: str, label: str, path: Path, stride: int, pattern: str, noun: str, accepts,
             target: pa.DataType) -> np.ndarray:
    """A column (`name`; `stride` values per input row where it is a flattened list column) as numbers: text (CSV)
    checked against `pattern` row by row, typed (Parquet) checked by `accepts`."""
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) // stride
        raise InputError(f"{path}: row {row + 1}: {label}: empty")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        ok = pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~ok)
        if bad.size:
            raise InputError(f"{path}: row {bad[0] // stride + 1}: {label}: {column[int(bad[0])].as_py()!r} is not {noun}")
        return pc.cast(pc.utf8_trim_whitespace(column), target).to_numpy()
    if not accepts(column.type):
        raise InputError(f"{path}: column '{name}': type {column.type} is not {noun} type")
    return pc.cast(column, target).to_numpy()
