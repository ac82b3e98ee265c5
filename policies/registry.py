"""Cache policies by name: the `policy` registry. Entries are "module:Class" strings, imported only when asked for.

A user's policy needs no entry here: Hydra's `_target_` reaches any importable class. `register()` gives it a short
name too.
"""

from __future__ import annotations

from simulator.registry import Registry

POLICIES = Registry("policy", {
    "lru": "policies.lru:LRUCache",
    "lfu": "policies.lfu:LFUCache",
    "fifo": "policies.fifo:FIFOCache",
    "random": "policies.random_eviction:RandomCache",
    "belady": "policies.belady:BeladyCache",
    "static": "policies.static:StaticCache",
    "arc": "policies.arc:ARCCache",
    "sieve": "policies.sieve:SIEVECache",
    "s3fifo": "policies.s3fifo:S3FIFOCache",
    "lirs": "policies.lirs:LIRSCache",
    "lfu-aging": "policies.lfu_aging:LFUAgingCache",
    "moe-infinity": "policies.moe_infinity:MoEInfinityCache",
    "finemoe": "policies.finemoe:FineMoECache",
})

register = POLICIES.register


def policy_class(name: str) -> type:
    """The cache policy class registered as `name`, or named by a "module:Class" / "module.Class" path."""
    return POLICIES.load(name)
