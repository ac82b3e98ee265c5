"""moe-lrc top-k routing tensors (github.com/ljcleo/moe-lrc, "Not All Models Suit Expert Offloading").

moe-lrc stores one safetensors file per MoE layer, `<model>_<layer:02d>.safetensors`, holding for each data set a
tensor `[sequences, tokens, top_k]` of int8 expert ids (the top-k of the router logits, highest first: router
order). Every layer file must hold the same data sets with the same shape. The layer index is the number after the
last underscore of the file name (files are taken in that order); data sets are taken in sorted name order, and
their sequences become our sequences 0, 1, ... in that order (the provenance records which range came from which).

The safetensors container is parsed here with numpy (an 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then raw little-endian bytes), not through the `safetensors` package:
the parse is a few lines, reads only the tensors it needs (moe-lrc's bf16 logit files, which numpy cannot
represent, are never touched), never executes anything, and lets every malformation be reported as one line naming
the file, the tensor and the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import TraceChunk, TraceMeta
from traces.importers import ImportSummary, expand_inputs, write_chunks

IMPORTER_VERSION = 1
DEFAULT_MODEL = None
"""No default: the files do not say which model they come from; `--model` is required."""
INTEGER_DTYPES = {"I8": "<i1", "U8": "<u1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "I64": "<i8"}
MAX_HEADER_BYTES = 100_000_000
SEQUENCES_PER_CHUNK = 64


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where its data begins."""
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputError(f"{path}: header: file is {len(raw)} bytes, too short for a safetensors header")
            size = int.from_bytes(raw, "little")
            if size > MAX_HEADER_BYTES:
                raise InputError(f"{path}: header: length {size} is implausible (not a safetensors file?)")
            text = f.read(size)
    except OSError as err:
        raise InputError(f"{path}: read: {err.strerror or err}") from None
    if len(text) < size:
        raise InputError(f"{path}: header: {len(text)} of {size} header bytes present (truncated)")
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: header: not JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: header: JSON {type(header).__name__} is not an object")
    return header, 8 + size


