"""Megatron-core router traces (`--moe-routing-trace-path DIR`, in training and in inference):
`router_trace_rank{N}.jsonl`, one file per rank (a folder stands for its .jsonl files).

What Megatron writes (read 2026-12 in NVIDIA/Megatron-LM, megatron/core/transformer/moe/router_trace.py, and its
tools/moe_routing analysis scripts): one JSON line per (step, block, layer) router call,
  {"step", "stage": "pre_dispatch", "block": "decoder" | "mtp", "layer", "rank", "num_tokens", "topk",
   "top_indices": [[top_k ids] × num_tokens]}
plus "mtp_idx" on MTP records and offsets into optional sidecar files (hidden states, logits; ignored here). `layer`
is the index in the router's module name `decoder.layers.<i>`: 0-based, dense layers counted, local to a pipeline
stage. A step is a training iteration (the training loop calls advance_step) or, in inference, one engine forward
pass (a step ends when a layer fires again). A step's records are written together; `top_indices` are the router's
top-k per token of the call, in the call's token order. Records without "block" (older traces) are decoder ones.

Mapping: one sequence per forward pass. The records of one step are split into passes by order (the j-th record of
each layer belongs to pass j: the micro-batches of an iteration); a pass's tokens are its rows 0..num_tokens-1, in
the same order at every layer; its layers are the first step's distinct decoder layer numbers in ascending order,
which must be exactly the model's L MoE layers (kept as moe_layer_ids) and every step's. No phase column: a pass
holds whatever the engine batched. MTP records are skipped (the MTP heads are not the decoder's MoE layers) and
counted; passes of 0 tokens are left out.
What the records cannot tell, so the trace cannot either: a training pass flattens Megatron's [sequence,
micro-batch] layout, so with micro-batch size b > 1 its row i is token i // b of sample i % b; an inference pass is
one step of a dynamic batch (several requests' prefill chunks and decode tokens), not one request; tensor-parallel
ranks see the same tokens (their files repeat each other: import one), and with sequence parallelism each sees its
slice; with activation recomputation a router runs again in the backward pass, so its second record becomes a
second pass. Any step whose layers disagree in record count, or a pass whose layers disagree in num_tokens, is
refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import TraceChunk, TraceMeta
from traces.importers import ImportSummary, expand_inputs, jsonl_objects, write_chunks

IMPORTER_VERSION = 1
DEFAULT_MODEL = None
"""No default: the records do not name their model; `--model` is required."""
FIELDS = ("step", "layer", "num_tokens", "topk", "top_indices")
BLOCKS = ("decoder", "mtp")


@dataclass
class _Record:
    """One decoder router call."""

    line: int
    step: int
    layer: int
    rank: object
    indices: np.ndarray
    """[num_tokens, top_k] int16."""


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import router trace files (or folders of them) into one trace, one sequence per forward pass."""
    if model is None:
        raise InputError("arguments: --model is required for --format megatron-routing (the records do not name their model)")
    files = expand_inputs(inputs, ".jsonl")
    order = _layer_order(files[0], model)
    mtp = [0]
    sequences = [info for path in files for _, info in _passes(path, model, order, mtp)]
    if not sequences:
        raise InputError(f"{files[0]}: rows: no forward pass routed any token")
    meta = TraceMeta(model=model, moe_layer_ids=order, provenance={
        "source_format": "megatron-routing",
        "importer": __name__,
        "importer_version": IMPORTER_VERSION,
        "files": [p.name for p in files],
        "layer_mapping": f"the {len(order)} distinct decoder layer numbers in ascending order became MoE layers 0..{len(order) - 1}",
        "guesses": "a sequence is one forward pass, the j-th record of each layer in a step; its tokens are in the "
                   "pass's row order (a sample's own order only for micro-batch size 1)",
        "mtp_records_skipped": mtp[0],
        "sequences": sequences,
    })
    chunks = (chunk for path in files for chunk, _ in _passes(path, model, order, [0]))
    rows, n_seq, tokens = write_chunks(out, meta, _numbered(chunks))
    note = (f"{n_seq:,} forward pass(es) became sequences (token order = the pass's row order; no phases)"
            + (f"; skipped {mtp[0]:,} MTP record(s)" if mtp[0] else ""))
    return ImportSummary(Path(out), rows, n_seq, tokens, notes=[note])


def _layer_order(path: Path, model: MoEModel) -> list[int]:
    """The decoder layer numbers of the first step, ascending: they must be the model's L MoE layers."""
    step, records = next(_steps(path, model, [0]), (None, []))
    if not records:
        raise InputError(f"{path}: rows: the file has no decoder records")
    layers = sorted({r.layer for r in records})
    if len(layers) != model.moe_layers:
        raise InputError(f"{path}: field 'layer': step {step} holds {len(layers)} distinct decoder layers "
                         f"({layers[0]}..{layers[-1]}), but {model.name} has {model.moe_layers} MoE layers "
                         f"(a pipeline stage's file holds only its own layers)")
    return layers


def _numbered(chunks: Iterator[TraceChunk]) -> Iterator[TraceChunk]:
    for i, chunk in enumerate(chunks):
        chunk.sequence[:] = i
        yield chunk


