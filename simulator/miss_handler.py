"""The miss-handler interface: what to do with a missed expert besides loading it and waiting, chosen per missed
expert.

`decide(layer, expert, rank, weight, costs)` returns an action and, for a low-precision load, the fraction of the
expert's bytes that cross the link:
  load           fetch the expert and wait for it (the default; it enters the cache)
  cpu            run it on the CPU where its weights live (Fiddler): exact, costs CPU time and an activation round trip;
                 the expert does not enter the GPU cache
  low-precision  fetch a lower-precision copy (HOBBIT): fewer bytes, changes the model's output; used for this step
                 and not kept
  skip           do not compute it (AdapMoE's adaptive gating): changes the model's output
An expert whose prefetch is already on its way is always waited for, never handed to the miss handler. The
implementations live in `policies.miss_handling`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from simulator.compute import MissCosts

LOAD, CPU, LOW_PRECISION, SKIP = "load", "cpu", "low-precision", "skip"
ACTIONS = (LOAD, CPU, LOW_PRECISION, SKIP)
COPY = "copy"
"""Not a miss handler's: a placement's CPU expert copied to the GPU for one step (its prefill rule), computed there
and not kept."""


class MissHandler(ABC):
    name: ClassVar[str] = ""
    needs_weights: ClassVar[bool] = False
    """True if `decide` reads the gate weight (the trace must carry weights)."""

    @abstractmethod
    def decide(self, layer: int, expert: int, rank: int, weight: float | None, costs: MissCosts) -> tuple[str, float]:
        """(action, byte fraction) for a missed expert of router rank `rank` (0 = highest)."""