def read_tensor(path: Path, header: dict, data_start: int, name: str) -> np.ndarray:
    """One integer tensor of the file, checked against its header entry and the file's length."""
    entry = header[name]
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise InputError(f"{where}: header entry {str(entry)[:80]!r} lacks dtype, shape or data_offsets")
    dtype = INTEGER_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise InputError(f"{where}: field 'dtype': {entry['dtype']!r} is not an integer type ({', '.join(INTEGER_DTYPES)})")
    shape = entry["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(s) is int and s > 0 for s in shape)):
        raise InputError(f"{where}: field 'shape': {shape!r} is not [sequences, tokens, top_k]")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise InputError(f"{where}: field 'data_offsets': {offsets!r} is not two byte offsets")
    begin, end = offsets
    itemsize = np.dtype(dtype).itemsize
    if end - begin != int(np.prod(shape)) * itemsize:
        raise InputError(f"{where}: field 'data_offsets': {offsets!r} spans {end - begin} bytes, shape {shape} "
                         f"of {entry['dtype']} needs {int(np.prod(shape)) * itemsize}")
    length = path.stat().st_size - data_start
    if end > length:
        raise InputError(f"{where}: field 'data_offsets': {offsets!r} runs past the end of the data ({length} bytes; truncated)")
    return np.fromfile(path, dtype=dtype, count=end // itemsize - begin // itemsize, offset=data_start + begin).reshape(shape)


def layer_files(inputs: Iterable[str | Path]) -> list[tuple[int, Path]]:
    """(layer index, file) pairs in layer order, the index read from the name's trailing `_<number>`."""
    found = []
    for path in expand_inputs(inputs, ".safetensors"):
        match = re.search(r"_(\d+)\.safetensors$", path.name)
        if not match:
            raise InputError(f"{path}: file name: expected <model>_<layer>.safetensors (the layer number is taken from it)")
        found.append((int(match.group(1)), path))
    found.sort()
    for (a, pa_), (b, pb) in zip(found, found[1:]):
        if a == b:
            raise InputError(f"{pb}: file name: layer {b} is also given by {pa_.name}")
    return found


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import one model's per-layer files (or a folder of them) into one trace."""
    if model is None:
        raise InputError("arguments: --model is required for --format moe-lrc (the files do not name their model)")
    files = layer_files(inputs)
    L, E, k = model.moe_layers, model.experts_per_layer, model.top_k
    if len(files) != L:
        raise InputError(f"{files[0][1].parent}: files: {len(files)} layer files (layers {[i for i, _ in files][:8]}...) "
                         f"but {model.name} has {L} MoE layers")
    headers = [(path, *read_safetensors_header(path)) for _, path in files]
    first_path, first_header, _ = headers[0]
    datasets = sorted(n for n in first_header if n != "__metadata__")
    if not datasets:
        raise InputError(f"{first_path}: header: holds no tensors")
    shapes = {}
    for path, header, _ in headers:
        names = sorted(n for n in header if n != "__metadata__")
        if names != datasets:
            raise InputError(f"{path}: header: tensors {names[:6]} differ from {first_path.name}'s {datasets[:6]}")
        for name in datasets:
            shape = header[name].get("shape") if isinstance(header[name], dict) else None
            if name in shapes and shape != shapes[name]:
                raise InputError(f"{path}: tensor '{name}': field 'shape': {shape!r} differs from {shapes[name]!r} in {first_path.name}")
            shapes.setdefault(name, shape)
    tensors = {}
    for path, header, start in headers:
        for name in datasets:
            ids = read_tensor(path, header, start, name)
            if ids.shape[2] != k:
                raise InputError(f"{path}: tensor '{name}': field 'shape': {list(ids.shape)} has top_k={ids.shape[2]}, "
                                 f"{model.name} routes top_k={k}")
            bad = np.argwhere((ids < 0) | (ids >= E))
            if bad.size:
                i = tuple(int(v) for v in bad[0])
                raise InputError(f"{path}: tensor '{name}': value at {list(i)}: {ids[i]} is outside 0..{E - 1} ({model.name})")
            ordered = np.sort(ids, axis=2)
            bad = np.argwhere((ordered[..., 1:] == ordered[..., :-1]).any(axis=2))
            if bad.size:
                s, t = (int(v) for v in bad[0])
                raise InputError(f"{path}: tensor '{name}': ids at [{s}, {t}]: {ids[s, t].tolist()} repeat an expert")
            tensors[path, name] = ids.astype(np.int16)

    ranges, first = {}, 0
    for name in datasets:
        ranges[name] = [first, first + shapes[name][0]]
        first += shapes[name][0]

    def chunks() -> Iterator[TraceChunk]:
        for name in datasets:
            n, T = shapes[name][:2]
            stacked = np.stack([tensors[path, name] for _, path, in files], axis=2)  # [n, T, L, k]
            for lo in range(0, n, SEQUENCES_PER_CHUNK):
                part = stacked[lo:lo + SEQUENCES_PER_CHUNK]
                m = len(part)
                yield TraceChunk(
                    sequence=np.repeat(np.arange(ranges[name][0] + lo, ranges[name][0] + lo + m, dtype=np.int32), T * L),
                    token=np.tile(np.repeat(np.arange(T, dtype=np.int32), L), m),
                    layer=np.tile(np.arange(L, dtype=np.int16), m * T),
                    experts=part.reshape(-1, k),
                )

    meta = TraceMeta(model=model, moe_layer_ids=[i for i, _ in files], provenance={
        "source_format": "moe-lrc-topk-safetensors",
        "importer": __name__,
        "importer_version": IMPORTER_VERSION,
        "files": [p.name for _, p in files],
        "datasets": ranges,
        "layer_mapping": "file name's trailing layer number, in ascending order",
    })
    rows, sequences, tokens = write_chunks(out, meta, chunks())
    return ImportSummary(Path(out), rows, sequences, tokens)
