"""Least Recently Used: evict the expert whose last use is oldest (mixtral-offloading, MoE-Beyond's baseline)."""

from collections import OrderedDict

from simulator.cache_policy import CachePolicy


class LRUCache(CachePolicy):
    name = "lru"
    compiled = "policies.compiled.recency:CompiledLRU"
    stack_curve = "lru"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.resident: OrderedDict[int, None] = OrderedDict()  # oldest use first

    def hit(self, key):
        self.resident.move_to_end(key)

    def insert(self, key):
        self.resident[key] = None

    def evict(self, protected):
        for key in self.resident:
            if key not in protected:
                del self.resident[key]
                return key
        raise RuntimeError("every resident expert is protected")
