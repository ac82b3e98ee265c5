"""The interface of a compiled twin: one shipped cache policy's exact decisions, judged a chunk of layer steps at a
time in compiled code instead of a Python call per access.

Why: a hit-rate-only replay spends nearly all its time in the policy's Python hooks (one `hit` or `admit` per
access). A twin takes whole arrays of steps and judges them in a loop that numba compiles, and must decide exactly
what its class decides: the Python class stays the reference (and the only path for a user's class), and
`tests/test_compiled_policies.py` holds every twin against it.

A policy class names its twin in `CachePolicy.compiled` ("module:Class", imported only when a replay uses it). The
twin is used only for that exact class: a subclass may change any hook, so it inherits no twin.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import numpy as np

from simulator.cache_policy import CachePolicy


class CompiledPolicy(ABC):
    """The state of every policy instance of one cache (one per MoE layer, or one in all), in arrays.

    Keys are ints in 0..keyspace-1 (an expert id, or a model-wide key in a global cache). `futures` (offline twins
    only) is each instance's exact key stream, as `CachePolicy.prepare` gets it, with `step_size` keys per step at
    most."""

    def __init__(self, policies: list[CachePolicy], keyspace: int, futures: list[np.ndarray] | None, step_size: int,
                 instance: np.ndarray, offset: np.ndarray):
        self.capacity = np.array([p.capacity for p in policies], dtype=np.int64)
        self.keyspace = keyspace
        self.instance = instance
        """The policy instance of each MoE layer (int64)."""
        self.offset = offset
        """What each MoE layer adds to an expert id to make its key (int64): 0 in a per-layer cache."""

    @abstractmethod
    def judge(self, layer: np.ndarray, experts: np.ndarray, hits: np.ndarray) -> int:
        """Judge layer steps in order, as `ExpertCache.access` would: row r is a step of MoE layer `layer[r]` with
        the expert ids `experts[r]` (-1 = no access), key `offset[layer] + expert` in instance `instance[layer]`;
        set `hits[r, j]` (zeroed by the caller) for each expert resident before the step. Rows may be any width,
        -1 anywhere, their experts distinct; a row with no more experts than its instance's capacity protects them
        all, a wider one (a batched step's union) follows `ExpertCache._access_overfull` (online policies' twins
        only: batched serving refuses offline policies). Returns -1, or the row at which an admission found every
        resident protected (where the Python class raises; compiled loops return codes, since a raise inside them
        costs a factor of five in speed)."""


def compiled_twin(policy: CachePolicy) -> type[CompiledPolicy] | None:
    """The twin class declared by `policy`'s own class (not inherited), or None."""
    path = type(policy).__dict__.get("compiled")
    if not path:
        return None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
