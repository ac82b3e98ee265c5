"""SCH(m), the Segment Cache best Hit rate, exactly as moe-lrc computes it (`calc_fsf`, src/41_sch_calc.py of
ljcleo/moe-lrc), for every cache size in one pass.

The definition that code implements, for one stream (a sequence at one layer, or a whole sequence over (layer,
expert) keys) and a cache of C keys: at token i every key of the token is judged against the cache before anything
changes (a never-seen key is a hit while fewer than C distinct keys have been seen: the cold-start credit). Then
for each key x of the token in router order, x's use is stamped and, if x is not resident, x is inserted and, while
the cache holds more than C keys, the resident key *other than x* of lowest priority is evicted. A key's priority
is (its uses in tokens i .. i+m-1, counted from i+1 once the key has been processed at token i; then its last-use
stamp). The key being inserted is never its own victim, so a key with no future use can push out one that has.

That rule is a stack algorithm (Mattson et al., 1970): the cache of C keys is always the top C keys of one stack,
so one pass gives the hit count at every C. On a use of x at stack position p, x goes to the top and the keys
above p bubble down: walking positions 1 .. p-1, the carried key (the old top first) and the key met there are
compared, the higher priority stays, the lower is carried on and finally lands at p. For every C ≤ p this evicts
exactly the lowest-priority key of the top C other than x, as the definition asks; for C > p the top C keep their
keys. Priorities may change between uses (the window slides), which the argument does not mind: only the
priorities at the moment of each comparison count. moe-lrc's code is the same algorithm with a skip list of
ordered runs; this one walks the stack, which numba makes fast enough (cost: Σ stack positions of the uses).
"""

from __future__ import annotations

import numba
import numpy as np

from traces.locality.grid import RoutingGrid

STAMP_BITS = 32
"""Priority = uses in the window · 2³² + last-use stamp: counts first, stamps (unique per use) break ties."""


@numba.njit(cache=True)
def _rank_histogram(keys, key_space, window, out):
    """Add one stream's judged stack positions to out[key_space]: out[r] counts lookups at stack position r (a hit
    for every C > r); a never-seen key counts at the number of distinct keys seen before it (the cold-start
    credit). keys: [tokens, K] int32 of one stream, -1 = no access."""
    T, K = keys.shape
    shift = np.int64(1) << STAMP_BITS
    priority = np.zeros(key_space, dtype=np.int64)
    position = np.full(key_space, -1, dtype=np.int64)
    stack = np.empty(key_space, dtype=np.int64)
    depth = 0
    clock = np.int64(0)
    for i in range(min(window, T)):
        for j in range(K):
            if keys[i, j] >= 0:
                priority[keys[i, j]] += shift
    for i in range(T):
        seen = depth
        for j in range(K):  # judge every lookup before any update
            x = keys[i, j]
            if x < 0:
                continue
            if position[x] >= 0:
                out[position[x]] += 1
            else:
                out[seen] += 1
                seen += 1
        for j in range(K):  # then update, key by key in router order
            x = keys[i, j]
            if x < 0:
                continue
            p = position[x]
            if p < 0:
                p = depth
                depth += 1
            if p > 0:
                carry = stack[0]
                for r in range(1, p):
                    y = stack[r]
                    if priority[y] < priority[carry]:
                        stack[r] = carry
                        position[carry] = r
                        carry = y
                stack[p] = carry
                position[carry] = p
            stack[0] = x
            position[x] = 0
            clock += 1
            priority[x] = ((priority[x] >> STAMP_BITS) - 1) * shift + clock
        if i + window < T:  # token i+m joins the window
            for j in range(K):
                if keys[i + window, j] >= 0:
                    priority[keys[i + window, j]] += shift


@numba.njit(cache=True)
def _rank_histograms(keys, bounds, key_space, window):
    """[streams, key_space]: `_rank_histogram` of each stream s = keys[bounds[s]:bounds[s+1]]."""
    out = np.zeros((len(bounds) - 1, key_space), dtype=np.int64)
    for s in range(len(bounds) - 1):
        _rank_histogram(keys[bounds[s]:bounds[s + 1]], key_space, window, out[s])
    return out


def hit_curves(keys: np.ndarray, bounds: np.ndarray, key_space: int, window: int) -> np.ndarray:
    """[streams, key_space]: column C-1 holds each stream's SCH(m = window) hits with a cache of C keys."""
    if window < 1:
        raise ValueError("sch needs a window (segment length m) ≥ 1")
    ranks = _rank_histograms(np.ascontiguousarray(keys, dtype=np.int32), np.asarray(bounds, dtype=np.int64),
                             int(key_space), int(window))
    return np.cumsum(ranks, axis=1)


def layer_curves(grid: RoutingGrid, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (sequence, layer) stream: (hits [S, L, E] at C = 1..E, accesses [S, L])."""
    S, L, E = grid.sequences, grid.model.moe_layers, grid.model.experts_per_layer
    # Layer-major rows: stream (l, s) is rows l·N + starts[s] .. l·N + starts[s+1], so streams tile the rows.
    by_layer = grid.experts.transpose(1, 0, 2).reshape(-1, grid.model.top_k)
    N = len(grid.experts)
    bounds = np.append((np.arange(L)[:, None] * N + grid.starts[None, :-1]).ravel(), L * N)
    hits = hit_curves(by_layer, bounds, E, window).reshape(L, S, E).transpose(1, 0, 2)
    accesses = (grid.experts >= 0).sum(axis=2)  # [tokens, L]
    return hits, np.add.reduceat(accesses, grid.starts[:-1], axis=0) if S else np.zeros((0, L), dtype=np.int64)


def model_curves(grid: RoutingGrid, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence over keys layer·E + expert (a token's L·k keys in layer order): (hits [S, L·E], accesses [S])."""
    L, E, k = grid.model.moe_layers, grid.model.experts_per_layer, grid.model.top_k
    ids = grid.experts.astype(np.int32)
    keys = np.where(ids >= 0, ids + (np.arange(L, dtype=np.int32) * E)[None, :, None], -1).reshape(len(ids), L * k)
    hits = hit_curves(keys, grid.starts, L * E, window)
    valid = (keys >= 0).sum(axis=1)
    return hits, np.add.reduceat(valid, grid.starts[:-1]) if grid.sequences else np.zeros(0, dtype=np.int64)

