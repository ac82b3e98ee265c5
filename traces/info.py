"""What a trace holds, in the statistics that decide how well caching and prefetching can do on it.

  popularity   per layer, the share of accesses that go to the most popular quarter of the experts, and the
               entropy of the expert distribution (uniform = log2 E bits): what a frequency-based cache can exploit;
  overlap      the mean fraction of a token's experts at a layer that the previous token of the same sequence also
               chose at that layer: what a recency-based cache can exploit.
The trace is streamed chunk by chunk, so memory does not grow with its length; the statistics are those of
`traces.locality.stats`, counted chunk by chunk.
"""

from __future__ import annotations

import json
import os

import numpy as np

from simulator.atomic_file import atomic_write_bytes
from traces.format import PHASES, TraceFile
from traces.locality import stats


def summarize(path: str | os.PathLike, *, batch_rows: int = 1 << 16) -> dict:
    """Shape, size, columns, per-layer popularity and consecutive-token overlap of the trace at `path`, read
    `batch_rows` rows at a time."""
    trace = TraceFile(path)
    tally = _Tally(trace.meta.model.moe_layers, trace.meta.model.experts_per_layer)
    for chunk in trace.chunks(batch_rows=batch_rows, extras=True):
        if len(chunk):
            tally.add(chunk)
    return _summary(path, trace, tally)


class _Tally:
    """What `summarize` counts while streaming a trace's chunks."""

    def __init__(self, layers: int, experts_per_layer: int):
        self.L, self.E = layers, experts_per_layer
        self.counts = np.zeros((layers, experts_per_layer), dtype=np.int64)
        self.overlap_sum = np.zeros(layers)
        self.overlap_pairs = np.zeros(layers, dtype=np.int64)
        self.tokens_of: dict[int, int] = {}
        self.phase_rows = np.zeros(len(PHASES), dtype=np.int64)
        self.rows = self.unrecorded = 0
        self.last_token = (-1, -1)
        self.carry = None  # the last row of each layer of the previous chunk's final sequence, which may continue

    def add(self, chunk) -> None:
        self.rows += len(chunk)
        self.unrecorded += int((chunk.experts < 0).sum())
        self.counts += stats.access_counts(chunk.layer.astype(np.int64)[:, None], chunk.experts, self.L, self.E)
        if chunk.phase is not None:
            self.phase_rows += np.bincount(chunk.phase, minlength=len(PHASES))
        self._add_tokens(chunk)
        self._add_overlap(chunk)

    def _add_tokens(self, chunk) -> None:
        """Count the tokens each sequence starts in `chunk` (a token continuing from the previous chunk is not new)."""
        seq = np.concatenate(([self.last_token[0]], chunk.sequence))
        tok = np.concatenate(([self.last_token[1]], chunk.token))
        new = (seq[1:] != seq[:-1]) | (tok[1:] != tok[:-1])
        ids, n = np.unique(chunk.sequence[new], return_counts=True)
        for s, c in zip(ids.tolist(), n.tolist()):
            self.tokens_of[s] = self.tokens_of.get(s, 0) + c
        self.last_token = (chunk.sequence[-1], chunk.token[-1])

    def _add_overlap(self, chunk) -> None:
        """Add the consecutive-token pairs of `chunk`, the first rows paired with the previous chunk's `carry`."""
        seq, layer, experts = chunk.sequence, chunk.layer, chunk.experts
        if self.carry is not None:
            seq, layer, experts = (np.concatenate((a, b)) for a, b in zip(self.carry, (seq, layer, experts)))
        pair_layer, fraction = _consecutive_overlap(seq, layer, experts)
        self.overlap_sum += np.bincount(pair_layer, weights=fraction, minlength=self.L)
        self.overlap_pairs += np.bincount(pair_layer, minlength=self.L)
        self.carry = _tail(seq, layer, experts)


def _summary(path: str | os.PathLike, trace: TraceFile, tally: _Tally) -> dict:
    """The summary document of what `tally` counted in the trace at `path`."""
    model = trace.meta.model
    E = model.experts_per_layer
    accesses = tally.counts.sum(axis=1)
    top = stats.top_experts(E)
    lengths = np.array(list(tally.tokens_of.values()) or [0])
    return {
        "file": str(path),
        "model": model.name,
        "moe_layers": model.moe_layers,
        "moe_layer_ids": trace.meta.moe_layer_ids,
        "experts_per_layer": E,
        "top_k": model.top_k,
        "sequences": len(tally.tokens_of),
        "tokens": int(lengths.sum()),
        "tokens_per_sequence": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "rows": tally.rows,
        "accesses": int(accesses.sum()),
        "unrecorded_slots": tally.unrecorded,
        "phase_rows": dict(zip(PHASES, tally.phase_rows.tolist())) if trace.has_phase else None,
        "columns": {"weights": trace.has_weights, "token_id": trace.has_token_id, "phase": trace.has_phase,
                    "predictions": trace.prediction_columns},
        "popularity": {"top_experts": top, "top_share": stats.top_share(tally.counts, top).round(4).tolist(),
                       "entropy_bits": stats.entropy_bits(tally.counts).round(4).tolist(),
                       "uniform_entropy_bits": float(np.log2(E))},
        "consecutive_overlap": {
            "mean": float(tally.overlap_sum.sum() / max(tally.overlap_pairs.sum(), 1)),
            "per_layer": (tally.overlap_sum / np.maximum(tally.overlap_pairs, 1)).round(4).tolist(),
        },
        "provenance": trace.meta.provenance,
    }