def _passes(path: Path, model: MoEModel, order: list[int], mtp: list[int]) -> Iterator[tuple[TraceChunk, dict]]:
    """Each forward pass of a file that routed tokens, as a chunk (sequence 0: the caller numbers them) and its
    provenance entry; `mtp[0]` counts the MTP records passed over."""
    L, k = len(order), model.top_k
    for step, records in _steps(path, model, mtp):
        per_layer: dict[int, list[_Record]] = {layer: [] for layer in order}
        for record in records:
            if record.layer not in per_layer:
                raise InputError(f"{path}: line {record.line}: field 'layer': {record.layer} is not one of the first "
                                 f"step's decoder layers ({order[0]}..{order[-1]})")
            per_layer[record.layer].append(record)
        counts = {layer: len(rs) for layer, rs in per_layer.items()}
        if len(set(counts.values())) != 1:
            fewest = min(counts, key=counts.get)
            raise InputError(f"{path}: line {records[0].line}: field 'layer': step {step} has {max(counts.values())} "
                             f"record(s) of some layers but {counts[fewest]} of layer {fewest}")
        for j in range(counts[order[0]]):
            calls = [per_layer[layer][j] for layer in order]
            tokens = len(calls[0].indices)
            odd = next((c for c in calls if len(c.indices) != tokens), None)
            if odd is not None:
                raise InputError(f"{path}: line {odd.line}: field 'num_tokens': {len(odd.indices)} in step {step} pass {j}, "
                                 f"where layer {order[0]} routed {tokens} (line {calls[0].line})")
            if tokens == 0:
                continue
            experts = np.stack([c.indices for c in calls], axis=1).reshape(tokens * L, k)
            chunk = TraceChunk(
                sequence=np.zeros(tokens * L, dtype=np.int32),
                token=np.repeat(np.arange(tokens, dtype=np.int32), L),
                layer=np.tile(np.arange(L, dtype=np.int16), tokens),
                experts=experts,
            )
            yield chunk, {"file": path.name, "rank": calls[0].rank, "step": step, "pass": j, "tokens": tokens}


def _steps(path: Path, model: MoEModel, mtp: list[int]) -> Iterator[tuple[int, list[_Record]]]:
    """The decoder records of a file grouped by step (a step's records must stand together)."""
    done: set[int] = set()
    step, records = None, []
    for record in _records(path, model):
        if record is None:
            mtp[0] += 1
            continue
        if record.step != step:
            if record.step in done:
                raise InputError(f"{path}: line {record.line}: field 'step': {record.step} appears again after step {step} "
                                 f"(a step's records stand together)")
            if records:
                yield step, records
            done.add(record.step)
            step, records = record.step, []
        records.append(record)
    if records:
        yield step, records


def _records(path: Path, model: MoEModel) -> Iterator[_Record | None]:
    """The file's records, checked; None for an MTP record."""
    count = 0
    for number, obj in jsonl_objects(path):
        count += 1
        where = f"{path}: line {number}"
        block = obj.get("block", "decoder")
        if block not in BLOCKS:
            raise InputError(f"{where}: field 'block': {block!r} is not one of {', '.join(BLOCKS)}")
        if block == "mtp":
            yield None
            continue
        for name in FIELDS:
            if name not in obj:
                raise InputError(f"{where}: field '{name}' is missing")
        for name in ("step", "layer", "num_tokens", "topk"):
            if type(obj[name]) is not int or obj[name] < 0:
                raise InputError(f"{where}: field '{name}': {obj[name]!r} is not a non-negative integer")
        if obj["topk"] != model.top_k:
            raise InputError(f"{where}: field 'topk': {obj['topk']}, but {model.name} routes top_k={model.top_k}")
        yield _Record(number, obj["step"], obj["layer"], obj.get("rank"), _indices(obj, model, where))
    if not count:
        raise InputError(f"{path}: rows: the file has no records")


def _indices(obj: dict, model: MoEModel, where: str) -> np.ndarray:
    """`top_indices` as int16 [num_tokens, top_k]: ragged lists, wrong lengths, ids out of range or repeated refused."""
    field = f"{where}: field 'top_indices'"
    try:
        indices = np.array(obj["top_indices"])
    except (ValueError, OverflowError):
        raise InputError(f"{field}: ragged: its rows do not all have {model.top_k} ids") from None
    shape = (obj["num_tokens"], model.top_k)
    if indices.shape != shape and not (indices.size == 0 and obj["num_tokens"] == 0):
        raise InputError(f"{field}: shape {indices.shape} is not [num_tokens, topk] = {list(shape)}")
    if indices.size and indices.dtype.kind not in "iu":
        raise InputError(f"{field}: {indices.dtype} values are not integer expert ids")
    indices = indices.reshape(shape)
    E = model.experts_per_layer
    bad = np.argwhere((indices < 0) | (indices >= E))
    if bad.size:
        t, slot = bad[0]
        raise InputError(f"{field}: [token {t}, slot {slot}]: {indices[t, slot]} is outside 0..{E - 1} ({model.name})")
    ordered = np.sort(indices, axis=1)
    bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if bad.size:
        raise InputError(f"{field}: [token {bad[0]}]: repeats an expert: {indices[bad[0]].tolist()}")
    return indices.astype(np.int16)
