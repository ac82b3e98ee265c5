"""SIEVE (Zhang et al., "SIEVE is Simpler than LRU: an Efficient Turn-Key Eviction Algorithm for Web Caches", NSDI'24).

One FIFO queue, newest at the head, and one visited bit per key. A hit only sets the bit. To evict, a hand moves
from where it last stopped (the tail, the oldest key, at first) towards the head, clearing visited bits, and evicts
the first key whose bit is clear; it then rests on the next newer key and wraps to the tail after passing the head.
New keys enter at the head, unvisited. Written from the paper's description; it evicts what libCacheSim's Sieve.c
evicts. Departure for the GPU: the hand skips keys of `protected` (the current layer step's experts) without clearing
their bit and without evicting them — they are in use this very step, so the sweep treats them as not yet reached
and looks at them again next time round.
"""

from __future__ import annotations

from simulator.cache_policy import CachePolicy


class SIEVECache(CachePolicy):
    name = "sieve"
    compiled = "policies.compiled.sieve:CompiledSIEVE"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.resident: dict[int, bool] = {}  # key -> visited bit
        # a doubly linked queue over keys: _newer[k] is the next key towards the head, _older[k] towards the tail
        self._newer: dict[int, int | None] = {}
        self._older: dict[int, int | None] = {}
        self._head: int | None = None  # newest
        self._tail: int | None = None  # oldest
        self._hand: int | None = None  # next key the hand looks at; None = start from the tail

    def hit(self, key):
        self.resident[key] = True

    def insert(self, key):
        self.resident[key] = False
        self._older[key] = self._head
        self._newer[key] = None
        if self._head is not None:
            self._newer[self._head] = key
        self._head = key
        if self._tail is None:
            self._tail = key

    def evict(self, protected):
        visited = self.resident
        key = self._tail if self._hand is None else self._hand
        # Two laps are enough: the first clears every unprotected bit, the second finds one of those keys clear.
        for _ in range(2 * (len(visited) + 1)):
            if key is None:
                key = self._tail
            if key in protected:
                key = self._newer[key]
            elif visited[key]:
                visited[key] = False
                key = self._newer[key]
            else:
                self._hand = self._newer[key]
                self._unlink(key)
                return key
        raise RuntimeError("every resident expert is protected")

    def _unlink(self, key):
        newer, older = self._newer.pop(key), self._older.pop(key)
        del self.resident[key]
        if newer is None:
            self._head = older
        else:
            self._older[newer] = older
        if older is None:
            self._tail = newer
        else:
            self._newer[older] = newer
