"""The cache-policy interface, for plug-in authors: `CachePolicy` is defined in `simulator.cache_policy` (the engine's
floor) and re-exported here under the name the README's examples use."""

from simulator.cache_policy import CachePolicy

__all__ = ["CachePolicy"]
