"""SIEVE's twin (policies/sieve.py): one FIFO queue with a visited bit per key, and a hand that sweeps from the oldest
key towards the newest, clearing bits, passing protected keys untouched, and evicting the first clear one.

Why it is exact: SIEVECache's queue (its `_older`/`_newer` links, head = newest) is the linked list of lists.py read
oldest first, so `_newer[k]` is `nxt[i, k]` and None is the sentinel; the hand is a key or the sentinel (None: start
from the oldest). The sweep is the same loop, bounded by the same number of steps.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import append, empty_lists, in_step, overfull_order, row_buffers, step_keys, unlink
from simulator.compiled_policy import CompiledPolicy


@numba.njit(cache=True)
def _evict(nxt, prev, visited, resident, size, hand, i, step):
    """SIEVECache.evict; False when every resident is protected."""
    sentinel = nxt.shape[1] - 1
    key = hand[i]
    for _ in range(2 * (size[i] + 1)):
        if key == sentinel:
            key = nxt[i, sentinel]
        if in_step(step, key):
            key = nxt[i, key]
        elif visited[i, key]:
            visited[i, key] = False
            key = nxt[i, key]
        else:
            hand[i] = nxt[i, key]
            unlink(nxt, prev, i, key)
            resident[i, key] = False
            size[i] -= 1
            return True
    return False


@numba.njit(cache=True)
def _judge(nxt, prev, visited, resident, size, hand, capacity, instance, offset, layer, experts, hits):
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
                visited[i, key] = True
                continue
            while size[i] >= capacity[i]:
                if not _evict(nxt, prev, visited, resident, size, hand, i, step):
                    return r
            resident[i, key] = True
            visited[i, key] = False
            size[i] += 1
            append(nxt, prev, i, key)
    return -1


class CompiledSIEVE(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        self.nxt, self.prev = empty_lists(instances, keyspace)  # oldest first: the hand's direction
        self.visited = np.zeros((instances, keyspace), dtype=np.bool_)
        self.resident = np.zeros((instances, keyspace), dtype=np.bool_)
        self.size = np.zeros(instances, dtype=np.int64)
        self.hand = np.full(instances, keyspace, dtype=np.int64)  # the sentinel: start from the oldest key

    def judge(self, layer, experts, hits):
        return _judge(self.nxt, self.prev, self.visited, self.resident, self.size, self.hand, self.capacity,
               self.instance, self.offset, layer, experts, hits)
