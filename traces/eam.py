"""Expert Activation Matrix (EAM) collections: prefetcher training data in the style of MoE-Infinity.

An EAM describes one sequence: `EAM[l, e]` counts how many of the sequence's tokens chose expert `e` at MoE layer
`l`. A collection (MoE-Infinity's EAMC) is an array `[N sequences, L layers, E experts]`. It has no token order, so
it is not a routing trace and cannot be replayed; a prefetcher matches the running sequence's partial EAM against it.

On disk (`write_eam_collection`) it is Parquet, one row per (sequence, layer):
  sequence  int32                        sequence index 0..N-1, ascending
  layer     int16                        MoE layer index 0..L-1, ascending within a sequence
  counts    fixed_size_list<int32>[E]    the EAM row of that layer
with the model, the original layer numbers and the provenance as JSON under the schema metadata key
`moe_offload_sim_eam` (so a trace reader refuses it by name, and it refuses traces). `load_eam_collection` reads this
file, or a MoE-Infinity `.npy` directly (without pickle), and returns the validated int64 array.
`eam_collection_from_trace` builds the collection of any routing trace, so a prefetcher can be trained on the
traces we import or record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simulator.atomic_file import AtomicFile
from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import TraceFile, read_metadata, validate_model_dict

FORMAT_VERSION = 1
METADATA_KEY = b"moe_offload_sim_eam"
NPY_MAGIC = b"\x93NUMPY"


def check_eam_array(eam: np.ndarray, where: str, model: MoEModel | None = None) -> np.ndarray:
    """The collection as int64 [N, L, E]; raises InputError naming `where`, the field and the value otherwise.

    Counts must be finite non-negative integers (float arrays holding whole numbers are accepted); with a model,
    L and E must be its MoE layers and experts per layer.
    """
    if eam.dtype.kind not in "iuf" or eam.dtype.kind == "f" and eam.dtype.itemsize < 2:
        raise InputError(f"{where}: field 'dtype': {eam.dtype} is not a numeric count type")
    if eam.ndim != 3:
        raise InputError(f"{where}: field 'shape': {tuple(eam.shape)} is not [sequences, layers, experts]")
    if eam.shape[0] == 0:
        raise InputError(f"{where}: field 'shape': {tuple(eam.shape)} holds no sequences")
    if model is not None and eam.shape[1:] != (model.moe_layers, model.experts_per_layer):
        raise InputError(f"{where}: field 'shape': {tuple(eam.shape)} does not match {model.name} "
                         f"({model.moe_layers} MoE layers × {model.experts_per_layer} experts; pass --model)")
    if eam.dtype.kind == "f":
        bad = ~np.isfinite(eam) | (eam != np.round(eam))
        if bad.any():
            i = tuple(int(v) for v in np.argwhere(bad)[0])
            raise InputError(f"{where}: field 'counts{list(i)}': {eam[i].item()!r} is not a whole number")
    bad = eam < 0
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"{where}: field 'counts{list(i)}': {eam[i].item()!r} is negative")
    if eam.dtype.kind == "u" and eam.dtype.itemsize == 8 and eam.size and eam.max() > np.iinfo(np.int64).max:
        raise InputError(f"{where}: field 'counts': {eam.max()} is too large")
    return eam.astype(np.int64)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A `.npy` file as an array, never unpickling (object arrays are refused with one line)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            magic = f.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC:
            raise InputError(f"{path}: header: not a .npy file (magic {magic!r})")
        return np.load(path, allow_pickle=False, mmap_mode=None)
    except InputError:
        raise
    except ValueError as err:  # object arrays: "Object arrays cannot be loaded when allow_pickle=False"
        raise InputError(f"{path}: npy: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise InputError(f"{path}: read: {err.strerror or err}") from None


def write_eam_collection(path: str | os.PathLike, eam: np.ndarray, model: MoEModel, moe_layer_ids: list[int],
                         provenance: dict) -> None:
    """Write a validated collection atomically (a temporary file renamed into place)."""
    eam = check_eam_array(eam, str(path), model)
    N, L, E = eam.shape
    if eam.max(initial=0) > np.iinfo(np.int32).max:
        raise InputError(f"{path}: field 'counts': {eam.max()} does not fit int32")
    meta = {"format_version": FORMAT_VERSION, "kind": "eam_collection", "model": model.to_dict(),
            "moe_layer_ids": list(moe_layer_ids), "provenance": provenance}
    schema = pa.schema([pa.field("sequence", pa.int32(), nullable=False), pa.field("layer", pa.int16(), nullable=False),
                        pa.field("counts", pa.list_(pa.int32(), E), nullable=False)],
                       metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    table = pa.table({
        "sequence": pa.array(np.repeat(np.arange(N, dtype=np.int32), L)),
        "layer": pa.array(np.tile(np.arange(L, dtype=np.int16), N)),
        "counts": pa.FixedSizeListArray.from_arrays(pa.array(eam.astype(np.int32).ravel()), E),
    }, schema=schema)
    with AtomicFile(path) as f:
        pq.write_table(table, f.tmp, compression="zstd")


def load_eam_collection(path: str | os.PathLike, model: MoEModel | None = None) -> np.ndarray:
    """The collection at `path` as int64 [N, L, E]: our Parquet file (see the module docstring) or a raw `.npy`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such EAM collection file")
    with path.open("rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        return check_eam_array(read_npy(path), str(path), model)
    eam, meta_model, _ = _read_parquet(path)
    if model is not None and (model.moe_layers, model.experts_per_layer) != (meta_model.moe_layers, meta_model.experts_per_layer):
        raise InputError(f"{path}: metadata 'model': {meta_model.name} does not match {model.name}")
    return eam


def eam_collection_metadata(path: str | os.PathLike) -> dict:
    """The model (as an MoEModel), moe_layer_ids and provenance of our EAM collection file."""
    _, model, doc = _read_parquet(Path(path))
    return {"model": model, "moe_layer_ids": doc.get("moe_layer_ids"), "provenance": doc.get("provenance") or {}}


def eam_collection_from_trace(path: str | os.PathLike, *, batch_rows: int = 1 << 16) -> np.ndarray:
    """The EAM of every sequence of a routing trace, [sequences in trace order, L, E] int64 (-1 ids are skipped)."""
    trace = TraceFile(path)
    L, E = trace.meta.model.moe_layers, trace.meta.model.experts_per_layer
    parts: dict[int, np.ndarray] = {}
    for chunk in trace.chunks(batch_rows=batch_rows):
        valid = chunk.experts >= 0
        seqs, index = np.unique(chunk.sequence, return_inverse=True)
        key = (index[:, None] * L + chunk.layer.astype(np.int64)[:, None]) * E + chunk.experts
        counts = np.bincount(key[valid], minlength=len(seqs) * L * E).reshape(len(seqs), L, E)
        for i, s in enumerate(seqs.tolist()):
            parts[s] = parts[s] + counts[i] if s in parts else counts[i]
    if not parts:
        raise InputError(f"{path}: rows: the trace has no rows")
    return np.stack([parts[s] for s in sorted(parts)]).astype(np.int64)


def _read_parquet(path: Path) -> tuple[np.ndarray, MoEModel, dict]:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a .npy or Parquet EAM collection ({str(err).splitlines()[0]})") from None
    doc = read_metadata(path, file.schema_arrow, METADATA_KEY, FORMAT_VERSION,
                        "not an EAM collection; a routing trace becomes one through eam_collection_from_trace")
    model = validate_model_dict(doc.get("model") or {}, f"{path}: metadata 'model'")
    L, E = model.moe_layers, model.experts_per_layer
    try:
        table = file.read()
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None
    for col in ("sequence", "layer", "counts"):
        if col not in table.column_names:
            raise InputError(f"{path}: required column '{col}' is missing")
        if table[col].null_count:
            raise InputError(f"{path}: column '{col}' has null values")
    counts_type = table.schema.field("counts").type
    if not (pa.types.is_fixed_size_list(counts_type) and counts_type.list_size == E):
        raise InputError(f"{path}: column 'counts' has type {counts_type}, expected fixed_size_list of {E} int32")
    n = table.num_rows
    if n == 0 or n % L:
        raise InputError(f"{path}: rows: {n} is not a positive multiple of moe_layers={L}")
    seq = table["sequence"].to_numpy()
    layer = table["layer"].to_numpy()
    expect_seq, expect_layer = np.repeat(np.arange(n // L), L), np.tile(np.arange(L), n // L)
    bad = np.flatnonzero((seq != expect_seq) | (layer != expect_layer))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{path}: row {i}: field 'sequence/layer' = {(int(seq[i]), int(layer[i]))} is not the "
                         f"expected {(int(expect_seq[i]), int(expect_layer[i]))} (one row per sequence and layer, in order)")
    eam = table["counts"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n // L, L, E)
    return check_eam_array(eam, str(path), model), model, doc
