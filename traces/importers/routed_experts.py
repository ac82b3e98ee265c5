"""Per-request routed-expert arrays as trace sequences: what the vllm-routed, sglang-routed and routed-npy importers
share.

vLLM and SGLang (`--enable-return-routed-experts`, for RL "routing replay") return with each request the expert ids
every MoE layer's router chose for every token: an array [tokens, layers, top_k]. A request becomes one sequence,
its rows the array's tokens in order; the first `prompt_rows` get phase prefill, the rest decode (an import whose
inputs do not say where the prompt ends gets no phase column).

Checks, each refused in one line naming the file, the record and the field: integer ids on three axes; the model's
top_k; every id in 0..E-1, or -1 (vLLM marks prefix-cached prompt positions so: no expert recorded, no access); no
expert twice in one (token, layer); a prompt no longer than the array. The layer axis holds the model's L MoE layers,
or every decoder layer (SGLang sizes it by num_hidden_layers): the layers no router wrote then stay all 0, which a
router choosing k distinct experts never produces for k ≥ 2 (for k = 1 only if every token chose expert 0), so
exactly (axis − L) all-0 layers are taken for the dense ones and dropped, and the positions of the others become the
trace's moe_layer_ids. Every request of an import must agree on them and on whether the prompt is known.

An import reads its inputs twice (check everything and gather the provenance, then write), so it holds one
request's array at a time, not the whole input.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import PHASES, TraceChunk, TraceMeta
from traces.importers import ImportSummary, expand_inputs, write_chunks


@dataclass
class Request:
    """One request's routing as read, before the checks."""

    experts: np.ndarray
    """[tokens, layers, top_k] expert ids as decoded (any dtype: the checks refuse what is not integer)."""
    prompt_rows: int | None
    """Rows of the prompt (prefill), the first ones; None where the input does not say."""
    where: str
    """The file, record and field, for error messages."""
    info: dict
    """This request's entry in the provenance: where it came from (file, line, choice, id)."""


def import_responses(inputs, out: str | Path, model: MoEModel | None, source_format: str, importer: str, version: int,
                     guesses: str, requests_of: Callable[[Path], Iterator[Request]]) -> ImportSummary:
    """Import JSONL files of a serving engine's responses (or folders of them, in natural name order) into one
    trace: `requests_of(path)` reads one file's requests. A response names no preset, so `model` is required."""
    if model is None:
        raise InputError(f"arguments: --model is required for --format {source_format} (responses do not name a preset)")
    files = expand_inputs(inputs, ".jsonl")

    def read() -> Iterator[Request]:
        for path in files:
            yield from requests_of(path)

    return import_requests(read, files, out, model, {"source_format": source_format, "importer": importer,
                                                     "importer_version": version, "guesses": guesses})


def import_requests(read: Callable[[], Iterator[Request]], files: list[Path], out: str | Path, model: MoEModel,
                    provenance: dict) -> ImportSummary:
    """Check every request `read()` yields, then read them again and write one sequence each."""
    entries: list[dict] = []
    layer_ids: list[int] | None = None
    first = ""
    unrecorded = 0
    for request in read():
        experts, positions = check(request, model)
        phased = request.prompt_rows is not None
        if layer_ids is None:
            layer_ids, first, with_phase = positions, request.where, phased
        elif positions != layer_ids:
            raise InputError(f"{request.where}: MoE layers at {positions} of the layer axis, unlike {first} ({layer_ids})")
        elif phased != with_phase:
            raise InputError(f"{request.where}: {'a' if phased else 'no'} prompt/output split, unlike {first}")
        entry = {**request.info, "tokens": len(experts)}
        if phased:
            entry.update(prompt_tokens=request.prompt_rows, decode_tokens=len(experts) - request.prompt_rows)
        entries.append(entry)
        unrecorded += int((experts < 0).all(axis=2).sum())
    if layer_ids is None:
        raise InputError("input: no requests found")

    meta = TraceMeta(model=model, moe_layer_ids=layer_ids, provenance={
        **provenance,
        "files": [p.name for p in files],
        "layer_axis": "moe_layer_ids are positions on the input's layer axis; all-0 (dense) layers were dropped",
        "unrecorded_rows": unrecorded,
        "requests": entries,
    })
    chunks = (_chunk(check(r, model)[0], r.prompt_rows, i) for i, r in enumerate(read()))
    rows, sequences, tokens = write_chunks(out, meta, chunks, phase=with_phase)
    if with_phase:
        prompt = sum(e["prompt_tokens"] for e in entries)
        note = f"{len(entries):,} request(s): {prompt:,} prompt tokens (prefill), {tokens - prompt:,} decode tokens"
    else:
        note = f"{len(entries):,} request(s) with no prompt/output split: no phase column"
    if unrecorded:
        note += f"; {unrecorded:,} (token, layer) rows hold -1 only (no expert recorded: no accesses)"
    return ImportSummary(Path(out), rows, sequences, tokens, notes=[note])


