"""MoE-Beyond CSV traces (DeepSeek-V2-Lite routing recorded by github.com/ngavhane/moe-beyond).

Two layouts, told apart by the header:
  training   `Layer ID,Batch Number,Token,Activated Expert IDs`   Token is the token's text
  predicted  `Layer ID,Token,Activated Expert IDs,Predicted Expert IDs`   Token is the position
Ids are list literals such as "[8, 26, 56, 57, 60, 43]", parsed by a strict integer-list pattern (never evaluated).
Rows come grouped by layer, tokens in order within a layer, so a token's position is its row's order within its
layer; every layer must hold the same number of rows. Layer IDs use the model's own numbering (DeepSeek-V2-Lite:
1..26, layer 0 is dense) and map to MoE layer indices 0..25. One CSV file is one sequence.

The training layout's token texts become the `token_id` column: the distinct texts of one import, numbered by first
appearance (files in import order, tokens in position order). These are not the tokenizer's ids, which the files do
not record, but the same text always gets the same id, which is all a table keyed by token id (MoLE) needs. The
predicted layout records no text and writes no `token_id`.

Parsing is vectorised with pyarrow so the 1,000-file, 2.5M-row archive imports in seconds. Errors name the file,
the data row (1-based, header not counted), the field and the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from simulator.errors import InputError
from simulator.model import MoEModel
from simulator.presets import get_preset
from traces.format import TraceChunk, TraceMeta
from traces.importers import ImportSummary, expand_inputs, write_chunks

IMPORTER_VERSION = 2
DEFAULT_MODEL = "deepseek-v2-lite"
FIRST_MOE_LAYER_ID = 1
"""Model layer number of the first MoE layer in these files (DeepSeek-V2-Lite's first_k_dense_replace = 1)."""
PREDICTION = "moe_beyond"
"""Name of the prediction column that keeps the MoE-Beyond predictor's output."""

LAYER, BATCH, TOKEN, EXPERTS, PREDICTED = "Layer ID", "Batch Number", "Token", "Activated Expert IDs", "Predicted Expert IDs"
TRAINING_HEADER = [LAYER, BATCH, TOKEN, EXPERTS]
PREDICTED_HEADER = [LAYER, TOKEN, EXPERTS, PREDICTED]

_INT = r"^\s*\d{1,9}\s*$"
_INT_LIST = r"^\s*\[\s*\d{1,9}(\s*,\s*\d{1,9})*\s*\]\s*$"


def read_csv(path: str | Path, model: MoEModel, sequence: int, vocabulary: dict[str, int] | None = None) -> TraceChunk:
    """One MoE-Beyond CSV as trace rows of `sequence`, in (token, layer) order; the training layout's texts are
    numbered through `vocabulary` (text -> id, extended in place), so that files of one import share it."""
    path = Path(path)
    table = _read_table(path)
    predicted = table.column_names == PREDICTED_HEADER
    if not predicted and table.column_names != TRAINING_HEADER:
        raise InputError(f"{path}: header: {','.join(table.column_names)[:80]!r} is neither {','.join(TRAINING_HEADER)!r} "
                         f"nor {','.join(PREDICTED_HEADER)!r}")
    n, L = table.num_rows, model.moe_layers
    if n == 0:
        raise InputError(f"{path}: rows: the file has a header but no rows")

    # Row by row first, so that a bad value is reported as itself rather than as a miscount.
    layer = _ints(table, LAYER, path) - FIRST_MOE_LAYER_ID
    bad = np.flatnonzero((layer < 0) | (layer >= L))
    if bad.size:
        raise InputError(f"{path}: row {bad[0] + 1}: field '{LAYER}': {layer[bad[0]] + FIRST_MOE_LAYER_ID} is outside "
                         f"{FIRST_MOE_LAYER_ID}..{FIRST_MOE_LAYER_ID + L - 1} ({model.name} has {L} MoE layers)")
    ids = _expert_matrix(table, path, model)
    predictions = _id_lists(table, PREDICTED, path, model) if predicted else None
    if not predicted:
        batch = _ints(table, BATCH, path)
        bad = np.flatnonzero(batch != batch[0])
        if bad.size:
            raise InputError(f"{path}: row {bad[0] + 1}: field '{BATCH}': {batch[bad[0]]} differs from {batch[0]} "
                             f"(one batch per file is supported)")

    counts = np.bincount(layer, minlength=L)
    if counts.min() == 0:
        raise InputError(f"{path}: field '{LAYER}': no rows for layer {int(counts.argmin()) + FIRST_MOE_LAYER_ID} "
                         f"({model.name} has MoE layers {FIRST_MOE_LAYER_ID}..{FIRST_MOE_LAYER_ID + L - 1})")
    if counts.min() != counts.max():
        lo, hi = int(counts.argmin()), int(counts.argmax())
        raise InputError(f"{path}: field '{LAYER}': layer {lo + FIRST_MOE_LAYER_ID} has {counts[lo]} rows but layer "
                         f"{hi + FIRST_MOE_LAYER_ID} has {counts[hi]} (every layer must route the same tokens)")
    tokens = int(counts[0])

    # Row order within each layer is the token position; `perm` lists the file rows in (token, layer) order.
    by_layer = np.argsort(layer, kind="stable")
    position = np.tile(np.arange(tokens), L)
    perm = np.empty(n, dtype=np.int64)
    perm[position * L + np.repeat(np.arange(L), tokens)] = by_layer
    if predicted:
        given = _ints(table, TOKEN, path)[by_layer]
        bad = np.flatnonzero(given != position)
        if bad.size:
            raise InputError(f"{path}: row {by_layer[bad[0]] + 1}: field '{TOKEN}': {given[bad[0]]} is not the row's "
                             f"position {position[bad[0]]} within its layer (rows must keep token order)")

    chunk = TraceChunk(
        sequence=np.full(n, sequence, dtype=np.int32),
        token=np.repeat(np.arange(tokens, dtype=np.int32), L),
        layer=np.tile(np.arange(L, dtype=np.int16), tokens),
        experts=ids[perm],
    )
    if predicted:
        chunk.predictions = {PREDICTION: predictions.take(pa.array(perm)).to_pylist()}
    else:
        chunk.token_id = np.repeat(_token_ids(table, perm.reshape(tokens, L), path, {} if vocabulary is None else vocabulary), L)
    return chunk


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import CSV files (or folders of them, in natural name order) into one trace; file i is sequence i."""
    files = expand_inputs(inputs, ".csv")
    model = model or get_preset(DEFAULT_MODEL)
    vocabulary: dict[str, int] = {}
    first = read_csv(files[0], model, 0, vocabulary)
    predicted = bool(first.predictions)

    def chunks() -> Iterator[TraceChunk]:
        yield first
        for seq, path in enumerate(files[1:], start=1):
            chunk = read_csv(path, model, seq, vocabulary)
            if bool(chunk.predictions) != predicted:
                layout = "predicted" if chunk.predictions else "training"
                raise InputError(f"{path}: header: {layout} layout, but {files[0].name} has the other (do not mix them)")
            yield chunk

    meta = TraceMeta(
        model=model,
        moe_layer_ids=list(range(FIRST_MOE_LAYER_ID, FIRST_MOE_LAYER_ID + model.moe_layers)),
        provenance={
            "source_format": "moe-beyond-predicted-csv" if predicted else "moe-beyond-csv",
            "importer": __name__,
            "importer_version": IMPORTER_VERSION,
            "files": [p.name for p in files],
            "token_position": "row order within each layer",
            "layer_mapping": f"file Layer ID minus {FIRST_MOE_LAYER_ID}",
            **({} if predicted else {"token_id": "distinct Token texts of this import, numbered by first appearance"}),
        },
    )
    rows, sequences, tokens = write_chunks(out, meta, chunks(), token_id=not predicted,
                                           predictions=[PREDICTION] if predicted else [])
    return ImportSummary(Path(out), rows, sequences, tokens)


def _read_table(path: Path) -> pa.Table:
    """The CSV with every column as text, so that bad values reach our own checks (and their messages)."""
    as_text = {name: pa.string() for name in set(TRAINING_HEADER + PREDICTED_HEADER)}
    try:
        return pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types=as_text, strings_can_be_null=False),
        )
    except (pa.ArrowException, OSError) as err:
        text = str(err).strip().splitlines()
        raise InputError(f"{path}: csv: {text[0] if text else type(err).__name__}") from None


def _first_mismatch(table: pa.Table, column: str, pattern: str) -> int | None:
    ok = pc.match_substring_regex(table[column], pattern).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def _ints(table: pa.Table, column: str, path: Path) -> np.ndarray:
    bad = _first_mismatch(table, column, _INT)
    if bad is not None:
        raise InputError(f"{path}: row {bad + 1}: field '{column}': {table[column][bad].as_py()!r} is not a non-negative integer")
    return pc.cast(pc.utf8_trim_whitespace(table[column]), pa.int64()).to_numpy()


def _token_ids(table: pa.Table, grid: np.ndarray, path: Path, vocabulary: dict[str, int]) -> np.ndarray:
    """The id of each position's text; `grid` holds the file rows of [position, layer]. Every layer must see the
    same text at a position (they route the same token)."""
    encoded = table[TOKEN].combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy()[grid]
    bad = np.argwhere(codes != codes[:, :1])
    if bad.size:
        row, first = grid[tuple(bad[0])], grid[bad[0][0], 0]
        raise InputError(f"{path}: row {row + 1}: field '{TOKEN}': {table[TOKEN][int(row)].as_py()!r} differs from "
                         f"{table[TOKEN][int(first)].as_py()!r} at the same position in row {first + 1}")
    texts = encoded.dictionary.to_pylist()
    codes = codes[:, 0]
    _, first_seen = np.unique(codes, return_index=True)
    ids = np.zeros(len(texts), dtype=np.int32)
    for code in codes[np.sort(first_seen)]:
        ids[code] = vocabulary.setdefault(texts[code], len(vocabulary))
    return ids[codes]


def _expert_matrix(table: pa.Table, path: Path, model: MoEModel) -> np.ndarray:
    """The routed experts as [rows, top_k] int16, each row exactly top_k distinct ids."""
    k = model.top_k
    lists = _id_lists(table, EXPERTS, path, model)
    lengths = pc.list_value_length(lists).to_numpy()
    bad = np.flatnonzero(lengths != k)
    if bad.size:
        raise InputError(f"{path}: row {bad[0] + 1}: field '{EXPERTS}': {table[EXPERTS][int(bad[0])].as_py()!r} has "
                         f"{lengths[bad[0]]} ids, {model.name} routes top_k={k}")
    ids = lists.flatten().to_numpy().reshape(-1, k)
    ordered = np.sort(ids, axis=1)
    bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if bad.size:
        raise InputError(f"{path}: row {bad[0] + 1}: field '{EXPERTS}': {table[EXPERTS][int(bad[0])].as_py()!r} repeats an expert")
    return ids


def _id_lists(table: pa.Table, column: str, path: Path, model: MoEModel) -> pa.ListArray:
    """The column's list literals as a list<int16> array, every id checked against the model's expert count."""
    bad = _first_mismatch(table, column, _INT_LIST)
    if bad is not None:
        raise InputError(f"{path}: row {bad + 1}: field '{column}': {table[column][bad].as_py()!r} is not a list of integers like [3, 17]")
    parts = pc.split_pattern(pc.utf8_trim(pc.utf8_trim_whitespace(table[column].combine_chunks()), "[]"), ",")
    flat = pc.cast(pc.utf8_trim_whitespace(parts.flatten()), pa.int32())
    lists = pa.ListArray.from_arrays(parts.offsets, flat)
    flat = flat.to_numpy()
    bad = np.flatnonzero(flat >= model.experts_per_layer)
    if bad.size:
        offsets = lists.offsets.to_numpy()
        row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
        raise InputError(f"{path}: row {row + 1}: field '{column}': {table[column][row].as_py()!r} has id {flat[bad[0]]} "
                         f"outside 0..{model.experts_per_layer - 1} ({model.name})")
    return pc.cast(lists, pa.list_(pa.int16()))
