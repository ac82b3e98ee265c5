"""Belady's twin (policies/belady.py): evict the unprotected resident whose next use is farthest; among keys never
used again, the smallest key (the order in which BeladyCache's heap of (-next use, key) pops them).

Next uses are positions in the instance's own key stream, as BeladyCache.prepare computes them; each instance counts
its accesses to know where it is. Residents are kept in a dense array so that the eviction is a scan of at most
`capacity` keys.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.belady import next_use_positions
from policies.compiled.lists import in_step, step_keys
from simulator.compiled_policy import CompiledPolicy


@numba.njit(cache=True)
def _judge(next_use, starts, position, slots, where, size, capacity, instance, offset, layer, experts, hits):
    step = np.empty(experts.shape[1], dtype=np.int64)
    for r in range(experts.shape[0]):
        i, _ = step_keys(instance, offset, layer, experts, r, step)
        for j in range(step.shape[0]):
            key = step[j]
            if key < 0:
                continue
            upcoming = next_use[starts[i] + position[i]]
            position[i] += 1
            if where[i, key] >= 0:
                hits[r, j] = True
                slots[i, where[i, key], 1] = upcoming
                continue
            while size[i] >= capacity[i]:
                best = -1
                for s in range(size[i]):
                    candidate, candidate_next = slots[i, s, 0], slots[i, s, 1]
                    if in_step(step, candidate):
                        continue
                    if best < 0 or candidate_next > slots[i, best, 1] or (
                            candidate_next == slots[i, best, 1] and candidate < slots[i, best, 0]):
                        best = s
                if best < 0:
                    return r
                victim = slots[i, best, 0]
                last = size[i] - 1
                slots[i, best, 0], slots[i, best, 1] = slots[i, last, 0], slots[i, last, 1]
                where[i, slots[i, best, 0]] = best
                where[i, victim] = -1
                size[i] = last
            where[i, key] = size[i]
            slots[i, size[i], 0], slots[i, size[i], 1] = key, upcoming
            size[i] += 1
    return -1


class CompiledBelady(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        lengths = [len(keys) for keys in futures]
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.next_use = np.concatenate([next_use_positions(keys) for keys in futures])  # NEVER: no next use
        self.position = np.zeros(instances, dtype=np.int64)
        self.slots = np.zeros((instances, int(self.capacity.max()), 2), dtype=np.int64)  # (key, next use)
        self.where = np.full((instances, keyspace), -1, dtype=np.int64)  # key -> its slot, -1 if not resident
        self.size = np.zeros(instances, dtype=np.int64)

    def judge(self, layer, experts, hits):
        return _judge(self.next_use, self.starts, self.position, self.slots, self.where, self.size, self.capacity,
               self.instance, self.offset, layer, experts, hits)
