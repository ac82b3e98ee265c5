"""Doubly linked lists over a key space, one per policy instance, in arrays numba can compile.

List i of `nxt`/`prev` ([instances, keyspace + 1]) is circular through its sentinel, index `keyspace`: nxt[i, S] is
the oldest key, prev[i, S] the newest. This is the array form of the `OrderedDict` the Python classes keep in use
order: append = insert at the end, `move_to_end` = unlink then append, iteration = walking nxt from the sentinel.
"""

from __future__ import annotations

import numba
import numpy as np


def empty_lists(instances: int, keyspace: int) -> tuple[np.ndarray, np.ndarray]:
    """`instances` empty lists: every sentinel points at itself."""
    nxt = np.full((instances, keyspace + 1), keyspace, dtype=np.int64)
    prev = np.full((instances, keyspace + 1), keyspace, dtype=np.int64)
    return nxt, prev


@numba.njit(cache=True)
def append(nxt, prev, i, key):
    sentinel = nxt.shape[1] - 1
    last = prev[i, sentinel]
    nxt[i, last] = key
    prev[i, key] = last
    nxt[i, key] = sentinel
    prev[i, sentinel] = key


@numba.njit(cache=True)
def unlink(nxt, prev, i, key):
    before, after = prev[i, key], nxt[i, key]
    nxt[i, before] = after
    prev[i, after] = before


@numba.njit(cache=True)
def in_step(step, key):
    """Whether `key` is one of a layer step's keys (the keys an admission must not evict)."""
    for j in range(step.shape[0]):
        if step[j] == key:
            return True
    return False


@numba.njit(cache=True)
def first_unprotected(nxt, i, step):
    """The oldest key of list i that is not in `step`; the sentinel if there is none."""
    sentinel = nxt.shape[1] - 1
    key = nxt[i, sentinel]
    while key != sentinel and in_step(step, key):
        key = nxt[i, key]
    return key
