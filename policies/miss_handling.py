"""Miss handlers: Fiddler's CPU execution, HOBBIT's low-precision load, AdapMoE's skip. The interface and the
actions are `simulator.miss_handler`'s; the metrics count CPU runs and approximated accesses (low precision, skipped)
apart, since the latter change model output. HOBBIT keeps a mixed-precision cache; we do not model reloading a copy
at full precision.
"""

from __future__ import annotations

from simulator.miss_handler import CPU, LOAD, LOW_PRECISION, SKIP, MissHandler
from simulator.registry import Registry


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


MISS_HANDLERS = Registry("miss", {
    "load": None,
    "cpu": "policies.miss_handling:CPUExecution",
    "low-precision": "policies.miss_handling:LowPrecisionLoad",
    "skip": "policies.miss_handling:SkipLowWeight",
})
