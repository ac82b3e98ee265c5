"""ARC's twin (policies/arc.py): the paper's cases I–IV and REPLACE, with ARCCache's departures (REPLACE takes the
oldest unprotected key of the list it chose, else the other list's; the T1-is-the-whole-cache case drops T1's oldest
unprotected key without a ghost).

Why it is exact: ARCCache's four OrderedDicts T1, T2, B1, B2 (oldest first) are disjoint, so they are kept here as
four linked lists with one tag per key saying which list holds it, and every OrderedDict operation has its list
counterpart (append, delete, `popitem(last=False)` = take the oldest). The target p is the same float64 arithmetic
(the list lengths are small ints, so `int / int` and the `t1 == p` test give what Python gives).

The helpers are inlined into the loop (`inline="always"`): left as calls, passing them the state arrays made
the loop about half as fast.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import (
    NOWHERE, move, oldest, oldest_unprotected, overfull_order, row_buffers, step_keys, tagged_lists
)
from simulator.compiled_policy import CompiledPolicy

T1, T2, B1, B2 = 0, 1, 2, 3  # B1 = T1 + 2 and B2 = T2 + 2: a victim's ghost list
@numba.njit(cache=True, inline="always")
def _replace(nxt, prev, where, length, p, i, step, t1_full, ghost):
    """ARCCache.evict: the victim, or -1 when every resident is protected."""
    if t1_full:
        victim = oldest_unprotected(nxt, where, i, T1, step)
        if victim >= 0:
            move(nxt, prev, where, length, i, victim, NOWHERE)
            return victim
    t1 = length[i, T1]
    from_t1 = t1 > 0 and (t1 > p[i] or (ghost == B2 and t1 == p[i]))
    first, second = (T1, T2) if from_t1 else (T2, T1)
    for lst in (first, second):
        victim = oldest_unprotected(nxt, where, i, lst, step)
        if victim >= 0:
            move(nxt, prev, where, length, i, victim, lst + 2)
            return victim
    return -1


@numba.njit(cache=True)
def _judge(nxt, prev, where, length, p, capacity, instance, offset, layer, experts, hits):
    width = experts.shape[1]
    step, order, ordered, before = row_buffers(width)
    for r in range(experts.shape[0]):
        i, n_keys = step_keys(instance, offset, layer, experts, r, step)
        overfull = n_keys > capacity[i]
        if overfull:  # ExpertCache._access_overfull: the hits first, then the misses, none protected
            for j in range(width):
                before[j] = step[j] >= 0 and (where[i, step[j]] == T1 or where[i, step[j]] == T2)
            overfull_order(step, before, order, ordered)
        for t in range(width):
            j = order[t] if overfull else t
            key = ordered[t] if overfull else step[t]
            if key < 0:
                continue
            ghost = where[i, key]  # T1 or T2: resident; B1 or B2: the ghost list it comes back from
            if ghost == T1 or ghost == T2:
                hits[r, j] = True
                move(nxt, prev, where, length, i, key, T2)
                continue
            c = capacity[i]
            t1_full = False
            if ghost == B1:
                p[i] = min(float(c), p[i] + max(1.0, length[i, B2] / length[i, B1]))
                move(nxt, prev, where, length, i, key, NOWHERE)
            elif ghost == B2:
                p[i] = max(0.0, p[i] - max(1.0, length[i, B1] / length[i, B2]))
                move(nxt, prev, where, length, i, key, NOWHERE)
            elif length[i, T1] + length[i, T2] >= c:
                if length[i, T1] + length[i, B1] >= c:
                    if length[i, B1] > 0:
                        move(nxt, prev, where, length, i, oldest(nxt, where, i, B1), NOWHERE)
                    else:
                        t1_full = True
                elif length[i, T1] + length[i, T2] + length[i, B1] + length[i, B2] >= 2 * c:
                    move(nxt, prev, where, length, i, oldest(nxt, where, i, B2), NOWHERE)
            while length[i, T1] + length[i, T2] >= c:
                if _replace(nxt, prev, where, length, p, i, step, t1_full, ghost) < 0:
                    return r
                t1_full = False
            move(nxt, prev, where, length, i, key, T1 if ghost == NOWHERE else T2)
    return -1


class CompiledARC(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        self.nxt, self.prev, self.where, self.length = tagged_lists(4, len(policies), keyspace)
        self.p = np.zeros(len(policies), dtype=np.float64)  # each instance's target size of T1

    def judge(self, layer, experts, hits):
        return _judge(self.nxt, self.prev, self.where, self.length, self.p, self.capacity, self.instance,
               self.offset, layer, experts, hits)
