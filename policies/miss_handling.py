"""What to do with a missed expert besides loading it and waiting: a swappable choice made per missed expert.

`decide(layer, expert, rank, weight, costs)` returns an action and, for a low-precision load, the fraction of the
expert's bytes that cross the link:
  load           fetch the expert and wait for it (the default; it enters the cache)
  cpu            run it on the CPU where its weights live (Fiddler): exact, costs CPU time and an activation round trip;
                 the expert does not enter the GPU cache
  low-precision  fetch a lower-precision copy (HOBBIT): fewer bytes, changes the model's output; used for this step
                 and not kept (HOBBIT keeps a mixed-precision cache; we do not model reloading a copy at full precision)
  skip           do not compute it (AdapMoE's adaptive gating): changes the model's output
An expert whose prefetch is already on its way is always waited for, never handed to the miss handler. The metrics
count CPU runs and approximated accesses (low precision, skipped) apart, since the latter change model output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from simulator.compute import MissCosts

LOAD, CPU, LOW_PRECISION, SKIP = "load", "cpu", "low-precision", "skip"


class MissHandler(ABC):
    name: ClassVar[str] = ""
    needs_weights: ClassVar[bool] = False
    """True if `decide` reads the gate weight (the trace must carry weights)."""

    @abstractmethod
    def decide(self, layer: int, expert: int, rank: int, weight: float | None, costs: MissCosts) -> tuple[str, float]:
        """(action, byte fraction) for a missed expert of router rank `rank` (0 = highest)."""


class CPUExecution(MissHandler):
    """Fiddler: run a missed expert on the CPU when that is faster than bringing its weights over the link.

    Fiddler compares a CPU cost against a transfer cost (its code's constants: 7 vs 70 units, a token threshold of
    about 10); we compare the profile's roofline CPU time plus the activation round trip against the expert's
    unqueued transfer time. `always` sends every miss to the CPU.
    """

    name = "cpu"

    def __init__(self, always: bool = False):
        self.always = always

    def decide(self, layer, expert, rank, weight, costs):
        if self.always or costs.cpu_expert_s + costs.activation_round_trip_s < costs.transfer_s:
            return CPU, 0.0
        return LOAD, 1.0


class LowPrecisionLoad(MissHandler):
    """HOBBIT: a missed expert whose gate weight is below `threshold` is fetched as a `bits`-bit copy."""

    name = "low-precision"
    needs_weights = True

    def __init__(self, threshold: float = 0.2, bits: int = 4, full_bits: int = 16):
        self.threshold = threshold
        self.fraction = bits / full_bits

    def decide(self, layer, expert, rank, weight, costs):
        return (LOW_PRECISION, self.fraction) if weight < self.threshold else (LOAD, 1.0)


class SkipLowWeight(MissHandler):
    """AdapMoE's adaptive gating: a missed expert below router rank 0 whose gate weight is under `threshold` is
    not computed (the top expert always is)."""

    name = "skip"
    needs_weights = True

    def __init__(self, threshold: float = 0.1):
        self.threshold = threshold

    def decide(self, layer, expert, rank, weight, costs):
        return (SKIP, 0.0) if rank > 0 and weight < self.threshold else (LOAD, 1.0)


MISS_HANDLERS: dict[str, str | None] = {
    "load": None,
    "cpu": "policies.miss_handling:CPUExecution",
    "low-precision": "policies.miss_handling:LowPrecisionLoad",
    "skip": "policies.miss_handling:SkipLowWeight",
}
