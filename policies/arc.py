"""Adaptive Replacement Cache (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST'03).

Two LRU lists of resident keys, T1 (seen once recently) and T2 (seen at least twice), and two ghost lists of
evicted keys, B1 and B2; a target size p for T1 moves up on a B1 ghost hit and down on a B2 ghost hit, so the cache
leans towards recency or frequency as the stream asks. Written from the paper's pseudo-code (cases I–IV and REPLACE):
p is real-valued and moves by max(1, |B2|/|B1|) as in the paper (libCacheSim's ARC.c rounds the ratio down); on our
test streams the hits equal libCacheSim's at every size. Departure for the GPU: REPLACE takes the least recently
used key of the list it chose that is not `protected` (an expert of the current layer step); when every resident
key of that list is protected, it takes the other list's. A victim goes to its list's ghost as usual. Sizes are
counted in keys, so ARC works from one slot up.
"""

from __future__ import annotations

from collections import OrderedDict

from simulator.cache_policy import CachePolicy


class ARCCache(CachePolicy):
    name = "arc"
    compiled = "policies.compiled.arc:CompiledARC"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._t1: OrderedDict[int, None] = OrderedDict()  # resident, seen once since entering; LRU first
        self._t2: OrderedDict[int, None] = OrderedDict()  # resident, seen again; LRU first
        self._b1: OrderedDict[int, None] = OrderedDict()  # ghosts evicted from T1; LRU first
        self._b2: OrderedDict[int, None] = OrderedDict()  # ghosts evicted from T2; LRU first
        self._p = 0.0  # target size of T1
        self._ghost_hit: OrderedDict[int, None] | None = None  # the ghost list the admitted key came from
        self._t1_full = False  # case IV with T1 = the whole cache: its LRU key leaves without a ghost
        self.resident: dict[int, None] = {}  # T1 ∪ T2

    def hit(self, key):
        if key in self._t1:
            del self._t1[key]
        else:
            del self._t2[key]
        self._t2[key] = None

    def admit(self, key, protected):
        """The paper's cases II–IV: adapt p on a ghost hit, trim the ghosts, then REPLACE (evict) and insert."""
        c = self.capacity
        self._ghost_hit = None
        self._t1_full = False
        if key in self._b1:
            self._p = min(float(c), self._p + max(1.0, len(self._b2) / len(self._b1)))
            del self._b1[key]
            self._ghost_hit = self._b1
        elif key in self._b2:
            self._p = max(0.0, self._p - max(1.0, len(self._b1) / len(self._b2)))
            del self._b2[key]
            self._ghost_hit = self._b2
        elif len(self.resident) >= c:  # case IV, full cache: keep |T1| + |B1| <= c and the directory <= 2c
            if len(self._t1) + len(self._b1) >= c:
                if self._b1:
                    self._b1.popitem(last=False)
                else:
                    self._t1_full = True
            elif len(self._t1) + len(self._t2) + len(self._b1) + len(self._b2) >= 2 * c:
                self._b2.popitem(last=False)
        try:
            return super().admit(key, protected)
        finally:
            self._ghost_hit = None
            self._t1_full = False

    def insert(self, key):
        (self._t2 if self._ghost_hit is not None else self._t1)[key] = None
        self.resident[key] = None

    def evict(self, protected):
        """REPLACE: from T1 if it is over its target p (or at it, for a key coming back from B2), else from T2."""
        if self._t1_full:
            self._t1_full = False
            key = self._pop_lru(self._t1, protected)
            if key is not None:
                del self.resident[key]
                return key
        t1 = len(self._t1)
        from_t1 = t1 > 0 and (t1 > self._p or (self._ghost_hit is self._b2 and t1 == self._p))
        lists = [(self._t1, self._b1), (self._t2, self._b2)]
        for lst, ghost in lists if from_t1 else lists[::-1]:
            key = self._pop_lru(lst, protected)
            if key is not None:
                ghost[key] = None
                del self.resident[key]
                return key
        raise RuntimeError("every resident expert is protected")

    @staticmethod
    def _pop_lru(lst, protected):
        for key in lst:
            if key not in protected:
                del lst[key]
                return key
        return None
