"""S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23).

A small FIFO S (10% of the slots) takes new keys, a main FIFO M (the rest) keeps keys that proved themselves, and a
ghost FIFO G remembers keys recently dropped from S. Each resident key has a 2-bit use counter. Evicting from S: the
oldest key moves to M if it was used at least `move_to_main_threshold` times while in S (counter reset to 0), and
the next oldest is looked at, until one that was not leaves the cache and its id enters G. Evicting from M: the
oldest key with a non-zero counter goes back to M's head with its counter decremented; the first with counter 0
leaves. A missed key found in G enters M, any other enters S. We evict from M when M is over its share or S has
nothing to give, else from S — as libCacheSim's S3FIFO.c (2024) does, including its warm-up rule: before the first
eviction, new keys that find S full go to M. With G as large as libCacheSim's, hits equal libCacheSim's exactly.
Departures, so that it works at the per-layer expert regime of a few slots: S has max(1, ⌊10% of capacity⌋) slots
(libCacheSim's S is ⌊10%⌋: it aborts below 10 slots and, since it refuses a key as large as S, caches nothing below
20); G holds as many ids as M has slots (libCacheSim: ⌊90% of capacity⌋; `ghost_size` sets it). The threshold
defaults to 2, libCacheSim's default and our reading of the paper's "freq > 1". Keys of `protected` (the current
layer step's experts) are passed over untouched — neither moved, nor decremented, nor evicted — and the next key of
the same queue is taken; when a queue has only protected keys, the other queue is used.
"""

from __future__ import annotations

from collections import OrderedDict

from simulator.cache_policy import CachePolicy

MAX_USES = 3  # a 2-bit counter


class S3FIFOCache(CachePolicy):
    name = "s3fifo"
    compiled = "policies.compiled.s3fifo:CompiledS3FIFO"

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
        if len(self._main) > self._main_size or _oldest(self._small, protected) is None:
            key = self._evict_main(protected)
            if key is not None:
                return key
        key = self._evict_small(protected)
        if key is None:  # S promoted all it had to M, or holds only protected keys
            key = self._evict_main(protected)
        if key is None:
            raise RuntimeError("every resident expert is protected")
        return key

    def _evict_small(self, protected):
        """Promote S's oldest keys while they earned it; evict the first that did not (into G). None if S runs out."""
        uses = self.resident
        while (key := _oldest(self._small, protected)) is not None:
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
        return None

    def _evict_main(self, protected):
        """Reinsert M's oldest keys, spending a use each, until one has none left: evict it. None without a candidate."""
        uses = self.resident
        while (key := _oldest(self._main, protected)) is not None:
            if uses[key] > 0:
                uses[key] -= 1
                self._main.move_to_end(key)
                continue
            del self._main[key], uses[key]
            return key
        return None


def _oldest(queue, protected):
    for key in queue:
        if key not in protected:
            return key
    return None
