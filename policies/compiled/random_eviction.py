"""Random eviction's twin (policies/random_eviction.py): the same seeded draws, so the same victims.

RandomCache draws `random.Random(seed).randrange(len(keys))` until it lands on an unprotected resident, then moves
the last resident into the victim's place. CPython's randrange(n) is `_randbelow(n)`: k = n.bit_length() bits from
`getrandbits(k)`, drawn again while >= n; for k <= 32, getrandbits(k) is MT19937's next tempered 32-bit output shifted
right by 32 - k. This twin runs that Mersenne Twister itself, from each instance's `_rng.getstate()` (the 624 state
words and the index), so its draws are CPython's bit for bit. Words are held in int64 and masked to 32 bits.
"""

from __future__ import annotations

import numba
import numpy as np

from policies.compiled.lists import in_step, overfull_order, row_buffers, step_keys
from simulator.compiled_policy import CompiledPolicy

_N = 624
_M = 397
_MATRIX_A = 0x9908B0DF
_UPPER = 0x80000000
_LOWER = 0x7FFFFFFF
_MASK = 0xFFFFFFFF


@numba.njit(cache=True)
def _genrand_uint32(mt, index, i):
    """MT19937's next 32-bit output of instance i (CPython's `genrand_uint32`)."""
    if index[i] >= _N:
        for kk in range(_N - _M):
            y = (mt[i, kk] & _UPPER) | (mt[i, kk + 1] & _LOWER)
            mt[i, kk] = mt[i, kk + _M] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
        for kk in range(_N - _M, _N - 1):
            y = (mt[i, kk] & _UPPER) | (mt[i, kk + 1] & _LOWER)
            mt[i, kk] = mt[i, kk + (_M - _N)] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
        y = (mt[i, _N - 1] & _UPPER) | (mt[i, 0] & _LOWER)
        mt[i, _N - 1] = mt[i, _M - 1] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
        index[i] = 0
    y = mt[i, index[i]]
    index[i] += 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    y ^= y >> 18
    return y & _MASK


@numba.njit(cache=True)
def _randbelow(mt, index, i, n):
    """CPython's `Random._randbelow(n)` for 0 < n < 2**32."""
    k = 0
    m = n
    while m:
        k += 1
        m >>= 1
    r = _genrand_uint32(mt, index, i) >> (32 - k)
    while r >= n:
        r = _genrand_uint32(mt, index, i) >> (32 - k)
    return r


@numba.njit(cache=True)
def _judge(mt, index, slots, where, size, capacity, instance, offset, layer, experts, hits):
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
            if where[i, key] >= 0:
                hits[r, j] = True
                continue
            while size[i] >= capacity[i]:
                free = False
                for s in range(size[i]):
                    if not in_step(step, slots[i, s]):
                        free = True
                        break
                if not free:
                    return r
                while True:
                    chosen = _randbelow(mt, index, i, size[i])
                    victim = slots[i, chosen]
                    if not in_step(step, victim):
                        break
                last = size[i] - 1
                moved = slots[i, last]
                if moved != victim:
                    slots[i, chosen] = moved
                    where[i, moved] = chosen
                where[i, victim] = -1
                size[i] = last
            where[i, key] = size[i]
            slots[i, size[i]] = key
            size[i] += 1
    return -1


class CompiledRandom(CompiledPolicy):
    def __init__(self, policies, keyspace, futures, step_size, instance, offset):
        super().__init__(policies, keyspace, futures, step_size, instance, offset)
        instances = len(policies)
        self.mt = np.zeros((instances, _N), dtype=np.int64)
        self.index = np.zeros(instances, dtype=np.int64)
        for i, policy in enumerate(policies):
            _, internal, _ = policy._rng.getstate()
            self.mt[i] = internal[:_N]
            self.index[i] = internal[_N]
        self.slots = np.zeros((instances, int(self.capacity.max())), dtype=np.int64)
        self.where = np.full((instances, keyspace), -1, dtype=np.int64)
        self.size = np.zeros(instances, dtype=np.int64)

    def judge(self, layer, experts, hits):
        return _judge(self.mt, self.index, self.slots, self.where, self.size, self.capacity, self.instance,
               self.offset, layer, experts, hits)
