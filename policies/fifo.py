"""First In, First Out: evict the expert loaded longest ago; a hit changes nothing."""

from collections import OrderedDict

from policies.base import CachePolicy


class FIFOCache(CachePolicy):
    name = "fifo"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.resident: OrderedDict[int, None] = OrderedDict()  # oldest insertion first

    def hit(self, key):
        pass

    def insert(self, key):
        self.resident[key] = None

    def evict(self, protected):
        for key in self.resident:
            if key not in protected:
                del self.resident[key]
                return key
        raise RuntimeError("every resident expert is protected")