def check(request: Request, model: MoEModel) -> tuple[np.ndarray, list[int]]:
    """The request's experts as int16 [tokens, L, top_k] and the positions of its MoE layers on its layer axis."""
    a, where = request.experts, request.where
    if a.dtype.kind not in "iu":
        raise InputError(f"{where}: dtype {a.dtype} is not an integer type (expert ids)")
    if a.ndim != 3:
        raise InputError(f"{where}: shape {a.shape} is not [tokens, layers, top_k]")
    tokens, _, k = a.shape
    if k != model.top_k:
        raise InputError(f"{where}: shape {a.shape} has top_k {k}, but {model.name} routes top_k={model.top_k}")
    if tokens == 0:
        raise InputError(f"{where}: shape {a.shape} has no tokens")
    E = model.experts_per_layer
    bad = np.argwhere((a < -1) | (a >= E))
    if bad.size:
        t, layer, slot = bad[0]
        raise InputError(f"{where}: [token {t}, layer {layer}, slot {slot}]: {a[t, layer, slot]} is outside 0..{E - 1} "
                         f"({model.name}; -1 = no expert recorded)")
    positions = _moe_positions(a, model, where)
    experts = a[:, positions, :].astype(np.int16)
    ordered = np.sort(experts, axis=2)
    bad = np.argwhere(((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)).any(axis=2))
    if bad.size:
        t, layer = bad[0]
        raise InputError(f"{where}: [token {t}, layer {positions[layer]}]: repeats an expert: {experts[t, layer].tolist()}")
    if request.prompt_rows is not None and not 0 <= request.prompt_rows <= tokens:
        raise InputError(f"{where}: a prompt of {request.prompt_rows} tokens does not fit in its {tokens} rows")
    return experts, positions


def _moe_positions(a: np.ndarray, model: MoEModel, where: str) -> list[int]:
    """Where the model's MoE layers sit on the layer axis: all of it, or all but its all-0 (dense) layers."""
    layers, L = a.shape[1], model.moe_layers
    if layers == L:
        return list(range(L))
    if layers < L:
        raise InputError(f"{where}: shape {a.shape} has {layers} layers, but {model.name} has {L} MoE layers")
    zero = set(np.flatnonzero((a == 0).all(axis=(0, 2))).tolist())
    if len(zero) != layers - L:
        raise InputError(f"{where}: shape {a.shape} has {layers} layers, {model.name} has {L} MoE layers, and {len(zero)} "
                         f"layers are all 0, not the {layers - L} dense layers that would explain the difference")
    return [layer for layer in range(layers) if layer not in zero]


def _chunk(experts: np.ndarray, prompt_rows: int | None, sequence: int) -> TraceChunk:
    tokens, L, k = experts.shape
    chunk = TraceChunk(
        sequence=np.full(tokens * L, sequence, dtype=np.int32),
        token=np.repeat(np.arange(tokens, dtype=np.int32), L),
        layer=np.tile(np.arange(L, dtype=np.int16), tokens),
        experts=experts.reshape(tokens * L, k),
    )
    if prompt_rows is not None:
        phase = np.full(tokens, PHASES.index("decode"), dtype=np.int8)
        phase[:prompt_rows] = PHASES.index("prefill")
        chunk.phase = np.repeat(phase, L)
    return chunk


def nested_array(value, where: str) -> np.ndarray:
    """Nested JSON lists [tokens][layers][top_k] as an array; ragged lists are refused."""
    try:
        return np.array(value)
    except (ValueError, OverflowError):
        raise InputError(f"{where}: ragged: the nested lists do not all have the same length") from None


def npy_base64(text, where: str) -> np.ndarray:
    """A base64 string of `.npy` bytes (vLLM's encoding) as an array; nothing is unpickled."""
    try:
        return np.load(io.BytesIO(_base64(text, where)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{where}: npy: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def int32_base64(text, where: str) -> np.ndarray:
    """A base64 string of raw little-endian int32 values, no header (SGLang's encoding), flat."""
    raw = _base64(text, where)
    if len(raw) % 4:
        raise InputError(f"{where}: {len(raw)} bytes are not a whole number of int32 values")
    return np.frombuffer(raw, dtype="<i4")


def _base64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"{where}: {type(text).__name__} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(f"{where}: base64: {err}") from None
