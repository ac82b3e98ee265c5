"""The replay's record of prefetches: which are on their way, which have landed and wait to be used, and what became
of each one issued (`PrefetchCounters`: useful, late, wasted, unused at the end).

A prefetch request (the prefetcher's (layer, expert) pairs, in priority order) skips what is resident or already on
its way; the rest go on the link that ends in GPU memory, behind every demand fetch. With a clock they land when
their last byte arrives and are inserted into the cache at the next router (never evicting the running step's
experts, nor another expert of the same request); without one they land at once. Keys are model-wide
(`MoEModel.key`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from simulator.cache import ExpertCache
from simulator.link import Transfer
from simulator.memory import MemoryHierarchy
from simulator.metrics import LayerCounters, PrefetchCounters


class PrefetchBook:
    def __init__(self, cache: ExpertCache, memory: MemoryHierarchy, per_layer: LayerCounters, timed: bool):
        self.cache = cache
        self.memory = memory
        self.per_layer = per_layer
        self.timed = timed
        self.model = cache.model
        self.counters = PrefetchCounters()
        self.inflight: dict[int, Transfer] = {}
        """Issued, not yet inserted into the cache, by key."""
        self._order: deque[Transfer] = deque()  # the same, in issue order (= arrival order)
        self.unused: set[int] = set()
        """Prefetched, in the cache, not yet used."""
        self._requested: set[int] = set()  # the latest request: protected from the request's other prefetches
        cache.track_evictions = True

    def issue(self, requests: Iterable[tuple[int, int]], ready_s: float, step_layer: int, step_experts: list[int]) -> float:
        """Queue the prefetcher's requests (priority order), ready at `ready_s`; without a clock they land at once.
        Returns the compute stream's time to issue them (each link's `issue_s`, as for demand fetches)."""
        issue_s = 0.0
        cache, key_of = self.cache, self.model.key
        requests = list(requests)
        cache.mark_prefetch_candidates(requests)
        self._requested = {key_of(layer, expert) for layer, expert in requests}
        nbytes = self.model.bytes_per_expert
        for layer, expert in requests:
            key = key_of(layer, expert)
            if key in self.inflight or cache.is_resident(layer, expert):
                continue
            self.counters.issued += 1
            if self.timed:
                transfer, cost_s = self.memory.prefetch(layer, expert, key, nbytes, ready_s)
                issue_s += cost_s
                self.inflight[key] = transfer
                self._order.append(transfer)
            else:
                self.memory.in_dram(layer, expert)
                self.counters.bytes += nbytes
                self._insert(key, step_layer, step_experts)
        return issue_s

    def land(self, now: float, step_layer: int, step_experts: list[int]) -> None:
        """Insert every prefetch that has arrived by `now`, in arrival order."""
        self.memory.advance(now)
        order, inflight = self._order, self.inflight
        while order:
            transfer = order[0]
            if inflight.get(transfer.key) is not transfer:
                order.popleft()  # promoted to a demand fetch meanwhile
                continue
            if transfer.end_s is None or transfer.end_s > now or transfer.end_s == math.inf:
                return
            order.popleft()
            del inflight[transfer.key]
            self._insert(transfer.key, step_layer, step_experts)

    def claim(self, layer: int, expert: int, now: float) -> tuple[float, bool] | None:
        """A demand at `now` for an expert whose prefetch is on its way (a *late* prefetch): the demand waits for it.
        Returns (arrival, whether it still had to start and so goes as a demand fetch), or None if no prefetch of the
        expert is on its way."""
        transfer = self.inflight.pop(self.model.key(layer, expert), None)
        if transfer is None:
            return None
        self.counters.late += 1
        self.per_layer.prefetch_late[layer] += 1
        transfer.link.advance(now)
        queued = transfer.end_s is None
        arrival = transfer.link.promote(transfer, now)
        self.counters.late_wait_s += arrival - now
        return arrival, queued

    def _insert(self, key: int, step_layer: int, step_experts: list[int]) -> None:
        layer, expert = self.model.expert_of(key)
        if self.cache.admit_prefetch(layer, expert, step_layer, step_experts, self._requested):
            self.unused.add(key)
        else:
            self.counters.wasted += 1  # no slot it could take: the bytes crossed for nothing
        if self.cache.evicted:
            self.count_evictions()

    def count_useful(self, layer: int, experts: list[int], misses: list[int]) -> None:
        """The step's hits on prefetched experts not used before."""
        unused = self.unused
        base = self.model.key(layer, 0)
        for expert in experts:
            key = base + expert
            if key in unused and expert not in misses:
                unused.discard(key)
                self.counters.useful += 1
                self.per_layer.prefetch_useful[layer] += 1

    def count_evictions(self) -> None:
        """Prefetched experts evicted before their first use are wasted."""
        evicted = self.cache.evicted
        for key in evicted:
            if key in self.unused:
                self.unused.discard(key)
                self.counters.wasted += 1
        evicted.clear()

    def cache_emptied(self) -> None:
        """The cache was emptied (a reset per sequence): prefetched experts not used before are wasted."""
        self.counters.wasted += len(self.unused)
        self.unused.clear()

    def finish(self) -> PrefetchCounters:
        self.counters.unused_at_end = len(self.unused) + len(self.inflight)
        return self.counters
