"""First In, First Out: evict the expert loaded longest ago; a hit changes nothing.

The same insertion-ordered structure as LRU, minus LRU's move to the back on a hit.
"""

from policies.lru import LRUCache


class FIFOCache(LRUCache):
    name = "fifo"
    compiled = "policies.compiled.recency:CompiledFIFO"

    def hit(self, key):
        pass
