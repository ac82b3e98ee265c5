"""MoE-Infinity's expert cache (Xue et al., arXiv 2401.14361; code github.com/TorchMoE/MoE-Infinity, now EfficientMoE).

Read from the code (only the paper's abstract was at hand): `ArcherTaskPool::RemoveCachedSparseNode`
(core/prefetch/task_scheduler.cpp, TorchMoE commit 87eacf7a), called before every expert load, demand or prefetch,
sorts the experts on the GPU by `incache_visit_count`, *highest first*, and evicts in that order, skipping the
prefetch candidates (`candidates_`, unless flagged overflow) and the experts in the execution queue; the count grows
by one when an expert is loaded (`GPUThreadFunc`) and when it is used while already on the GPU (`StartExec`), and is
reset to 0 on eviction. So REFERENCE.md §3's "evict by highest in-cache visit count" is what the code does. Later
EfficientMoE versions also evict demand loads through `ExpertDispatcher::FindExpertEvict`
(core/parallel/expert_dispatcher.cpp), which takes the *lowest* count, and no longer reset counts on eviction;
`order="lowest"` gives that rule with our count. Here a key's count is 1 when it is loaded and +1 per hit; `evict`
takes the highest count (or the lowest), ties to the least recently used (the C++ `std::sort` leaves ties
unordered), never a key of `protected` (the current layer step's running experts) and, while any other key can go,
never one of the prefetch candidates. Departures: counts are never cleared wholesale (the code's benchmarks call
`ClearExpertCacheCounts` when decoding starts; the replay has no such event); sizes are in slots, not bytes.
"""

from __future__ import annotations

from simulator.cache_policy import CachePolicy
from policies.lfu_aging import CountBuckets


class MoEInfinityCache(CachePolicy):
    """MoE-Infinity's eviction by in-cache visit count.

    The prefetcher's latest request (MoE-Infinity's `candidates_`) arrives through `observe_prefetch_candidates`;
    `evict` skips those keys while it can choose another unprotected key, and evicts one only when nothing else is
    left (where the C++ code would fail the load unless the candidate is flagged `is_overflow`). Keys need not be
    resident. Empty until a prefetcher speaks, which leaves plain count ordering.
    """

    name = "moe-infinity"
    uses_prefetch_candidates = True

    def __init__(self, capacity: int, order: str = "highest"):
        super().__init__(capacity)
        if order not in ("highest", "lowest"):
            raise ValueError(f"order must be 'highest' (TorchMoE RemoveCachedSparseNode) or 'lowest', got {order!r}")
        self._highest_first = order == "highest"
        self._candidates: set[int] = set()
        self._order = CountBuckets()
        self.resident = self._order.counts  # key -> in-cache visit count

    def observe_prefetch_candidates(self, keys):
        self._candidates = keys

    def hit(self, key):
        self._order.set(key, self.resident[key] + 1)

    def insert(self, key):
        self._order.set(key, 1)

    def evict(self, protected):
        for avoid_candidates in (True, False):
            for key in self._order.in_order(self._highest_first):
                if key not in protected and not (avoid_candidates and key in self._candidates):
                    self._order.remove(key)
                    return key
        raise RuntimeError("every resident expert is protected")
