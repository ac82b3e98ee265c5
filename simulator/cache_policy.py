"""The one interface every cache policy implements.

A policy instance holds at most `capacity` keys (ints: an expert id, or layer·experts + expert in a global cache).
The replay calls, for every access in stream order, exactly one of:
  - `hit(key)`  when `key in policy.resident`;
  - `admit(key, protected)` when it is not: the expert is being loaded and must become resident. `admit` evicts
    through `evict(protected)` until there is room, never a key of `protected` (the experts of the current layer
    step), and returns the evicted keys.
`resize(capacity)` (the KV cache taking or returning GPU memory under `serve.kv=dynamic`) evicts through `evict(())`
down to the new size.
Subclasses keep their order structures private and write three hooks: `hit`, `insert` and `evict`.
Optional hooks, each declared here with a default that does nothing, so a policy overrides only what it uses:
  - offline policies (`offline = True`) get the whole key stream they will see, once, through `prepare`;
  - `uses_gate_weights = True`: the replay calls `observe_gate(key, weight)` for each routed expert before the step;
  - `uses_prefetch_candidates = True`: the replay calls `observe_prefetch_candidates(keys)` with the prefetcher's
    latest request, the keys it will load soon (MoE-Infinity protects them from eviction);
  - `compiled = "module:Class"` names a compiled twin (simulator.compiled_policy) that decides exactly as this class
    does, which a hit-rate-only replay uses instead of the hooks;
  - `stack_curve = "lru"` names the one-pass curve (simulator.stack_distance) whose hits at each size are this
    class's, so the jobs of a capacity sweep can share one pass.
The interface lives on the ground floor (simulator/), so the engine needs no plug-in package; `policies.base`
re-exports it for plug-in authors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Container
from typing import ClassVar

import numpy as np


class CachePolicy(ABC):
    name: ClassVar[str] = ""
    offline: ClassVar[bool] = False
    """True if the policy needs `prepare()` with the future key stream (Belady) or its statistics (Static)."""
    uses_gate_weights: ClassVar[bool] = False
    """True if the policy reads the router's gate weights through `observe_gate` (the trace must carry them)."""
    uses_prefetch_candidates: ClassVar[bool] = False
    """True if the policy reads the prefetcher's requests through `observe_prefetch_candidates`."""
    compiled: ClassVar[str] = ""
    """"module:Class" of this exact class's compiled twin (simulator.compiled_policy), or "" for none."""
    stack_curve: ClassVar[str] = ""
    """The one-pass curve (simulator.stack_distance.POLICIES) equal to this exact class at every size, or ""."""

    resident: Container[int]
    """The keys on the GPU now; the replay tests membership with `key in policy.resident`."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity

    def prepare(self, keys: np.ndarray, step_size: int) -> None:
        """Offline look at the exact key stream this instance will be asked about (`step_size` keys per step at most)."""

    def observe_gate(self, key: int, weight: float) -> None:
        """The router's gate weight for `key` in the coming step (called only if `uses_gate_weights`)."""

    def observe_prefetch_candidates(self, keys: set[int]) -> None:
        """The keys the prefetcher has just asked to load, resident or not (called only if
        `uses_prefetch_candidates`); they replace the previous request's."""

    @abstractmethod
    def hit(self, key: int) -> None:
        """Record a use of a resident key."""

    @abstractmethod
    def insert(self, key: int) -> None:
        """Make a missing key resident; there is room for it."""

    @abstractmethod
    def evict(self, protected: Collection[int]) -> int:
        """Remove one resident key that is not in `protected` and return it."""

    def admit(self, key: int, protected: Collection[int]) -> list[int]:
        evicted = []
        resident, capacity = self.resident, self.capacity
        while len(resident) >= capacity:
            evicted.append(self.evict(protected))
        self.insert(key)
        return evicted

    def resize(self, capacity: int) -> list[int]:
        """Hold at most `capacity` keys from now on, evicting (by the policy's own choice) down to it; returns the
        evicted keys. A policy whose structures are sized by its capacity overrides this to resize them too."""
        self.capacity = capacity
        evicted = []
        while len(self.resident) > capacity:
            evicted.append(self.evict(()))
        return evicted

    def __len__(self) -> int:
        return len(self.resident)
