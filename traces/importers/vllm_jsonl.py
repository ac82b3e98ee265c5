"""vLLM routing logs as JSON lines (github.com/Mario928/speculative-moe, Mixtral-8x7B).

Each line is `{"dataset","problem_id","layer","token_pos","experts":[a,b],"gating_probs":[p,q]}`, in execution
order: a prefill pass (layer 0 over every prompt token, then layer 1, ...), then decode steps, each running layers
0..L-1 for one token with token_pos 0. Each (dataset, problem_id) is one sequence.

The logger dropped every row whose weights were exactly [0.5, 0.5], so (token, layer) entries are missing. Placing
rows by count would shift later layers into the gaps, so rows are placed by what identifies them:
  prefill  by (token_pos, layer); the prefill ends where the layer index first decreases, and its tokens are
           0..max(token_pos) (a position every layer dropped is still a prompt token);
  decode   a new step starts wherever the layer index does not increase; the step's token position is
           prefill tokens + step index.
A missing entry becomes a row with experts -1 ("no expert recorded": the replay counts no access) and NaN weights;
the counts go to the import summary and the provenance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from simulator.presets import get_preset
from traces.format import PHASES, TraceChunk, TraceMeta
from traces.importers import ImportSummary, expand_inputs, jsonl_objects, write_chunks

IMPORTER_VERSION = 1
DEFAULT_MODEL = "mixtral-8x7b"
FIELDS = ("dataset", "problem_id", "layer", "token_pos", "experts", "gating_probs")


@dataclass
class _Rows:
    """The log rows of one sequence, in file order."""

    dataset: object
    problem_id: object
    lines: list[int] = field(default_factory=list)
    layer: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    experts: list[list[int]] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)


def read_jsonl(path: str | Path, model: MoEModel, first_sequence: int) -> tuple[list[TraceChunk], list[dict]]:
    """The sequences of one log file as chunks (ids from `first_sequence` on, in order of first appearance),
    with each sequence's shape and gap counts."""
    path = Path(path)
    groups: dict[tuple, _Rows] = {}
    for number, obj in jsonl_objects(path):
        _add_row(groups, obj, path, number, model)
    if not groups:
        raise InputError(f"{path}: rows: the file has no rows")
    placed = [_place(rows, path, model, first_sequence + i) for i, rows in enumerate(groups.values())]
    return [chunk for chunk, _ in placed], [stats for _, stats in placed]


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import log files (or folders of them, in natural name order) into one trace, sequences in file order."""
    files = expand_inputs(inputs, ".jsonl")
    model = model or get_preset(DEFAULT_MODEL)
    chunks: list[TraceChunk] = []
    sequences: list[dict] = []
    for path in files:
        file_chunks, stats = read_jsonl(path, model, len(chunks))
        chunks += file_chunks
        sequences += [{"file": path.name, **s} for s in stats]

    totals = {key: sum(s[key] for s in sequences) for key in ("missing_prefill", "missing_decode", "prefill_entries", "decode_entries")}
    missing = totals["missing_prefill"] + totals["missing_decode"]
    note = (f"filled {missing:,} missing (token, layer) entries with -1 rows: prefill {totals['missing_prefill']:,} of "
            f"{totals['prefill_entries']:,}, decode {totals['missing_decode']:,} of {totals['decode_entries']:,} "
            f"in {len(sequences):,} sequence(s)")
    meta = TraceMeta(
        model=model,
        moe_layer_ids=list(range(model.moe_layers)),
        provenance={
            "source_format": "vllm-jsonl",
            "importer": __name__,
            "importer_version": IMPORTER_VERSION,
            "files": [p.name for p in files],
            "sequences": sequences,
            "missing_entries": missing,
            "missing_written_as": "experts -1, weights NaN",
            "known_defect": "the logger dropped rows whose gating_probs were exactly [0.5, 0.5]",
            "decode_token_position": "prefill tokens + decode step index",
        },
    )
    rows, n_seq, tokens = write_chunks(out, meta, chunks, weights=True, phase=True)
    return ImportSummary(Path(out), rows, n_seq, tokens, notes=[note])


def _add_row(groups: dict[tuple, _Rows], obj: dict, path: Path, number: int, model: MoEModel) -> None:
    """Check one log line's object and append it to its sequence's rows."""
    where = f"{path}: line {number}"
    for name in FIELDS:
        if name not in obj:
            raise InputError(f"{where}: field '{name}' is missing")
    k, n_exp = model.top_k, model.experts_per_layer

    def integer(name: str, limit: int | None) -> int:
        value = obj[name]
        if type(value) is not int or value < 0 or (limit is not None and value >= limit):
            bound = f"an integer in 0..{limit - 1}" if limit is not None else "a non-negative integer"
            raise InputError(f"{where}: field '{name}': {value!r} is not {bound} ({model.name})")
        return value

    layer = integer("layer", model.moe_layers)
    pos = integer("token_pos", None)
    experts, probs = obj["experts"], obj["gating_probs"]
    if not (isinstance(experts, list) and len(experts) == k and all(type(e) is int and 0 <= e < n_exp for e in experts)):
        raise InputError(f"{where}: field 'experts': {experts!r} is not {k} expert ids in 0..{n_exp - 1} ({model.name}, top_k={k})")
    if len(set(experts)) != k:
        raise InputError(f"{where}: field 'experts': {experts!r} repeats an expert")
    if not (isinstance(probs, list) and len(probs) == k and all(type(p) in (int, float) and math.isfinite(p) for p in probs)):
        raise InputError(f"{where}: field 'gating_probs': {probs!r} is not {k} finite numbers")
    key = (json.dumps(obj["dataset"]), json.dumps(obj["problem_id"]))
    rows = groups.setdefault(key, _Rows(obj["dataset"], obj["problem_id"]))
    rows.lines.append(number)
    rows.layer.append(layer)
    rows.pos.append(pos)
    rows.experts.append(experts)
    rows.probs.append(probs)


def _place(rows: _Rows, path: Path, model: MoEModel, sequence: int) -> tuple[TraceChunk, dict]:
    """Lay one sequence's rows on its (token, layer) grid, filling the entries the logger dropped."""
    L, k = model.moe_layers, model.top_k
    layer = np.array(rows.layer, dtype=np.int64)
    pos = np.array(rows.pos, dtype=np.int64)
    lines = np.array(rows.lines)
    name = f"{path}: sequence ({rows.dataset!r}, {rows.problem_id!r})"
    if layer.max() != L - 1:
        raise InputError(f"{name}: field 'layer': highest layer is {layer.max()}, but {model.name} has {L} MoE layers (wrong model?)")

    decreases = np.flatnonzero(layer[1:] < layer[:-1]) + 1
    p = int(decreases[0]) if decreases.size else len(layer)
    same_layer = layer[1:p] == layer[: p - 1]
    bad = np.flatnonzero(same_layer & (pos[1:p] <= pos[: p - 1])) + 1
    if bad.size:
        i = bad[0]
        raise InputError(f"{path}: line {lines[i]}: field 'token_pos': {pos[i]} follows {pos[i - 1]} in the prefill of "
                         f"layer {layer[i]} (positions must increase)")
    bad = np.flatnonzero(pos[p:] != 0) + p
    if bad.size:
        raise InputError(f"{path}: line {lines[bad[0]]}: field 'token_pos': {pos[bad[0]]} in a decode step "
                         f"(expected 0: one token per step)")
    prefill_tokens = int(pos[:p].max()) + 1
    step = np.concatenate(([0], np.cumsum(layer[p + 1:] <= layer[p:-1])))
    decode_steps = int(step[-1]) + 1 if len(layer) > p else 0

    tokens = prefill_tokens + decode_steps
    slot = np.concatenate((pos[:p], prefill_tokens + step[: len(layer) - p])) * L + layer
    experts = np.full((tokens * L, k), -1, dtype=np.int16)
    weights = np.full((tokens * L, k), np.nan, dtype=np.float32)
    experts[slot] = rows.experts
    weights[slot] = rows.probs
    chunk = TraceChunk(
        sequence=np.full(tokens * L, sequence, dtype=np.int32),
        token=np.repeat(np.arange(tokens, dtype=np.int32), L),
        layer=np.tile(np.arange(L, dtype=np.int16), tokens),
        experts=experts,
        weights=weights,
        phase=np.repeat(np.array([PHASES.index("prefill")] * prefill_tokens + [PHASES.index("decode")] * decode_steps, dtype=np.int8), L),
    )
    stats = {
        "dataset": rows.dataset,
        "problem_id": rows.problem_id,
        "prefill_tokens": prefill_tokens,
        "decode_steps": decode_steps,
        "prefill_entries": prefill_tokens * L,
        "decode_entries": decode_steps * L,
        "missing_prefill": prefill_tokens * L - p,
        "missing_decode": decode_steps * L - (len(layer) - p),
    }
    return chunk, stats
