"""Least Frequently Used: evict the expert with the fewest uses since it was loaded; ties go to the least recent.

Counts are kept while an expert is resident and forgotten on eviction, as in libCacheSim's LFU (the In-depth
Analysis paper's proposal). Without ageing, LFU pins yesterday's experts on MoE routing (REFERENCE.md §4).
"""

from collections import OrderedDict

from simulator.cache_policy import CachePolicy


class LFUCache(CachePolicy):
    name = "lfu"
    compiled = "policies.compiled.lfu:CompiledLFU"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.resident: dict[int, int] = {}  # key -> use count
        # count -> keys with that count, least recently used first (a use moves a key to the end of the next bucket)
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._min_count = 0

    def hit(self, key):
        count = self.resident[key]
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min_count == count:
                self._min_count = count + 1
        self.resident[key] = count + 1
        self._buckets.setdefault(count + 1, OrderedDict())[key] = None

    def insert(self, key):
        self.resident[key] = 1
        self._buckets.setdefault(1, OrderedDict())[key] = None
        self._min_count = 1

    def evict(self, protected):
        for count in self._counts_ascending():
            bucket = self._buckets[count]
            for key in bucket:
                if key not in protected:
                    del bucket[key]
                    del self.resident[key]
                    if not bucket:
                        del self._buckets[count]
                        if count == self._min_count:
                            self._min_count = min(self._buckets, default=0)
                    return key
        raise RuntimeError("every resident expert is protected")

    def _counts_ascending(self):
        """The smallest count first without sorting; the rest only when protection skips all of it."""
        yield self._min_count
        yield from sorted(c for c in self._buckets if c != self._min_count)
