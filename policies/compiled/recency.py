"""Twins of the policies kept in use or load order: LRU, FIFO and Static (policies/lru.py, fifo.py, static.py).

One loop serves all three: an ordered list of evictable residents, moved to the end on a hit (LRU, Static's
staging buffer) or not (FIFO), and a set of pinned keys that never enter the list (Static's most used experts).
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import (
    append, empty_lists, first_unprotected, overfull_order, row_buffers, step_keys, unlink
)
from simulator.compiled_policy import CompiledPolicy


@numba.njit(cache=True)
def _judge(nxt, prev, resident, size, capacity, pinned, move_on_hit, instance, offset, layer, experts, hits):
    sentinel = nxt.shape[1] - 1
    width = experts.shape[1]
    step, order, ordered, before = row_buffers(width)
    for r in range(experts.shape[0]):
        i, n_keys = step_keys(instance, offset, layer, experts, r, step)
        overfull = n_keys > capacity[i]
        if overfull:  # ExpertCache._access_overfull: the hits first, then the misses, none protected
            for j in range(width):
                before[j] = step[j] >= 0 and resident[i, step[j]]
            overfull_order(step, before, order, ordered)
        for t in range(width):
            j = order[t] if overfull else t
            key = ordered[t] if overfull else step[t]
            if key < 0:
                continue
            if resident[i, key]:
                hits[r, j] = True
                if move_on_hit and not pinned[i, key]:
                    unlink(nxt, prev, i, key)
                    append(nxt, prev, i, key)
                continue
            while size[i] >= capacity[i]:
                victim = first_unprotected(nxt, i, step)
                if victim == sentinel:
                    return r
                unlink(nxt, prev, i, victim)
                resident[i, victim] = False
                size[i] -= 1
            resident[i, key] = True
            size[i] += 1
            if not pinned[i, key]:
                append(nxt, prev, i, key)
    return -1


class CompiledRecency(CompiledPolicy):
    move_on_hit = True

    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        self.nxt, self.prev = empty_lists(instances, keyspace)
        self.resident = np.zeros((instances, keyspace), dtype=np.bool_)
        self.pinned = np.zeros((instances, keyspace), dtype=np.bool_)
        self.size = np.zeros(instances, dtype=np.int64)

    def judge(self, layer, experts, hits):
        return _judge(self.nxt, self.prev, self.resident, self.size, self.capacity, self.pinned, self.move_on_hit,
               self.instance, self.offset, layer, experts, hits)


class CompiledLRU(CompiledRecency):
    pass


class CompiledFIFO(CompiledRecency):
    move_on_hit = False


class CompiledStatic(CompiledRecency):
    """Pins each instance's `capacity - step_size` most used keys (ties to the smaller key), as StaticCache does."""

    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        for i, (policy, keys) in enumerate(zip(policies, futures)):
            unique, counts = np.unique(np.asarray(keys, dtype=np.int64), return_counts=True)
            ranked = unique[np.lexsort((unique, -counts))]  # most used first, then the smaller key
            pinned = ranked[: max(policy.capacity - step_size, 0)]
            self.pinned[i, pinned] = True
            if policy.preload:
                self.resident[i, pinned] = True
                self.size[i] = len(pinned)
