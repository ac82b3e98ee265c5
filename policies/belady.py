"""Belady's MIN: evict the resident expert whose next use is farthest in the future (an offline optimum).

Like libCacheSim's `Belady` it always admits the missed expert, so it bounds every policy that does the same (all
of ours): the GPU needs a missed expert resident to compute it. The future comes from `prepare()`, the exact key
stream this instance will see; hits and admissions arrive in that order, so a counter tells where we are.
"""

import heapq

import numpy as np

from simulator.cache_policy import CachePolicy

NEVER = np.iinfo(np.int64).max


def next_use_positions(keys: np.ndarray) -> np.ndarray:
    """For each position i, the next position j > i with keys[j] == keys[i], or NEVER."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    nxt = np.full(len(keys), NEVER, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


class BeladyCache(CachePolicy):
    name = "belady"
    compiled = "policies.compiled.belady:CompiledBelady"
    stack_curve = "belady"
    offline = True

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.resident: dict[int, int] = {}  # key -> position of its next use
        self._heap: list[tuple[int, int]] = []  # (-next use, key); stale entries skipped lazily
        self._next_use = np.empty(0, dtype=np.int64)
        self._position = 0

    def prepare(self, keys, step_size):
        self._next_use = next_use_positions(keys).tolist()
        self._position = 0

    def _use(self, key):
        nxt = self._next_use[self._position]
        self._position += 1
        self.resident[key] = nxt
        heapq.heappush(self._heap, (-nxt, key))
        if len(self._heap) > 8 * self.capacity + 64:
            self._heap = [(-n, k) for k, n in self.resident.items()]
            heapq.heapify(self._heap)

    hit = _use
    insert = _use

    def evict(self, protected):
        skipped = []
        while self._heap:
            neg_next, key = heapq.heappop(self._heap)
            if self.resident.get(key) != -neg_next:
                continue  # stale: the key was used again or evicted since
            if key in protected:
                skipped.append((neg_next, key))
                continue
            del self.resident[key]
            for entry in skipped:
                heapq.heappush(self._heap, entry)
            return key
        raise RuntimeError("every resident expert is protected")
