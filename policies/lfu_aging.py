"""LFU with ageing: evict the fewest uses, all counts halved every `period` accesses; ties go to the least recent.

Plain LFU collapses on MoE routing because counts never fade: yesterday's experts pin the cache (REFERENCE.md §4:
LFU hit .039 against LRU .265 on the DeepSeek-V2-Lite stream). Halving every count at fixed intervals is TinyLFU's
"reset" ageing (Einziger et al., ACM TOS 2017), applied here to the counts of resident keys only: a key's count
starts at 1 when it is loaded and is forgotten on eviction, as in our `lfu`. `period` defaults to 8 × capacity
accesses (hits and loads seen by this instance); a halving costs O(capacity · log capacity), so O(log capacity / 8)
per access amortised. Our own design, not a published system's. Keys of `protected` are skipped and the next
candidate in (count, recency) order is taken.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from simulator.cache_policy import CachePolicy


class CountBuckets:
    """Keys grouped by an integer count; within a count, the least recently (re)counted key first.

    `counts` maps each key to its count and doubles as a policy's `resident` container.
    """

    def __init__(self):
        self.counts: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}

    def set(self, key: int, count: int) -> None:
        """Give `key` this count, as the most recent key of it."""
        if key in self.counts:
            self._leave(key)
        self.counts[key] = count
        self._buckets.setdefault(count, OrderedDict())[key] = None

    def remove(self, key: int) -> None:
        self._leave(key)
        del self.counts[key]

    def in_order(self, highest_first: bool = False) -> Iterator[int]:
        """Keys by count (lowest first unless `highest_first`), least recent first within a count; stop early."""
        for count in sorted(self._buckets, reverse=highest_first):
            yield from self._buckets[count]

    def _leave(self, key):
        count = self.counts[key]
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]


class LFUAgingCache(CachePolicy):
    name = "lfu-aging"

    def __init__(self, capacity: int, period: int | None = None):
        super().__init__(capacity)
        self.period = 8 * capacity if period is None else period
        if self.period < 1:
            raise ValueError(f"period must be a positive number of accesses, got {period}")
        self._order = CountBuckets()
        self.resident = self._order.counts
        self._last_use: dict[int, int] = {}
        self._clock = 0

    def hit(self, key):
        self._order.set(key, self.resident[key] + 1)
        self._tick(key)

    def insert(self, key):
        self._order.set(key, 1)
        self._tick(key)

    def evict(self, protected):
        for key in self._order.in_order():
            if key not in protected:
                self._order.remove(key)
                del self._last_use[key]
                return key
        raise RuntimeError("every resident expert is protected")

    def _tick(self, key):
        self._clock += 1
        self._last_use[key] = self._clock
        if self._clock % self.period == 0:
            self._halve()

    def _halve(self):
        """Halve every count (rounding down), re-entering keys least recent first so that ties keep recency order."""
        for key in sorted(self.resident, key=self._last_use.__getitem__):
            self._order.set(key, self.resident[key] // 2)
