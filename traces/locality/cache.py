"""LRU, LFU and Belady hit rates as REFERENCE.md §4 defines them, vectorised over many independent caches.

The convention ("Not All Models Suit Expert Offloading"): each stream (a sequence at one layer, with C = ρ·k, or a
whole sequence over (layer, expert) keys, with C = ρ·L·k) starts with an empty cache. At token i all of the token's
lookups are judged against the cache before any update; a never-seen key counts as a hit while fewer than C
distinct keys have been seen (cold-start credit: the u-th new key of the stream, counted in router order, is a hit
iff u < C). Then every needed key is inserted and, while the cache holds more than C keys, the key of lowest
priority is evicted:

  lru     last use (a token's keys are stamped in router order)
  lfu     uses since the stream started, ties by last use
  belady  next use (sooner is kept), keys never used again by last use

With priorities fixed during the update, inserting keys one by one and evicting the minimum each time keeps exactly
the C keys of highest priority among the old residents and the token's keys: the engine does that in one step per
token. LRU with C ≥ k never evicts a key of the current token, so it is also the LRU of the simulator. SCH, whose
priorities change within a token, is moe-lrc's own stack algorithm (traces/locality/sch.py).

`persist=True` (no reset between sequences, no cold-start credit) gives the per-layer LRU that `moe-sim
cache.scope=layer` replays: the streams are then whole layers.

Streams are packed time-major: block t holds token t of every stream longer than t (streams sorted by length,
longest first), so each step works on a prefix of the state arrays with numpy, and the Python loop runs once per
token position of the longest stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traces.locality.grid import RoutingGrid

POLICIES = ("lru", "lfu", "belady")


@dataclass
class Streams:
    """Independent key streams packed time-major."""

    keys: np.ndarray
    """[Σ lengths, K] int32, -1 = no access; block t = rows offsets[t]:offsets[t+1]."""
    offsets: np.ndarray
    active: np.ndarray
    """[T_max] streams active at step t (a prefix of the length-sorted order)."""
    order: np.ndarray
    """Packed position p holds stream order[p]."""
    key_space: int

    @property
    def count(self) -> int:
        return len(self.order)

    @property
    def steps(self) -> int:
        return len(self.active)

    def block(self, t: int) -> np.ndarray:
        return self.keys[self.offsets[t]:self.offsets[t + 1]]

    def unpack(self, values: np.ndarray) -> np.ndarray:
        """Per-stream values from packed order back to stream order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out


def pack(starts: np.ndarray, lengths: np.ndarray, fetch, key_space: int, width: int) -> Streams:
    """Streams s = tokens starts[s] .. starts[s]+lengths[s]-1; `fetch(token_index, stream)` gives their keys."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    steps = int(sorted_len[0]) if len(sorted_len) else 0
    ends_at = np.bincount(sorted_len, minlength=steps + 1)
    active = len(order) - np.cumsum(ends_at)[:steps]
    offsets = np.concatenate(([0], np.cumsum(active))).astype(np.int64)
    total = int(offsets[-1])
    p_idx = np.repeat(np.arange(len(order)), sorted_len)
    first = np.concatenate(([0], np.cumsum(sorted_len)[:-1]))
    t_idx = np.arange(total) - np.repeat(first, sorted_len)
    keys = np.full((total, width), -1, dtype=np.int32)
    if total:
        keys[offsets[t_idx] + p_idx] = fetch(np.asarray(starts)[order][p_idx] + t_idx, order[p_idx])
    return Streams(keys, offsets, active.astype(np.int64), order, key_space)


def layer_streams(grid: RoutingGrid, *, persist: bool = False) -> Streams:
    """Per-layer streams: (sequence, layer) pairs, stream id = sequence·L + layer; or with `persist` one stream
    per layer over the whole trace."""
    L, E, k = grid.model.moe_layers, grid.model.experts_per_layer, grid.model.top_k
    if persist:
        starts, lengths = np.zeros(L, dtype=np.int64), np.full(L, len(grid.experts))
        return pack(starts, lengths, lambda tok, s: grid.experts[tok, s], E, k)
    S = grid.sequences
    starts = np.repeat(grid.starts[:-1], L)
    lengths = np.repeat(grid.lengths, L)
    return pack(starts, lengths, lambda tok, s: grid.experts[tok, s % L], E, k)


def model_streams(grid: RoutingGrid) -> Streams:
    """One stream per sequence over keys layer·E + expert; a token's L·k keys in layer order."""
    L, E, k = grid.model.moe_layers, grid.model.experts_per_layer, grid.model.top_k
    offset = (np.arange(L, dtype=np.int32) * E)[None, :, None]
    flat = grid.experts

    def fetch(tok, _):
        ids = flat[tok].astype(np.int32)
        return np.where(ids >= 0, ids + offset, -1).reshape(len(tok), L * k)

    return pack(grid.starts[:-1], grid.lengths, fetch, L * E, L * k)


