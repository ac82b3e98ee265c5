"""LIRS (Jiang & Zhang, "LIRS: An Efficient Low Inter-reference Recency Set Replacement Policy", SIGMETRICS'02).

Keys with a short reuse distance (LIR, up to capacity − L_hirs of them) stay; the other resident keys (HIR, L_hirs =
max(1, ⌊1% of capacity⌋) slots, as in the paper and libCacheSim) sit in a FIFO list Q and are the ones evicted. A
recency stack S holds LIR keys, resident HIR keys and recently evicted (non-resident) HIR keys, and is pruned so that
its bottom is always an LIR key. An HIR key used again while still in S has a reuse distance shorter than the oldest
LIR key's, so it becomes LIR and the bottom LIR key becomes HIR (to the end of Q). Until the LIR set is full, every
new key is LIR. Written from the paper's description; S is not bounded (the paper's form: at most one entry per
expert of the layer or model, a few thousand at most), where libCacheSim's LIRS.c caps it at 2 × capacity entries.
Departure for the GPU: the victim is the first key of Q that is not `protected` (the current layer step's
experts); if every key of Q is protected, the bottom-most unprotected LIR key of S leaves the cache (and S), and the
next new key takes its LIR place. libCacheSim's LIRS.c gives different hits, from two departures of its own that we
traced by porting it: a hit on a resident HIR key that is no longer in S demotes the bottom LIR key (and, with Q
full, evicts Q's front on a hit), and its S is capped; without those two, the port's hits equal ours exactly.
"""

from __future__ import annotations

from collections import OrderedDict

from simulator.cache_policy import CachePolicy


class LIRSCache(CachePolicy):
    name = "lirs"
    compiled = "policies.compiled.lirs:CompiledLIRS"

    def __init__(self, capacity: int, hir_ratio: float = 0.01):
        super().__init__(capacity)
        self._lir_size = capacity - max(1, int(capacity * hir_ratio))
        self.resident: dict[int, bool] = {}  # key -> is LIR
        self._lir_count = 0
        self._stack: OrderedDict[int, None] = OrderedDict()  # S, bottom (oldest) first
        self._queue: OrderedDict[int, None] = OrderedDict()  # Q: resident HIR keys, next victim first

    def hit(self, key):
        if self.resident[key]:
            self._stack.move_to_end(key)
            self._prune()
        elif key in self._stack:
            del self._queue[key]
            self._stack.move_to_end(key)
            self._make_lir(key)
        else:
            self._stack[key] = None
            self._queue.move_to_end(key)

    def insert(self, key):
        if key in self._stack:  # a non-resident HIR key whose reuse distance beats the oldest LIR key's
            self._stack.move_to_end(key)
            self._make_lir(key)
        elif self._lir_count < self._lir_size:  # warm-up
            self.resident[key] = True
            self._lir_count += 1
            self._stack[key] = None
        else:
            self.resident[key] = False
            self._stack[key] = None
            self._queue[key] = None

    def evict(self, protected):
        for key in self._queue:
            if key not in protected:
                del self._queue[key], self.resident[key]  # stays in S, if it is there, as non-resident HIR
                return key
        for key in self._stack:
            if self.resident.get(key) and key not in protected:
                del self._stack[key], self.resident[key]
                self._lir_count -= 1
                self._prune()
                return key
        raise RuntimeError("every resident expert is protected")

    def _make_lir(self, key):
        self.resident[key] = True
        self._lir_count += 1
        while self._lir_count > self._lir_size:
            self._prune()
            bottom, _ = self._stack.popitem(last=False)
            self.resident[bottom] = False
            self._lir_count -= 1
            self._queue[bottom] = None
        self._prune()

    def _prune(self):
        """Drop HIR entries from the bottom of S until an LIR key is there."""
        stack, resident = self._stack, self.resident
        while stack:
            bottom = next(iter(stack))
            if resident.get(bottom):
                return
            del stack[bottom]
