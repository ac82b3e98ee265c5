"""Static: the most frequently used experts stay pinned (Fiddler's placement), the rest pass through a small buffer.

`capacity - step_size` of the trace's most used keys (counted offline over the whole stream, as Fiddler profiles
popularity ahead of serving) are pinned once loaded and never evicted. Every other expert still has to be on the GPU
to compute, so it goes through `step_size` staging slots, evicted least-recently-used. The cache starts empty: a
pinned expert is loaded on its first use, like any other — unless `preload` is set, in which case the pinned
experts are on the GPU from the start, loaded before serving as Fiddler does (no access, no transfer is counted).
"""

from collections import Counter, OrderedDict

from simulator.cache_policy import CachePolicy


class StaticCache(CachePolicy):
    name = "static"
    compiled = "policies.compiled.recency:CompiledStatic"
    offline = True

    def __init__(self, capacity: int, preload: bool = False):
        super().__init__(capacity)
        self.preload = preload
        self.resident: set[int] = set()
        self._pinned: frozenset[int] = frozenset()
        self._staging: OrderedDict[int, None] = OrderedDict()  # unpinned residents, oldest use first

    def prepare(self, keys, step_size):
        counts = Counter(keys.tolist())
        ranked = sorted(counts, key=lambda key: (-counts[key], key))
        self._pinned = frozenset(ranked[: max(self.capacity - step_size, 0)])
        if self.preload:
            self.resident |= self._pinned

    def hit(self, key):
        if key in self._staging:
            self._staging.move_to_end(key)

    def insert(self, key):
        self.resident.add(key)
        if key not in self._pinned:
            self._staging[key] = None

    def evict(self, protected):
        for key in self._staging:
            if key not in protected:
                del self._staging[key]
                self.resident.discard(key)
                return key
        raise RuntimeError("every unpinned resident expert is protected")
