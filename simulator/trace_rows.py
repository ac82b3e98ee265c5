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
