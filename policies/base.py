"""The one interface every cache policy implements.

A policy instance holds at most `capacity` keys (ints: an expert id, or layer·experts + expert in a global cache).
The replay calls, for every access in stream order, exactly one of:
  - `hit(key)`  when `key in policy.resident`;
  - `admit(key, protected)` when it is not: the expert is being loaded and must become resident. `admit` evicts
    through `evict(protected)` until there is room, never a key of `protected` (the experts of the current layer
    step), and returns the evicted keys.
Subclasses keep their order structures private and write three hooks: `hit`, `insert` and `evict`.
Offline policies (`offline = True`) also get the whole key stream they will see, once, through `prepare`.
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

    resident: Container[int]
    """The keys on the GPU now; the replay tests membership with `key in policy.resident`."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity

    def prepare(self, keys: np.ndarray, step_size: int) -> None:
        """Offline look at the exact key stream this instance will be asked about (`step_size` keys per step at most)."""

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

    def __len__(self) -> int:
        return len(self.resident)
