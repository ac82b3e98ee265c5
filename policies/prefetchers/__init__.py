"""Prefetchers: which experts to load before the router asks. One interface (`Prefetcher`, defined on the engine's
floor in `simulator.prefetcher` and re-exported here), registered by name."""

from simulator.prefetcher import FutureAccessError, Prefetcher, PrefetchView
from simulator.registry import Registry

PREFETCHERS = Registry("prefetch", {
    "none": None,
    "oracle": "policies.prefetchers.oracle:OraclePrefetcher",
    "recorded": "policies.prefetchers.recorded:RecordedPrefetcher",
    "frequency": "policies.prefetchers.frequency:FrequencyPrefetcher",
    "transition": "policies.prefetchers.transition:TransitionPrefetcher",
    "eam": "policies.prefetchers.eam:EAMPrefetcher",
    "adaptive": "policies.prefetchers.adaptive:AdaptivePrefetcher",
    "learned": "policies.prefetchers.learned:LearnedPrefetcher",
})

__all__ = ["PREFETCHERS", "FutureAccessError", "Prefetcher", "PrefetchView"]
