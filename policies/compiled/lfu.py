"""LFU's twin (policies/lfu.py): evict the unprotected resident with the fewest uses since it was loaded, among
those the one that reached its count first.

LFUCache keeps one insertion-ordered bucket per count and walks them from the smallest count; that order is the
order of (count, the moment the key entered its bucket), which this twin stores per key and scans for the minimum.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import in_step, overfull_order, row_buffers, step_keys
from simulator.compiled_policy import CompiledPolicy


@numba.njit(cache=True)
def _judge(count, entered, clock, slots, where, size, capacity, instance, offset, layer, experts, hits):
    width = experts.shape[1]
    step, order, ordered, before = row_buffers(width)
    for r in range(experts.shape[0]):
        i, n_keys = step_keys(instance, offset, layer, experts, r, step)
        overfull = n_keys > capacity[i]
        if overfull:  # ExpertCache._access_overfull: the hits first, then the misses, none protected
            for j in range(width):
                before[j] = step[j] >= 0 and where[i, step[j]] >= 0
            overfull_order(step, before, order, ordered)
        for t in range(width):
            j = order[t] if overfull else t
            key = ordered[t] if overfull else step[t]
            if key < 0:
                continue
            clock[i] += 1
            if where[i, key] >= 0:
                hits[r, j] = True
                count[i, key] += 1
                entered[i, key] = clock[i]
                continue
            while size[i] >= capacity[i]:
                best = -1
                for s in range(size[i]):  # the least (count, entered) unprotected: entered is unique per key
                    candidate = slots[i, s]
                    if best >= 0:
                        chosen = slots[i, best]
                        if count[i, candidate] > count[i, chosen] or (
                                count[i, candidate] == count[i, chosen] and entered[i, candidate] > entered[i, chosen]):
                            continue
                    if not in_step(step, candidate):  # tested only for a key that would be the best so far
                        best = s
                if best < 0:
                    return r
                victim = slots[i, best]
                last = size[i] - 1
                slots[i, best] = slots[i, last]
                where[i, slots[i, best]] = best
                where[i, victim] = -1
                size[i] = last
            where[i, key] = size[i]
            slots[i, size[i]] = key
            size[i] += 1
            count[i, key] = 1
            entered[i, key] = clock[i]
    return -1


class CompiledLFU(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        self.count = np.zeros((instances, keyspace), dtype=np.int64)
        self.entered = np.zeros((instances, keyspace), dtype=np.int64)
        self.clock = np.zeros(instances, dtype=np.int64)
        self.slots = np.zeros((instances, int(self.capacity.max())), dtype=np.int64)
        self.where = np.full((instances, keyspace), -1, dtype=np.int64)
        self.size = np.zeros(instances, dtype=np.int64)

    def judge(self, layer, experts, hits):
        return _judge(self.count, self.entered, self.clock, self.slots, self.where, self.size, self.capacity,
               self.instance, self.offset, layer, experts, hits)
