"""A trace as a dense grid of expert ids: what the locality measures work on.

`experts[i, l]` holds the top_k ids of token i (tokens of all sequences, in trace order) at MoE layer l; a
(token, layer) the trace does not hold, and an unrecorded slot, are -1 (no access). `starts` are the first token
of each sequence, plus the total at the end. Token positions are dense ranks within a sequence: gaps in the
trace's `token` numbers are not tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from simulator.model import MoEModel
from traces.format import TraceFile, TraceMeta


@dataclass
class RoutingGrid:
    experts: np.ndarray
    """[tokens, L, k] int16, -1 = no access."""
    starts: np.ndarray
    """[sequences + 1] int64: token index where each sequence starts, and the total."""
    meta: TraceMeta

    @property
    def model(self) -> MoEModel:
        return self.meta.model

    @property
    def sequences(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def split(self, max_tokens: int) -> "RoutingGrid":
        """Each sequence cut into consecutive pieces of at most `max_tokens` tokens (each piece a sequence)."""
        starts = [np.arange(a, b, max_tokens) for a, b in zip(self.starts[:-1], self.starts[1:])]
        return RoutingGrid(self.experts, np.append(np.concatenate(starts), self.starts[-1]).astype(np.int64), self.meta)

    def select(self, keep: np.ndarray) -> "RoutingGrid":
        """The sequences where `keep` (a bool per sequence) is true."""
        pieces = [self.experts[a:b] for a, b, k in zip(self.starts[:-1], self.starts[1:], keep) if k]
        lengths = self.lengths[keep]
        return RoutingGrid(np.concatenate(pieces) if pieces else self.experts[:0],
                           np.concatenate(([0], np.cumsum(lengths))).astype(np.int64), self.meta)


def load_grid(path: str | os.PathLike, *, batch_rows: int = 1 << 18) -> RoutingGrid:
    """Read (and validate) a trace into a grid."""
    trace = TraceFile(path)
    L, k = trace.meta.model.moe_layers, trace.meta.model.top_k
    seq_parts, tok_parts, lay_parts, exp_parts = [], [], [], []
    for chunk in trace.chunks(batch_rows=batch_rows):
        seq_parts.append(chunk.sequence)
        tok_parts.append(chunk.token)
        lay_parts.append(chunk.layer)
        exp_parts.append(chunk.experts)
    if not seq_parts or sum(map(len, seq_parts)) == 0:
        return RoutingGrid(np.zeros((0, L, k), dtype=np.int16), np.zeros(1, dtype=np.int64), trace.meta)
    seq, tok = np.concatenate(seq_parts), np.concatenate(tok_parts)
    layer, experts = np.concatenate(lay_parts), np.concatenate(exp_parts)
    new_token = np.ones(len(seq), dtype=bool)
    new_token[1:] = (seq[1:] != seq[:-1]) | (tok[1:] != tok[:-1])
    token_index = np.cumsum(new_token) - 1
    grid = np.full((int(token_index[-1]) + 1, L, k), -1, dtype=np.int16)
    grid[token_index, layer] = experts
    token_seq = seq[new_token]
    new_seq = np.ones(len(token_seq), dtype=bool)
    new_seq[1:] = token_seq[1:] != token_seq[:-1]
    starts = np.append(np.flatnonzero(new_seq), len(token_seq)).astype(np.int64)
    return RoutingGrid(grid, starts, trace.meta)