def next_uses(streams: Streams) -> np.ndarray:
    """For each packed access, the access index (t·K + slot) of the stream's next use of the same key, or a value
    past every index where there is none."""
    S, E, K = streams.count, streams.key_space, streams.keys.shape[1]
    never = streams.steps * K + 1
    following = np.full((S, E + 1), never, dtype=np.int64)
    out = np.empty(streams.keys.shape, dtype=np.int64)
    slots = np.arange(K)
    for t in range(streams.steps - 1, -1, -1):
        x = streams.block(t)
        n = len(x)
        xs = np.where(x >= 0, x, E)
        rows = np.arange(n)[:, None]
        out[streams.offsets[t]:streams.offsets[t + 1]] = following[rows, xs]
        following[rows, xs] = t * K + slots
    return out


def hit_counts(streams: Streams, capacity: int, policy: str, *, cold_credit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(hits, accesses) per stream, in stream order, for one policy at one capacity."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {POLICIES}")
    S, E, K, C = streams.count, streams.key_space, streams.keys.shape[1], int(capacity)
    if C < 1:
        raise ValueError(f"capacity {C} < 1")
    # The cache of each stream as C slots of keys (E = empty) and as a membership mask; column E of every [S, E+1]
    # array is the sink for -1 ids and empty slots, never resident and always the first to go.
    slots = np.full((S, C), E, dtype=np.int32)
    resident = np.zeros((S, E + 1), dtype=bool)
    stamp = np.zeros((S, E + 1), dtype=np.int64)
    distinct = np.zeros(S, dtype=np.int64)
    hits = np.zeros(S, dtype=np.int64)
    accesses = np.zeros(S, dtype=np.int64)
    big = np.int64(streams.steps * K + 2)
    slot_stamp = np.arange(1, K + 1, dtype=np.int64)
    if policy == "lfu":
        score = np.zeros((S, E + 1), dtype=np.int64)  # uses since the stream started
    elif policy == "belady":
        upcoming = next_uses(streams)
        never = np.int64(streams.steps * K + 1)
        score = np.zeros((S, E + 1), dtype=np.int64)  # never - next use: sooner is higher

    for t in range(streams.steps):
        x = streams.block(t)
        n = len(x)
        valid = x >= 0
        xs = np.where(valid, x, E)
        rows = np.arange(n)[:, None]
        hit = resident[rows, xs]
        if cold_credit:
            new = valid & (stamp[rows, xs] == 0)
            credit = new & (np.cumsum(new, axis=1) - 1 + distinct[:n, None] < C)
            distinct[:n] += new.sum(axis=1)
            hits[:n] += (hit | credit).sum(axis=1)
        else:
            hits[:n] += hit.sum(axis=1)
        accesses[:n] += valid.sum(axis=1)
        stamp[rows, xs] = t * K + slot_stamp
        if policy == "lfu":
            score[rows, xs] += 1
        elif policy == "belady":
            score[rows, xs] = never - upcoming[streams.offsets[t]:streams.offsets[t + 1]]

        # Keep the C highest priorities among the residents and the token's new keys.
        candidates = np.concatenate((slots[:n], np.where(valid & ~hit, x, E)), axis=1)
        priority = stamp[rows, candidates]
        if policy != "lru":
            priority = score[rows, candidates] * big + priority
        priority[candidates == E] = -1
        keep = np.argpartition(priority, K, axis=1)[:, K:]
        chosen = np.take_along_axis(candidates, keep, axis=1)
        resident[rows, slots[:n]] = False
        resident[rows, chosen] = True
        resident[:n, E] = False
        slots[:n] = chosen
    return streams.unpack(hits), streams.unpack(accesses)


def lru_distances(streams: Streams) -> np.ndarray:
    """LRU stack distance of every packed access: how many distinct keys of the stream were used after this key's
    previous use (a token's keys ordered by router slot), judged before the token's update; -1 for a first use.

    With the convention above, an access hits an LRU cache of C keys iff 0 ≤ distance < C.
    """
    S, E, K = streams.count, streams.key_space, streams.keys.shape[1]
    stamp = np.zeros((S, E + 1), dtype=np.int64)
    out = np.empty(streams.keys.shape, dtype=np.int32)
    slots = np.arange(1, K + 1, dtype=np.int64)
    for t in range(streams.steps):
        x = streams.block(t)
        n = len(x)
        xs = np.where(x >= 0, x, E)
        rows = np.arange(n)[:, None]
        mine = stamp[rows, xs]  # [n, K]
        d = (stamp[:n, None, :E] > mine[:, :, None]).sum(axis=2)
        out[streams.offsets[t]:streams.offsets[t + 1]] = np.where((mine > 0) & (x >= 0), d, -1)
        stamp[rows, xs] = t * K + slots
    return out
