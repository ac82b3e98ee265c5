"""LIRS's twin (policies/lirs.py): a recency stack S of LIR keys, resident HIR keys and evicted HIR keys (pruned so
that an LIR key is at its bottom), a FIFO Q of the resident HIR keys, warm-up while the LIR set has room, and
LIRSCache's fallback when every key of Q is protected (the bottom-most unprotected LIR key of S leaves).

Why it is exact: S and Q are LIRSCache's two OrderedDicts (bottom / next victim first) as two linked lists of
lists.py, with a flag for membership of S and a state per key (out, resident HIR, LIR) for LIRSCache's `resident`
map; a key is in Q exactly when it is resident HIR, so Q needs no flag of its own. Each hook is the same sequence of
list operations, and both eviction scans walk the lists in the OrderedDicts' order.

The helpers are inlined into the loop (`inline="always"`): left as calls, passing them the state arrays made
the loop about half as fast.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import (
    append, empty_lists, first_unprotected, in_step, overfull_order, row_buffers, step_keys, unlink
)
from simulator.compiled_policy import CompiledPolicy

OUT, HIR, LIR = 0, 1, 2  # a key's state: not resident, resident HIR (in Q), LIR


@numba.njit(cache=True, inline="always")
def _to_stack_top(snxt, sprev, in_stack, i, key):
    """S[key] = None, or S.move_to_end(key) if it is there."""
    if in_stack[i, key]:
        unlink(snxt, sprev, i, key)
    append(snxt, sprev, i, key)
    in_stack[i, key] = True


@numba.njit(cache=True, inline="always")
def _leave_stack(snxt, sprev, in_stack, i, key):
    unlink(snxt, sprev, i, key)
    in_stack[i, key] = False


@numba.njit(cache=True, inline="always")
def _prune(snxt, sprev, in_stack, state, i):
    """Drop HIR entries from the bottom of S until an LIR key is there."""
    sentinel = snxt.shape[1] - 1
    while True:
        bottom = snxt[i, sentinel]
        if bottom == sentinel or state[i, bottom] == LIR:
            return
        _leave_stack(snxt, sprev, in_stack, i, bottom)


@numba.njit(cache=True, inline="always")
def _make_lir(snxt, sprev, qnxt, qprev, in_stack, state, lir_count, lir_size, i, key):
    sentinel = snxt.shape[1] - 1
    state[i, key] = LIR
    lir_count[i] += 1
    while lir_count[i] > lir_size[i]:
        _prune(snxt, sprev, in_stack, state, i)
        bottom = snxt[i, sentinel]
        _leave_stack(snxt, sprev, in_stack, i, bottom)
        state[i, bottom] = HIR
        lir_count[i] -= 1
        append(qnxt, qprev, i, bottom)
    _prune(snxt, sprev, in_stack, state, i)


@numba.njit(cache=True, inline="always")
def _evict(snxt, sprev, qnxt, qprev, in_stack, state, lir_count, size, i, step):
    """LIRSCache.evict; False when every resident is protected."""
    sentinel = snxt.shape[1] - 1
    key = first_unprotected(qnxt, i, step)
    if key != sentinel:
        unlink(qnxt, qprev, i, key)  # stays in S, if it is there, as non-resident HIR
        state[i, key] = OUT
        size[i] -= 1
        return True
    key = snxt[i, sentinel]
    while key != sentinel:
        if state[i, key] == LIR and not in_step(step, key):
            _leave_stack(snxt, sprev, in_stack, i, key)
            state[i, key] = OUT
            size[i] -= 1
            lir_count[i] -= 1
            _prune(snxt, sprev, in_stack, state, i)
            return True
        key = snxt[i, key]
    return False


@numba.njit(cache=True)
def _judge(snxt, sprev, qnxt, qprev, in_stack, state, lir_count, lir_size, size, capacity, instance, offset, layer,
           experts, hits):
    width = experts.shape[1]
    step, order, ordered, before = row_buffers(width)
    for r in range(experts.shape[0]):
        i, n_keys = step_keys(instance, offset, layer, experts, r, step)
        overfull = n_keys > capacity[i]
        if overfull:  # ExpertCache._access_overfull: the hits first, then the misses, none protected
            for j in range(width):
                before[j] = step[j] >= 0 and state[i, step[j]] != OUT
            overfull_order(step, before, order, ordered)
        for t in range(width):
            j = order[t] if overfull else t
            key = ordered[t] if overfull else step[t]
            if key < 0:
                continue
            if state[i, key] != OUT:  # LIRSCache.hit
                hits[r, j] = True
                if state[i, key] == LIR:
                    _to_stack_top(snxt, sprev, in_stack, i, key)
                    _prune(snxt, sprev, in_stack, state, i)
                elif in_stack[i, key]:
                    unlink(qnxt, qprev, i, key)
                    _to_stack_top(snxt, sprev, in_stack, i, key)
                    _make_lir(snxt, sprev, qnxt, qprev, in_stack, state, lir_count, lir_size, i, key)
                else:
                    _to_stack_top(snxt, sprev, in_stack, i, key)
                    unlink(qnxt, qprev, i, key)
                    append(qnxt, qprev, i, key)
                continue
            while size[i] >= capacity[i]:
                if not _evict(snxt, sprev, qnxt, qprev, in_stack, state, lir_count, size, i, step):
                    return r
            size[i] += 1  # LIRSCache.insert
            if in_stack[i, key]:
                _to_stack_top(snxt, sprev, in_stack, i, key)
                _make_lir(snxt, sprev, qnxt, qprev, in_stack, state, lir_count, lir_size, i, key)
            elif lir_count[i] < lir_size[i]:
                state[i, key] = LIR
                lir_count[i] += 1
                _to_stack_top(snxt, sprev, in_stack, i, key)
            else:
                state[i, key] = HIR
                _to_stack_top(snxt, sprev, in_stack, i, key)
                append(qnxt, qprev, i, key)
    return -1


class CompiledLIRS(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        self.snxt, self.sprev = empty_lists(instances, keyspace)  # S, bottom first
        self.qnxt, self.qprev = empty_lists(instances, keyspace)  # Q, next victim first
        self.in_stack = np.zeros((instances, keyspace), dtype=np.bool_)
        self.state = np.zeros((instances, keyspace), dtype=np.int8)  # OUT, HIR or LIR
        self.lir_count = np.zeros(instances, dtype=np.int64)
        self.lir_size = np.array([p._lir_size for p in policies], dtype=np.int64)
        self.size = np.zeros(instances, dtype=np.int64)

    def judge(self, layer, experts, hits):
        return _judge(self.snxt, self.sprev, self.qnxt, self.qprev, self.in_stack, self.state, self.lir_count,
               self.lir_size, self.size, self.capacity, self.instance, self.offset, layer, experts, hits)
