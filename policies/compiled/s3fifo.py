"""S3-FIFO's twin (policies/s3fifo.py): a small FIFO S for new keys, a main FIFO M, a ghost FIFO G of ids dropped
from S, a 2-bit use counter per resident key, libCacheSim's choice of queue and warm-up rule, and S3FIFOCache's
passing over protected keys.

Why it is exact: S, M and G are disjoint (a key found in G leaves it before it is admitted), so they are three
tagged linked lists (arc.py's `tagged_lists`, oldest first) and each OrderedDict operation has its list counterpart;
"the oldest unprotected key" is `oldest_unprotected`, rescanned from the oldest each time as `_oldest` does. The
sizes of S, M and G and the promotion threshold are read from each policy instance.

The helpers are inlined into the loop (`inline="always"`): left as calls, passing them the state arrays made
the loop about half as fast.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import (
    NOWHERE, move, oldest, oldest_unprotected, overfull_order, row_buffers, step_keys, tagged_lists
)
from policies.s3fifo import MAX_USES
from simulator.compiled_policy import CompiledPolicy

SMALL, MAIN, GHOST = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _evict_small(nxt, prev, where, length, uses, threshold, ghost_size, i, step):
    """S3FIFOCache._evict_small: the victim, or -1 if S runs out of unprotected keys."""
    while True:
        key = oldest_unprotected(nxt, where, i, SMALL, step)
        if key < 0:
            return -1
        if uses[i, key] >= threshold[i]:
            uses[i, key] = 0
            move(nxt, prev, where, length, i, key, MAIN)
            continue
        if ghost_size[i] > 0:
            move(nxt, prev, where, length, i, key, GHOST)
            if length[i, GHOST] > ghost_size[i]:
                move(nxt, prev, where, length, i, oldest(nxt, where, i, GHOST), NOWHERE)
        else:
            move(nxt, prev, where, length, i, key, NOWHERE)
        return key


@numba.njit(cache=True, inline="always")
def _evict_main(nxt, prev, where, length, uses, i, step):
    """S3FIFOCache._evict_main: the victim, or -1 without an unprotected key in M."""
    while True:
        key = oldest_unprotected(nxt, where, i, MAIN, step)
        if key < 0:
            return -1
        if uses[i, key] > 0:
            uses[i, key] -= 1
            move(nxt, prev, where, length, i, key, MAIN)
            continue
        move(nxt, prev, where, length, i, key, NOWHERE)
        return key


@numba.njit(cache=True, inline="always")
def _evict(nxt, prev, where, length, uses, evicted_before, main_size, threshold, ghost_size, i, step):
    """S3FIFOCache.evict: the victim, or -1 when every resident is protected."""
    evicted_before[i] = True
    if length[i, MAIN] > main_size[i] or oldest_unprotected(nxt, where, i, SMALL, step) < 0:
        key = _evict_main(nxt, prev, where, length, uses, i, step)
        if key >= 0:
            return key
    key = _evict_small(nxt, prev, where, length, uses, threshold, ghost_size, i, step)
    if key < 0:
        key = _evict_main(nxt, prev, where, length, uses, i, step)
    return key


@numba.njit(cache=True)
def _judge(nxt, prev, where, length, uses, evicted_before, capacity, small_size, main_size, threshold, ghost_size,
           instance, offset, layer, experts, hits):
    width = experts.shape[1]
    step, order, ordered, before = row_buffers(width)
    for r in range(experts.shape[0]):
        i, n_keys = step_keys(instance, offset, layer, experts, r, step)
        overfull = n_keys > capacity[i]
        if overfull:  # ExpertCache._access_overfull: the hits first, then the misses, none protected
            for j in range(width):
                before[j] = step[j] >= 0 and (where[i, step[j]] == SMALL or where[i, step[j]] == MAIN)
            overfull_order(step, before, order, ordered)
        for t in range(width):
            j = order[t] if overfull else t
            key = ordered[t] if overfull else step[t]
            if key < 0:
                continue
            held = where[i, key]
            if held == SMALL or held == MAIN:
                hits[r, j] = True
                uses[i, key] = min(uses[i, key] + 1, MAX_USES)
                continue
            from_ghost = held == GHOST
            if from_ghost:
                move(nxt, prev, where, length, i, key, NOWHERE)
            while length[i, SMALL] + length[i, MAIN] >= capacity[i]:
                if _evict(nxt, prev, where, length, uses, evicted_before, main_size, threshold, ghost_size, i,
                          step) < 0:
                    return r
            uses[i, key] = 0
            warm_up_overflow = not evicted_before[i] and length[i, SMALL] >= small_size[i]
            move(nxt, prev, where, length, i, key, MAIN if from_ghost or warm_up_overflow else SMALL)
    return -1


class CompiledS3FIFO(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        self.nxt, self.prev, self.where, self.length = tagged_lists(3, instances, keyspace)
        self.uses = np.zeros((instances, keyspace), dtype=np.int64)
        self.evicted_before = np.zeros(instances, dtype=np.bool_)
        self.small_size = np.array([p._small_size for p in policies], dtype=np.int64)
        self.main_size = np.array([p._main_size for p in policies], dtype=np.int64)
        self.threshold = np.array([p._threshold for p in policies], dtype=np.int64)
        self.ghost_size = np.array([p._ghost_size for p in policies], dtype=np.int64)

    def judge(self, layer, experts, hits):
        return _judge(self.nxt, self.prev, self.where, self.length, self.uses, self.evicted_before, self.capacity,
               self.small_size, self.main_size, self.threshold, self.ghost_size, self.instance, self.offset,
               layer, experts, hits)
