"""Policies by name. Entries are "module:Class" strings, imported only when asked for (as Gymnasium registers envs).

A user's policy needs no entry here: Hydra's `_target_` reaches any importable class. `register()` lets a library
user give it a short name too.
"""

from __future__ import annotations

import importlib

from simulator.errors import InputError

POLICIES: dict[str, str] = {
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
}


def register(name: str, entry_point: str) -> None:
    """Make `entry_point` ("package.module:Class") available as `name`."""
    POLICIES[name] = entry_point


def policy_class(name: str) -> type:
    """The cache policy class registered as `name`, or named by a "module:Class" / "module.Class" path."""
    return load_class(name, POLICIES, "policy")


def load_class(name: str, table: dict[str, str | None], kind: str) -> type:
    """The class `table` registers as `name`, or named by a "module:Class" / "module.Class" path; `kind` names
    the config key in errors."""
    entry = table.get(name) or name
    module_name, _, attr = entry.partition(":") if ":" in entry else entry.rpartition(".")
    if not module_name or not attr:
        raise InputError(f"{kind}: unknown {kind} {name!r} (known: {', '.join(sorted(table))})")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise InputError(f"{kind}: cannot import {entry!r} for {kind} {name!r} (known: {', '.join(sorted(table))})") from None
