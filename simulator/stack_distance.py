"""Exact hit rates at every cache size in one pass: stack distances (Mattson et al., 1970) under the replay's step rule.

Why: a capacity sweep of one policy replays the trace once per size; for a stack algorithm one pass gives them all.

The step rule (README "Accounting semantics"): a layer step's experts are all judged resident or not before any is
loaded, and a miss never evicts an expert of its own step. A policy is a stack algorithm when one ordering of the
keys seen so far (the stack) makes the cache of every size `c` the stack's top `c` keys. An access then hits with
`c` slots iff its depth in the stack *before the step* is at most `c`: counting accesses by that depth gives the
hits at every size. Both policies below are stack algorithms for every `c >= top_k` (a step never has more experts
than that):

- **LRU**: the stack is the keys by last use, the step's keys counting as used in router order. The step's keys end
  on top; below them the other keys keep their order, so the top `c` are the `c` most recently used, which is what
  LRU holds when each miss evicts the least recently used key not of the step. The depth of a key is one more than
  the number of distinct keys used since its last use: the number of marked use times after its own, with one mark
  per key at its last use. The marks are bits of 64-bit words, counted per word and per block of words, so a depth
  is a popcount plus at most 2**BLOCK_SHIFT word counts and (times / 512) block counts, and a use changes three
  (a Fenwick tree renumbered by sorting, which this replaced, took 1.8x as long on the benchmark's global stream).
  One stack per MoE layer (scope `layer`) or one over the model-wide keys (scope `global`). Times are renumbered
  0..keys-1 whenever the clock reaches the end, so memory is bounded by the key space, not the trace.
- **Belady/OPT** (policies/belady.py): evict the resident whose next use is farthest, ties among keys never used again
  to the smallest key, never a key of the step. Between steps every key's next use is fixed by the trace, whatever
  the size, so it is a priority order independent of `c` (Mattson's condition), and the step rule keeps inclusion:
  with `A` = the size-`c` cache minus the step's keys `S` and `B` the same at `c + 1` (`B` = `A` plus at most one
  key), the new caches are `S` plus the `c - |S|` best of `A`, and `S` plus the `c + 1 - |S|` best of `B`; a key among
  the best `c - |S|` of `A` has fewer than `c - |S|` better keys in `A`, so fewer than `c + 1 - |S|` in `B`. The
  stack update (Mattson's priority stack, extended to several keys a step): put `S` on top and walk the old stack
  down to the deepest key of `S` (the whole stack if a key of `S` is new), carrying the keys not of `S` in a pool of
  at most |S| + 1 and emitting the pool's best whenever the top `c + 1 - |S|` non-step keys of the top `c + 1` are
  due. Cost: the sum of the steps' deepest depths, plus the key space for each first use. The future comes from
  `next_uses`, so an OPT curve, like a Belady replay, needs the whole key stream in memory (numpy arrays, 16 bytes
  an access slot).

The other shipped policies are not stack algorithms under the step rule (one more slot can hit less: README "Why
only these two", with a counterexample per policy in tests/test_curve.py), so they have no curve.

Depth 0 stands for a first use (a miss at every size). For LRU the formula also gives values for c < top_k (which
`ExpertCache` refuses); policies/layer_sizing.py reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np

from simulator.cache import SCOPES
from simulator.errors import InputError
from simulator.model import MoEModel
from simulator.trace_rows import RowTally, TraceChunk

POLICIES = ("lru", "belady")
NEVER = np.iinfo(np.int64).max
"""Next use of an access whose key is not used again."""


BLOCK_SHIFT = 3
"""Use times are counted per 64-bit word and per block of 2**BLOCK_SHIFT words (the fastest of 4, 8, 16 and 32
words on the benchmark's streams)."""


@numba.njit(cache=True, inline="always")
def _popcount(x):
    """Set bits of a uint64 (SWAR: numba has no popcount intrinsic)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, inline="always")
def _mark(bits, words, blocks, i, t, value):
    """Set (value 1) or clear (value -1) use time t of instance i."""
    bit = np.uint64(1) << np.uint64(t & 63)
    if value > 0:
        bits[i, t >> 6] |= bit
    else:
        bits[i, t >> 6] &= ~bit
    words[i, t >> 6] += value
    blocks[i, t >> (6 + BLOCK_SHIFT)] += value


@numba.njit(cache=True)
def _renumber(bits, words, blocks, last, owner, clock, i):
    """Give instance i's used keys the times 0..n-1 in their order of last use, so the clock can go on: a walk over
    the marked times, O(times)."""
    n = 0
    for t in range(clock[i]):
        if bits[i, t >> 6] & (np.uint64(1) << np.uint64(t & 63)):
            key = owner[i, t]
            owner[i, n] = key
            last[i, key] = n
            n += 1
    bits[i, :] = 0
    words[i, :] = 0
    blocks[i, :] = 0
    for t in range(n):
        _mark(bits, words, blocks, i, t, 1)
    clock[i] = n


@numba.njit(cache=True)
def _lru_chunk(layers, experts, instance, offset, last, owner, bits, words, blocks, clock, live, histogram):
    """Add the LRU depths of these rows to histogram[layer, depth]. last[i, key]: the time of the key's last use in
    instance i (-1 = never), owner[i, t] the key used at time t; bits[i] marks the times that are some key's last
    use, words[i] and blocks[i] count the marks per word and per block; live[i]: keys used."""
    k = experts.shape[1]
    times = bits.shape[1] * 64
    depth = np.empty(k, dtype=np.int64)
    for r in range(experts.shape[0]):
        layer = layers[r]
        i, base = instance[layer], offset[layer]
        newest = clock[i] - 1
        for j in range(k):  # the whole step is judged before any key moves
            e = experts[r, j]
            if e < 0:
                depth[j] = -1
                continue
            t = last[i, base + e]
            if t < 0:
                depth[j] = 0
                continue
            # the key itself and the keys used after it: marks at times >= t
            w = t >> 6
            d = _popcount(bits[i, w] >> np.uint64(t & 63))
            block = w >> BLOCK_SHIFT
            for x in range(w + 1, min(((block + 1) << BLOCK_SHIFT) - 1, newest >> 6) + 1):
                d += words[i, x]
            for x in range(block + 1, (newest >> (6 + BLOCK_SHIFT)) + 1):
                d += blocks[i, x]
            depth[j] = d
        for j in range(k):
            if depth[j] < 0:
                continue
            histogram[layer, depth[j]] += 1
            if clock[i] == times:
                _renumber(bits, words, blocks, last, owner, clock, i)
            key = base + experts[r, j]
            if last[i, key] >= 0:
                _mark(bits, words, blocks, i, last[i, key], -1)
            else:
                live[i] += 1
            t = clock[i]
            _mark(bits, words, blocks, i, t, 1)
            last[i, key] = t
            owner[i, t] = key
            clock[i] = t + 1


@numba.njit(cache=True)
def _better(a, b, priority, i):
    """Belady keeps a over b: a's next use is sooner, or both are never used again and a is the larger key."""
    return priority[i, a] < priority[i, b] or (priority[i, a] == priority[i, b] and a > b)


@numba.njit(cache=True)
def _best(pool, pooled, priority, i):
    """Index of the pool's best key (-1 for an empty pool)."""
    best = -1
    for p in range(pooled):
        if best < 0 or _better(pool[p], pool[best], priority, i):
            best = p
    return best


@numba.njit(cache=True)
def _opt_chunk(layers, experts, next_use, instance, offset, stack, where, size, priority, histogram):
    """Add the OPT depths of these rows to histogram[layer, depth] and update the priority stacks. stack[i, :size[i]]:
    instance i's keys, top first; where[i, key]: the key's position (-1 = never used); priority[i, key]: its next
    use."""
    k = experts.shape[1]
    step = np.empty(k, dtype=np.int64)
    upcoming = np.empty(k, dtype=np.int64)
    pool = np.empty(k + 1, dtype=np.int64)
    in_step = np.zeros(stack.shape[1], dtype=np.bool_)
    for r in range(experts.shape[0]):
        layer = layers[r]
        i, base = instance[layer], offset[layer]
        s = 0
        deepest = 0
        new = 0
        for j in range(k):
            if experts[r, j] < 0:
                continue
            key = base + experts[r, j]
            depth = where[i, key] + 1
            histogram[layer, depth] += 1
            if depth == 0:
                new += 1
            deepest = max(deepest, depth)
            step[s] = key
            upcoming[s] = next_use[r, j]
            in_step[key] = True
            s += 1
        if s == 0:
            continue
        # Walk the old stack down to its deepest step key (all of it after a first use). The top s positions will
        # be the step's; each position c >= s then takes the best of the key found there and the keys carried from
        # above (the pool), so a key better than the pool's best stays where it is.
        walk = size[i] if new else deepest
        pooled = 0
        best = -1
        for c in range(walk):
            y = stack[i, c]
            if c < s:
                if not in_step[y]:
                    pool[pooled] = y
                    pooled += 1
                    best = _best(pool, pooled, priority, i)
            elif in_step[y] or (pooled and _better(pool[best], y, priority, i)):  # under a step key: pooled > 0
                stack[i, c] = pool[best]
                where[i, pool[best]] = c
                if in_step[y]:
                    pooled -= 1
                    pool[best] = pool[pooled]
                else:
                    pool[best] = y
                best = _best(pool, pooled, priority, i)
        # after a first use the stack grows: what is still carried goes below, best first
        c = max(s, walk)
        while pooled:
            best = _best(pool, pooled, priority, i)
            stack[i, c] = pool[best]
            where[i, pool[best]] = c
            pooled -= 1
            pool[best] = pool[pooled]
            c += 1
        size[i] += new
        for j in range(s):
            stack[i, j] = step[j]
            where[i, step[j]] = j
            priority[i, step[j]] = upcoming[j]
            in_step[step[j]] = False


@numba.njit(cache=True)
def _next_uses(layers, experts, experts_per_layer, keyspace):
    """For each access slot r·k + j, the slot of the next access to the same (layer, expert), or NEVER."""
    rows, k = experts.shape
    out = np.full((rows, k), NEVER, dtype=np.int64)
    seen = np.full(keyspace, NEVER, dtype=np.int64)
    for r in range(rows - 1, -1, -1):
        for j in range(k - 1, -1, -1):
            if experts[r, j] >= 0:
                key = layers[r] * experts_per_layer + experts[r, j]
                out[r, j] = seen[key]
                seen[key] = r * k + j
    return out


class StackDistances:
    """Depth histograms of one policy's stacks, fed trace rows in replay order, a chunk at a time (state carries on).

    `histogram[layer, d]` counts the layer's accesses found `d` deep (0: first use); depths run to the experts per
    layer (scope `layer`) or all experts (scope `global`).
    """

    def __init__(self, model: MoEModel, scope: str):
        if scope not in SCOPES:
            raise InputError(f"scope: unknown scope {scope!r} (known: {', '.join(SCOPES)})")
        self.model, self.scope = model, scope
        layers = model.moe_layers
        if scope == "layer":
            self.instances, self.keyspace = layers, model.experts_per_layer
            self.instance = np.arange(layers, dtype=np.int64)
            self.offset = np.zeros(layers, dtype=np.int64)
        else:
            self.instances, self.keyspace = 1, model.total_experts
            self.instance = np.zeros(layers, dtype=np.int64)
            self.offset = np.arange(layers, dtype=np.int64) * model.experts_per_layer
        self.histogram = np.zeros((layers, self.keyspace + 1), dtype=np.int64)

    def hits(self) -> np.ndarray:
        """hits[layer, c]: the layer's hits with c slots (per layer, or in all for scope global), c = 0..keyspace."""
        return np.concatenate([np.zeros((len(self.histogram), 1), dtype=np.int64),
                               np.cumsum(self.histogram[:, 1:], axis=1)], axis=1)

    def accesses(self) -> np.ndarray:
        return self.histogram.sum(axis=1)

    @staticmethod
    def _rows(layers, experts) -> tuple[np.ndarray, np.ndarray]:
        """int64 arrays, so that each kernel compiles once."""
        layers = np.ascontiguousarray(layers, dtype=np.int64)
        return layers, np.ascontiguousarray(experts, dtype=np.int64).reshape(len(layers), -1)


class LRUStack(StackDistances):
    def __init__(self, model: MoEModel, scope: str):
        super().__init__(model, scope)
        block = 64 << BLOCK_SHIFT
        times = -(-max(4 * self.keyspace, 64) // block) * block  # renumbered every >= 3·keyspace uses: O(1) amortised
        self._last = np.full((self.instances, self.keyspace), -1, dtype=np.int64)
        self._owner = np.zeros((self.instances, times), dtype=np.int64)
        self._bits = np.zeros((self.instances, times // 64), dtype=np.uint64)
        self._words = np.zeros((self.instances, times // 64), dtype=np.int64)
        self._blocks = np.zeros((self.instances, times // block), dtype=np.int64)
        self._clock = np.zeros(self.instances, dtype=np.int64)
        self._live = np.zeros(self.instances, dtype=np.int64)

    def add(self, layers: np.ndarray, experts: np.ndarray) -> None:
        """The next rows in replay order: layers [rows], experts [rows, k] (-1 = not recorded)."""
        layers, experts = self._rows(layers, experts)
        _lru_chunk(layers, experts, self.instance, self.offset, self._last, self._owner, self._bits, self._words,
                   self._blocks, self._clock, self._live, self.histogram)


class OPTStack(StackDistances):
    def __init__(self, model: MoEModel, scope: str):
        super().__init__(model, scope)
        self._stack = np.zeros((self.instances, self.keyspace), dtype=np.int64)
        self._where = np.full((self.instances, self.keyspace), -1, dtype=np.int64)
        self._size = np.zeros(self.instances, dtype=np.int64)
        self._priority = np.full((self.instances, self.keyspace), NEVER, dtype=np.int64)

    def add(self, layers: np.ndarray, experts: np.ndarray, next_use: np.ndarray) -> None:
        """The next rows in replay order, with each access's next use (`next_uses`, any numbering that increases
        along the stream, NEVER for none)."""
        layers, experts = self._rows(layers, experts)
        _opt_chunk(layers, experts, np.ascontiguousarray(next_use, dtype=np.int64), self.instance, self.offset,
                   self._stack, self._where, self._size, self._priority, self.histogram)


def next_uses(layers: np.ndarray, experts: np.ndarray, model: MoEModel) -> np.ndarray:
    """[rows, k]: for each access, the flat slot (row · k + j) of the next access to the same expert of the same
    layer, NEVER if none: the same order in a per-layer and a global cache."""
    layers, experts = StackDistances._rows(layers, experts)
    return _next_uses(layers, experts, model.experts_per_layer, model.total_experts)


@dataclass(frozen=True)
class HitCurve:
    """One policy's exact hits at every cache size, from `hit_curve`."""

    policy: str
    scope: str
    accesses: np.ndarray
    """Per MoE layer."""
    hits: np.ndarray
    """hits[layer, c], c = 0 .. experts per layer (scope layer) or all experts (scope global)."""
    top_k: int
    tokens: int
    sequences: int
    layer_steps: int
    """The trace's counts, which a replay read from the curve reports (simulator.replay)."""

    @property
    def capacities(self) -> list[int]:
        """The sizes a cache can have: top_k .. the key space."""
        return list(range(self.top_k, self.hits.shape[1]))

    def hit_rates(self) -> list[float]:
        total = int(self.accesses.sum())
        return [int(h) / total if total else 0.0 for h in self.hits.sum(axis=0)[self.top_k:]]

    def to_dict(self) -> dict:
        return {"policy": self.policy, "scope": self.scope, "capacities": self.capacities,
                "hit_rate": self.hit_rates()}


def hit_curve(chunks: Iterable[TraceChunk], model: MoEModel, scope: str, policy: str = "lru") -> HitCurve:
    """The exact hit-rate-only replay's hits at every size for `policy` (LRU streams the chunks; Belady needs the
    future, so it gathers the rows first, as a Belady replay does)."""
    if policy not in POLICIES:
        raise InputError(f"policy: {policy!r} has no one-pass curve (known: {', '.join(POLICIES)})")
    tally = RowTally()
    if policy == "lru":
        stack = LRUStack(model, scope)
        for chunk in chunks:
            tally.add(chunk)
            stack.add(chunk.layer, chunk.experts)
    else:
        stack = OPTStack(model, scope)
        parts = []
        for chunk in chunks:
            tally.add(chunk)
            parts.append((chunk.layer, chunk.experts))
        if parts:
            layers = np.concatenate([p[0] for p in parts])
            experts = np.concatenate([p[1] for p in parts])
            stack.add(layers, experts, next_uses(layers, experts, model))
    return HitCurve(policy, scope, stack.accesses(), stack.hits(), model.top_k, tally.tokens, tally.sequences,
                    tally.layer_steps)
