"""The routing interface: which experts a layer step uses, given the router's choice, its runners-up and the cache.

The router's own top-k is what the trace records; a routing policy may swap a routed expert that is not resident for
a resident runner-up (cache-aware routing, as ExpertFlow does), which saves the fetch and changes the model's
output. `route` sees one layer step before the cache judges it and returns the swaps; the replay makes them (the
candidate takes the replaced expert's place in router order and its gate weight) and counts them
(`Metrics.rerouting`). No routing policy (`routing=router`) leaves the router's choice as recorded. The
implementations live in `policies.routing`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar


class RoutingPolicy(ABC):
    name: ClassVar[str] = ""

    @abstractmethod
    def route(self, layer: int, experts: Sequence[int], weights: Sequence[float] | None, candidates: Sequence[int],
              scores: Sequence[float], resident: Callable[[int], bool]) -> list[tuple[int, int]]:
        """Swaps [(position in `experts`, candidate expert)] for one layer step.

        `experts` are the routed experts in router order, `weights` their gate weights (None if not traced);
        `candidates` the router's top-(k + r), the routed experts first, with `scores` their router probabilities;
        `resident(expert)` says whether this layer's expert is in the GPU cache now. A candidate must come from
        past the routed ones and appear in no other swap."""