def _consecutive_overlap(seq: np.ndarray, layer: np.ndarray, experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row that has a predecessor at the same (sequence, layer), the layer and the fraction of its recorded
    experts that the predecessor also chose; pairs where either row recorded nothing are left out."""
    order = np.lexsort((layer, seq))  # stable: within one (sequence, layer), rows stay in token order
    s, l = seq[order], layer[order]
    paired = np.flatnonzero((s[1:] == s[:-1]) & (l[1:] == l[:-1]))
    shared, recorded, keep = stats.overlap_counts(experts[order[paired + 1]], experts[order[paired]])
    return l[paired + 1][keep].astype(np.int64), shared[keep] / recorded[keep]


def _tail(seq: np.ndarray, layer: np.ndarray, experts: np.ndarray) -> tuple[np.ndarray, ...]:
    """The last row of each layer of the final sequence: the predecessors of the next chunk's first rows."""
    rows = np.flatnonzero(seq == seq[-1])[::-1]
    _, first = np.unique(layer[rows], return_index=True)
    pick = rows[first]
    return seq[pick], layer[pick], experts[pick]


def format_summary(info: dict) -> str:
    """The summary as a compact, human-readable text block."""
    ids = info["moe_layer_ids"]
    tps = info["tokens_per_sequence"]
    cols = info["columns"]
    present = [c for c in ("weights", "token_id", "phase") if cols[c]]
    pop = info["popularity"]
    overlap = info["consecutive_overlap"]
    lines = [
        f"file        {info['file']}",
        f"model       {info['model']}: {info['moe_layers']} MoE layers (model layers {_ranges(ids)}), "
        f"{info['experts_per_layer']} experts per layer, top-{info['top_k']}",
        f"sequences   {info['sequences']:,}; tokens {info['tokens']:,} (per sequence min {tps['min']:,}, "
        f"median {tps['median']:,g}, max {tps['max']:,})",
        f"rows        {info['rows']:,}; accesses {info['accesses']:,} ({info['unrecorded_slots']:,} slots with no expert recorded)",
    ]
    if info["phase_rows"] is not None:
        lines.append("phases      " + ", ".join(f"{name} {n:,} rows" for name, n in info["phase_rows"].items()))
    lines += [
        f"columns     {', '.join(present) or 'no optional columns'}; predictions: {', '.join(cols['predictions']) or 'none'}",
        f"overlap     {overlap['mean']:.3f} of a token's experts at a layer were chosen by the previous token there "
        f"(layers {min(overlap['per_layer']):.3f}..{max(overlap['per_layer']):.3f})",
        f"popularity  per layer: access share of the top {pop['top_experts']} of {info['experts_per_layer']} experts "
        f"(uniform {pop['top_experts'] / info['experts_per_layer']:.2f}) / entropy in bits (uniform {pop['uniform_entropy_bits']:.2f})",
    ]
    width = 13
    for lo in range(0, info["moe_layers"], width):
        part = slice(lo, lo + width)
        lines.append("  layer   " + "".join(f"{i:>6}" for i in range(lo, min(lo + width, info["moe_layers"]))))
        lines.append("  share   " + "".join(f"{v:>6.3f}" for v in pop["top_share"][part]))
        lines.append("  entropy " + "".join(f"{v:>6.2f}" for v in pop["entropy_bits"][part]))
    lines.append("provenance  " + _provenance_line(info["provenance"]))
    return "\n".join(lines)


def write_json(info: dict, path: str | os.PathLike) -> None:
    """Write the summary as JSON, atomically (a reader never sees half a file)."""
    atomic_write_bytes(path, (json.dumps(info, indent=1) + "\n").encode())


def _ranges(ids: list[int]) -> str:
    """'1..26' for a contiguous run, else the ids."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(map(str, ids))


def _provenance_line(provenance: dict) -> str:
    """Scalar entries as key=value; lists and objects only by their length."""
    parts = []
    for key, value in provenance.items():
        if isinstance(value, (list, dict)):
            parts.append(f"{key}: {len(value)} entries")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts) or "none recorded"
