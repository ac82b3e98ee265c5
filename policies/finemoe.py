"""FineMoE's expert cache (Yu et al., "fMoE: Fine-Grained Expert Offloading for Large Mixture-of-Experts Serving",
arXiv 2502.05370, EuroSys'26 as FineMoE): evict the resident expert with the smallest probability × visit count.

As REFERENCE.md §3 summarises it (only the paper's abstract was at hand here). FineMoE takes the probability from its
"expert map" search — the gate-probability trajectory of similar past iterations — which a replay of recorded routing
does not have; we use the latest gate weight the router gave the expert instead, passed in through `observe_gate`
before each `hit`/`admit` of a routed expert (the replay does so for classes with `uses_gate_weights = True`). Weights
are taken as the trace stores them (renormalised or not, per model family). A key never observed gets
`1 / top_k`: on a trace without weights every expert has the same probability and the rule is LFU on visits since
loading, ties to the least recently used. The visit count starts at 1 when the expert is loaded and is forgotten on
eviction. Keys of `protected` (the current layer step's experts) are skipped; the next smallest score goes instead.
"""

from __future__ import annotations

import heapq
from typing import ClassVar

from simulator.cache_policy import CachePolicy


class FineMoECache(CachePolicy):
    name = "finemoe"
    uses_gate_weights: ClassVar[bool] = True
    """The replay calls `observe_gate(key, weight)` for each routed expert, before `hit` or `admit`."""

    def __init__(self, capacity: int, top_k: int = 1):
        super().__init__(capacity)
        self.default_probability = 1.0 / top_k
        self.resident: dict[int, int] = {}  # key -> visits since loaded
        self._probability: dict[int, float] = {}  # key -> latest gate weight
        self._clock = 0
        self._entry: dict[int, tuple[float, int]] = {}  # resident key -> (score, last use): its live heap entry
        self._heap: list[tuple[float, int, int]] = []  # (score, last use, key); entries not in _entry are stale

    def observe_gate(self, key: int, weight: float) -> None:
        """The router's gate weight for `key` in the current step (its probability from now on)."""
        self._probability[key] = float(weight)
        if key in self.resident:
            self._push(key, self._entry[key][1])

    def hit(self, key):
        self.resident[key] += 1
        self._use(key)

    def insert(self, key):
        self.resident[key] = 1
        self._use(key)

    def evict(self, protected):
        skipped = []
        while self._heap:
            score, last_use, key = heapq.heappop(self._heap)
            if self._entry.get(key) != (score, last_use):
                continue
            if key in protected:
                skipped.append((score, last_use, key))
                continue
            del self.resident[key], self._entry[key]
            for entry in skipped:
                heapq.heappush(self._heap, entry)
            return key
        raise RuntimeError("every resident expert is protected")

    def _use(self, key):
        self._clock += 1
        self._push(key, self._clock)

    def _push(self, key, last_use):
        entry = (self._probability.get(key, self.default_probability) * self.resident[key], last_use)
        self._entry[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        if len(self._heap) > 8 * self.capacity + 64:
            self._heap = [(*e, k) for k, e in self._entry.items()]
            heapq.heapify(self._heap)
