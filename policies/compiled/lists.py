"""Doubly linked lists over a key space, one per policy instance (or several disjoint ones, tagged), in arrays numba
can compile.

List i of `nxt`/`prev` ([instances, keyspace + 1]) is circular through its sentinel, index `keyspace`: nxt[i, S] is
the oldest key, prev[i, S] the newest. This is the array form of the `OrderedDict` the Python classes keep in use
order: append = insert at the end, `move_to_end` = unlink then append, iteration = walking nxt from the sentinel.

The row helpers (`step_keys`, `overfull_order`, `row_buffers`) give every online twin's judge loop the two rules of
`ExpertCache.access`: a row of any width (padded with -1) whose keys fit its instance's slots is judged key by key
with all its keys protected; a row with more keys than slots (a batched step's U) as `_access_overfull` judges it:
its resident keys are used first, then its misses admitted in order, with no resident key protected.
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


@numba.njit(cache=True, inline="always")
def step_keys(instance, offset, layer, experts, r, step):
    """Fill `step` with the keys of row r's experts (-1 where none was recorded); returns the row's policy
    instance (CompiledPolicy.judge's layout) and how many keys the row has."""
    base = offset[layer[r]]
    count = 0
    for j in range(experts.shape[1]):
        if experts[r, j] >= 0:
            step[j] = base + experts[r, j]
            count += 1
        else:
            step[j] = -1
    return instance[layer[r]], count


@numba.njit(cache=True, inline="always")
def overfull_order(step, before, order, ordered):
    """Set a step with more keys than its cache has slots up as `ExpertCache._access_overfull` judges it: into
    `order`, the positions of the keys resident before the step (`before`), then those of the missed keys, each in
    step order, then the empty positions; into `ordered`, their keys (-1 for the empty ones). Then `step`, the keys an
    admission must not evict, is emptied (all -1): the step protects no resident key, since the misses still to be
    admitted are not resident (a step's keys are distinct) and the hits and earlier misses may be evicted."""
    m = 0
    for j in range(step.shape[0]):
        if before[j]:
            order[m] = j
            m += 1
    for j in range(step.shape[0]):
        if step[j] >= 0 and not before[j]:
            order[m] = j
            m += 1
    for j in range(step.shape[0]):
        if step[j] < 0:
            order[m] = j
            m += 1
    for t in range(step.shape[0]):
        ordered[t] = step[order[t]]
    for j in range(step.shape[0]):
        step[j] = -1


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


# -- several disjoint lists in one pair of link arrays, a tag per key saying which holds it (ARC, S3-FIFO) --------

NOWHERE = -1


def tagged_lists(lists: int, instances: int, keyspace: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`lists` disjoint empty lists per instance, in one pair of link arrays: nxt and prev ([instances, keyspace +
    lists]) as in lists.py, list l circular through its own sentinel, index keyspace + l; the list holding each key
    ([instances, keyspace], NOWHERE = none) and each list's length ([instances, lists])."""
    links = np.concatenate([np.zeros(keyspace, dtype=np.int64), keyspace + np.arange(lists, dtype=np.int64)])
    nxt = np.tile(links, (instances, 1))
    where = np.full((instances, keyspace), NOWHERE, dtype=np.int64)
    return nxt, nxt.copy(), where, np.zeros((instances, lists), dtype=np.int64)


@numba.njit(cache=True, inline="always")
def move(nxt, prev, where, length, i, key, to):
    """Take `key` out of the list holding it (if any) and append it to list `to` (NOWHERE: to none)."""
    held = where[i, key]
    if held != NOWHERE:
        unlink(nxt, prev, i, key)
        length[i, held] -= 1
    if to != NOWHERE:
        sentinel = where.shape[1] + to
        last = prev[i, sentinel]
        nxt[i, last] = key
        prev[i, key] = last
        nxt[i, key] = sentinel
        prev[i, sentinel] = key
        length[i, to] += 1
    where[i, key] = to


@numba.njit(cache=True, inline="always")
def oldest(nxt, where, i, lst):
    """The oldest key of list `lst` (it must not be empty)."""
    return nxt[i, where.shape[1] + lst]


@numba.njit(cache=True, inline="always")
def oldest_unprotected(nxt, where, i, lst, step):
    """The oldest key of list `lst` that is not in `step`; -1 if there is none."""
    sentinel = where.shape[1] + lst
    key = nxt[i, sentinel]
    while key != sentinel and in_step(step, key):
        key = nxt[i, key]
    return key if key != sentinel else -1


@numba.njit(cache=True, inline="always")
def row_buffers(width):
    """A judge loop's scratch arrays for rows of `width` positions: the row's keys (`step_keys`), and for an overfull
    row the positions and keys in `overfull_order` and which keys were resident before the step."""
    return (np.empty(width, dtype=np.int64), np.empty(width, dtype=np.int64), np.empty(width, dtype=np.int64),
            np.zeros(width, dtype=np.bool_))
