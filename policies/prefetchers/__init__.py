"""Prefetchers: which experts to load before the router asks. One interface (`Prefetcher`), registered by name."""

from policies.prefetchers.base import FutureAccessError, Prefetcher, PrefetchView

PREFETCHERS: dict[str, str | None] = {
    "none": None,
    "oracle": "policies.prefetchers.oracle:OraclePrefetcher",
    "recorded": "policies.prefetchers.recorded:RecordedPrefetcher",
    "frequency": "policies.prefetchers.frequency:FrequencyPrefetcher",
    "transition": "policies.prefetchers.transition:TransitionPrefetcher",
    "eam": "policies.prefetchers.eam:EAMPrefetcher",
    "adaptive": "policies.prefetchers.adaptive:AdaptivePrefetcher",
}

__all__ = ["PREFETCHERS", "FutureAccessError", "Prefetcher", "PrefetchView"]
