"""S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23).

A small FIFO S (10% of the slots) takes new keys, a main FIFO M (the rest) keeps keys that proved themselves, and a
ghost FIFO G remembers keys recently dropped from S. Each resident key has a 2-bit use counter. Evicting from S: the
oldest key moves to M if it was used at least `move_to_main_threshold` times while in S (counter reset to 0), else it
leaves the cache and its id enters G. Evicting from M: the oldest key with a non-zero counter goes back to M's head
with its counter decremented; the first with counter 0 leaves. A missed key found in G enters M, any other enters S.
We evict from M when M is over its share or S has nothing to give, else from S — as libCacheSim's S3FIFO.c (2024)
does, including its warm-up rule: before the first eviction, new keys that find S full go to M.
Departures, so that it works at the per-layer expert regime of a few slots: S has max(1, ⌊10% of capacity⌋) slots
(libCacheSim rounds 10% of 2..9 slots down to 0 and then caches nothing); G holds as many ids as M has slots
(libCacheSim: ⌊90% of capacity⌋; pass `ghost_size` to change it). The threshold defaults to 2, libCacheSim's
default and our reading of the paper's "freq > 1". Keys of `protected` (the current layer step's experts) are passed
over untouched — neither moved, nor decremented, nor evicted — and the next key of the same queue is taken; when a
queue has only protected keys, the other queue is used.
"""

from __future__ import annotations

from collections import OrderedDict

from policies.base import CachePolicy

MAX_USES = 3  # a 2-bit counter


class S3FIFOCache(CachePolicy):
    name = "s3fifo"

    def __init__(self, capacity: int, small_ratio: float = 0.1, move_to_main_threshold: int = 2,
                 ghost_size: int | None = None):
        super().__init__(capacity)
        self._small_size = max(1, int(capacity * small_ratio))
        self._main_size = capacity - self._small_size
        self._ghost_size = self._main_size if ghost_size is None else ghost_size
        self._threshold = move_to_main_threshold
        self.resident: dict[int, int] = {}  # key -> uses counter
        self._small: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._main: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._ghost: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._evicted_before = False
        self._from_ghost = False

    def hit(self, key):
        self.resident[key] = min(self.resident[key] + 1, MAX_USES)

    def admit(self, key, protected):
        # Look in G before evicting: the evictions of this admission may push the key out of G.
        self._from_ghost = key in self._ghost
        if self._from_ghost:
            del self._ghost[key]
        try:
            return super().admit(key, protected)
        finally:
            self._from_ghost = False

    def insert(self, key):
        self.resident[key] = 0
        warm_up_overflow = not self._evicted_before and len(self._small) >= self._small_size
        (self._main if self._from_ghost or warm_up_overflow else self._small)[key] = None

    def evict(self, protected):
        self._evicted_before = True
        uses = self.resident
        while True:
            oldest_small = _oldest(self._small, protected)
            oldest_main = _oldest(self._main, protected)
            if oldest_main is not None and (len(self._main) > self._main_size or oldest_small is None):
                key = oldest_main
                if uses[key] > 0:
                    uses[key] -= 1
                    self._main.move_to_end(key)
                    continue
                del self._main[key], uses[key]
                return key
            if oldest_small is None:
                raise RuntimeError("every resident expert is protected")
            key = oldest_small
            del self._small[key]
            if uses[key] >= self._threshold:
                uses[key] = 0
                self._main[key] = None
                continue
            del uses[key]
            if self._ghost_size > 0:
                self._ghost[key] = None
                if len(self._ghost) > self._ghost_size:
                    self._ghost.popitem(last=False)
            return key


def _oldest(queue, protected):
    for key in queue:
        if key not in protected:
            return key
    return None
