"""The trace rows the engine consumes: chunks of consecutive rows as numpy arrays, grouped here into tokens.

Reading files is the business of `traces/` (which produces `TraceChunk`s); the engine sees only these arrays, so it
knows no file format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

PHASES = ("prefill", "decode")


@dataclass
class TraceChunk:
    """A run of consecutive trace rows as numpy arrays (the unit the replay consumes)."""

    sequence: np.ndarray
    token: np.ndarray
    layer: np.ndarray
    experts: np.ndarray
    """[rows, top_k] int16, -1 where no expert was recorded."""
    weights: np.ndarray | None = None
    token_id: np.ndarray | None = None
    phase: np.ndarray | None = None
    """Codes into PHASES (0 prefill, 1 decode), or None."""
    predictions: dict[str, list[list[int]]] = field(default_factory=dict)
    candidates: np.ndarray | None = None
    """[rows, top_k + r] int16: the router's top-(k + r) experts, the routed ones first (as `experts`), then the
    runners-up by score; -1 where none was recorded. None if not traced."""
    candidate_scores: np.ndarray | None = None
    """[rows, top_k + r] float32: each candidate's router score (traces.format says which score)."""

    def __len__(self) -> int:
        return len(self.layer)


@dataclass
class Token:
    """The rows of one token, in layer order, with unrecorded experts (-1) dropped."""

    sequence: int
    position: int
    token_id: int | None
    """Vocabulary id (a MoLE replay keys its table rows by it), from the token's first row; None if not traced."""
    layers: list[int]
    experts: list[list[int]]
    weights: list[list[float]] | None
    predictions: dict[str, list]
    candidates: list[list[int]] | None = None
    """Per row, the router's candidates (the routed experts first, -1 dropped), for cache-aware routing."""
    candidate_scores: list[list[float]] | None = None


def tokens(chunks: Iterable[TraceChunk], progress: Callable[[int], None] | None = None) -> Iterator[Token]:
    """Group trace rows into tokens (a token's rows are consecutive), carrying a token across chunk boundaries.
    `progress(rows)` is called after each chunk."""
    current: Token | None = None
    for chunk in chunks:
        names = list(chunk.predictions)
        columns = [chunk.predictions[n] for n in names]
        with_weights = chunk.weights is not None
        weights = chunk.weights.tolist() if with_weights else [None] * len(chunk)
        token_ids = chunk.token_id.tolist() if chunk.token_id is not None else [None] * len(chunk)
        with_candidates = chunk.candidates is not None
        if with_candidates:  # carried like a prediction column, then moved to the token's own fields
            columns += [chunk.candidates.tolist(), chunk.candidate_scores.tolist()]
        rows = zip(chunk.sequence.tolist(), chunk.token.tolist(), token_ids, chunk.layer.tolist(), chunk.experts.tolist(), weights, *columns)
        for sequence, position, token_id, layer, experts, gate, *predicted in rows:
            if -1 in experts:
                if with_weights:
                    gate = [w for e, w in zip(experts, gate) if e >= 0]
                experts = [e for e in experts if e >= 0]
            if current is None or position != current.position or sequence != current.sequence:
                if current is not None:
                    yield current
                current = Token(sequence, position, token_id, [], [], [] if with_weights else None, {n: [] for n in names})
                if with_candidates:
                    current.candidates, current.candidate_scores = [], []
            if with_candidates:
                scores = predicted.pop()
                ids = predicted.pop()
                if -1 in ids:
                    scores = [s for c, s in zip(ids, scores) if c >= 0]
                    ids = [c for c in ids if c >= 0]
                current.candidates.append(ids)
                current.candidate_scores.append(scores)
            current.layers.append(layer)
            current.experts.append(experts)
            if with_weights:
                current.weights.append(gate)
            for name, value in zip(names, predicted):
                current.predictions[name].append(value)
        if progress is not None:
            progress(len(chunk))
    if current is not None:
        yield current


class RowTally:
    """The tokens, sequences and layer steps of chunks fed in order (a token or sequence may span chunks), counted
    with numpy: what a replay that never groups rows into `Token`s reports."""

    def __init__(self):
        self.tokens = self.sequences = self.layer_steps = 0
        self._last: tuple[int, int] | None = None  # (sequence, token) of the previous chunk's last row

    def add(self, chunk: TraceChunk) -> None:
        if not len(chunk):
            return
        sequence, token = chunk.sequence, chunk.token
        new_token = np.ones(len(chunk), dtype=np.bool_)
        new_sequence = np.ones(len(chunk), dtype=np.bool_)
        new_token[1:] = (sequence[1:] != sequence[:-1]) | (token[1:] != token[:-1])
        new_sequence[1:] = sequence[1:] != sequence[:-1]
        if self._last is not None:
            new_token[0] = (sequence[0], token[0]) != self._last
            new_sequence[0] = sequence[0] != self._last[0]
        self._last = (sequence[-1], token[-1])
        self.tokens += int(new_token.sum())
        self.sequences += int(new_sequence.sum())
        self.layer_steps += len(chunk)
