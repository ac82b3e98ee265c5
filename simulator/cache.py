"""The GPU's expert cache: policy instances arranged by scope, and the hit/miss judgement of one layer step.

Scope `layer` gives every MoE layer its own policy of `capacity` slots over expert ids (or `capacity[layer]` slots,
for per-layer sizing such as AdapMoE's); scope `global` gives one policy of `capacity` slots over the model-wide keys
(`MoEModel.key`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from simulator.cache_policy import CachePolicy
from simulator.compiled_policy import CompiledPolicy, compiled_twin
from simulator.errors import InputError
from simulator.model import MoEModel

SCOPES = ("global", "layer")


class ExpertCache:
    def __init__(
        self,
        make_policy: Callable[[int], CachePolicy],
        capacity: int | Sequence[int],
        scope: str,
        model: MoEModel,
        *,
        reset_per_sequence: bool = False,
    ):
        if scope not in SCOPES:
            raise InputError(f"cache.scope: unknown scope {scope!r} (known: {', '.join(SCOPES)})")
        limit = model.experts_per_layer if scope == "layer" else model.total_experts
        what = "experts per layer" if scope == "layer" else "experts in the model"
        if isinstance(capacity, int):
            capacities = [capacity] * (model.moe_layers if scope == "layer" else 1)
        elif scope == "layer" and len(capacity) == model.moe_layers:
            capacities = [int(c) for c in capacity]
        else:
            raise InputError(f"cache.capacity: a list needs scope 'layer' and one entry per MoE layer ({model.moe_layers}), got {list(capacity)}")
        for c in capacities:
            if not model.top_k <= c <= limit:
                raise InputError(
                    f"cache.capacity: {c} is outside {model.top_k}..{limit} for scope {scope!r} "
                    f"(a layer step needs its top_k={model.top_k} experts resident; the model has {limit} {what})"
                )
        self.model = model
        self.scope = scope
        self.capacities = capacities
        """Slots per policy instance: one per MoE layer (scope layer) or one in all (scope global)."""
        self.reset_per_sequence = reset_per_sequence
        self.make_policy = make_policy
        """`capacity -> CachePolicy`: builds each policy instance (again at a reset)."""
        self._futures: list[tuple[np.ndarray, np.ndarray]] | None = None  # per policy: (keys, their sequence ids)
        self.track_evictions = False
        """When set (a prefetching replay), `evicted` collects model-wide keys (`MoEModel.key`) evicted since the
        caller last cleared it."""
        self.evicted: list[int] = []
        self.twin: CompiledPolicy | None = None
        """The compiled twin holding this cache's state once a replay handed it over (`compiled()`)."""
        self._judged = False  # whether `access` has judged a step through the Python policies
        self._unprepared = False  # whether `prepare` was given futures the policies have not seen yet
        self._empty()

    def _empty(self) -> None:
        layers = self.model.moe_layers
        if self.scope == "layer":
            self.policies = [self.make_policy(c) for c in self.capacities]
            self.offsets = [0] * layers
            self._evict_base = [self.model.key(layer, 0) for layer in range(layers)]
        else:
            self.policies = [self.make_policy(self.capacities[0])] * layers
            self.offsets = [self.model.key(layer, 0) for layer in range(layers)]
            self._evict_base = [0] * layers

    @property
    def offline(self) -> bool:
        return self.policies[0].offline

    def prepare(self, sequences: np.ndarray, layers: np.ndarray, experts: np.ndarray) -> None:
        """Give offline policies the key stream each policy instance will see, from all rows in replay order.

        With a reset per sequence, each fresh instance is later given only its own sequence's keys.
        """
        experts = np.asarray(experts, dtype=np.int64)
        layers = np.asarray(layers, dtype=np.int64)
        sequences = np.broadcast_to(np.asarray(sequences, dtype=np.int64)[:, None], experts.shape)
        valid = experts >= 0
        if self.scope == "layer":
            futures = []
            for layer in range(self.model.moe_layers):
                rows = layers == layer
                keep = valid[rows]
                futures.append((experts[rows][keep], sequences[rows][keep]))
        else:
            keys = self.model.key(layers[:, None], experts)
            futures = [(keys[valid], sequences[valid])]
        self._futures = futures
        self._unprepared = not self.reset_per_sequence  # the policies look at the stream when first asked

    def ready(self) -> None:
        """Give the policies the futures `prepare` was given, before their first step (deferred from `prepare`, so
        that a replay judged by a compiled twin, which reads the futures itself, or read from a one-pass curve
        never has the Python policies compute them)."""
        if self._unprepared:
            self._unprepared = False
            for policy, (keys, _) in zip(self._instances(), self._futures):
                policy.prepare(keys, self.model.top_k)

    def start_sequence(self, sequence: int, first: bool) -> None:
        """Called by the replay as each sequence begins: empties the cache if it resets per sequence."""
        if not self.reset_per_sequence:
            return
        if not first:
            self._empty()
        if self.offline:
            if self._futures is None:
                raise RuntimeError("offline policy used before ExpertCache.prepare()")
            for policy, (keys, seqs) in zip(self._instances(), self._futures):
                lo, hi = np.searchsorted(seqs, [sequence, sequence + 1])
                policy.prepare(keys[lo:hi], self.model.top_k)

    def compiled(self) -> CompiledPolicy | None:
        """The policies' compiled twin, which holds the cache's state from now on; None if the policy class has
        none, or if the cache resets per sequence or has already judged steps through its Python policies (their
        state cannot move into the twin)."""
        if self.twin is None:
            twin_class = compiled_twin(self.policies[0])
            if twin_class is None or self.reset_per_sequence or self._judged:
                return None
            if self.offline and self._futures is None:
                raise RuntimeError("offline policy used before ExpertCache.prepare()")
            keyspace = self.model.experts_per_layer if self.scope == "layer" else self.model.total_experts
            futures = [keys for keys, _ in self._futures] if self.offline else None
            layers = range(self.model.moe_layers)
            instance = np.array(layers if self.scope == "layer" else [0] * len(layers), dtype=np.int64)
            self.twin = twin_class(self._instances(), keyspace, futures, self.model.top_k, instance,
                                   np.array(self.offsets, dtype=np.int64))
        return self.twin

    def curve_policy(self) -> str:
        """The one-pass curve (simulator.stack_distance) that gives this cache's hits at every size: its policy's
        exact class's `stack_curve`, "" if none or if the cache resets per sequence or has judged steps already."""
        if self.reset_per_sequence or self._judged or self.twin is not None:
            return ""
        return type(self.policies[0]).__dict__.get("stack_curve", "")

    def _instances(self) -> list[CachePolicy]:
        return self.policies if self.scope == "layer" else self.policies[:1]

    def resident_count(self) -> int:
        return sum(len(p) for p in self._instances())

    def access(self, layer: int, experts: list[int]) -> list[int]:
        """Judge one layer step's experts (router order, or a batched step's U; no -1) and load the misses; returns
        the missed expert ids.

        Every expert is judged resident or not before this step, then each miss is admitted. Keys are handled in
        order; while the step's keys fit the cache, admissions never evict a key of this step, so judging as we go
        equals judging all first. A batched step may route to more experts than the cache holds: then the step's
        experts are computed resident ones first, then the misses in order, and an admission may evict any expert
        of the step computed before it (a resident one, or an earlier miss), never one still to be computed.
        """
        if self.twin is not None:
            raise RuntimeError("this cache's state is in its compiled twin (a compiled replay ran): use a fresh cache")
        if not self._judged:
            self._judged = True
            self.ready()
        policy = self.policies[layer]
        offset = self.offsets[layer]
        keys = [offset + e for e in experts] if offset else experts
        resident = policy.resident
        if len(keys) > policy.capacity:
            return self._access_overfull(layer, policy, keys, offset)
        misses = []
        for key in keys:
            if key in resident:
                policy.hit(key)
            else:
                evicted = policy.admit(key, keys)
                if self.track_evictions:
                    base = self._evict_base[layer]
                    self.evicted.extend(base + k for k in evicted)
                misses.append(key - offset)
        return misses

    def _access_overfull(self, layer: int, policy: CachePolicy, keys: list[int], offset: int) -> list[int]:
        """`access` for a step whose keys outnumber the cache's slots (see there)."""
        resident = policy.resident
        missed = [key for key in keys if key not in resident]
        for key in keys:
            if key in resident:
                policy.hit(key)
        for index, key in enumerate(missed):
            evicted = policy.admit(key, missed[index:])
            if self.track_evictions:
                base = self._evict_base[layer]
                self.evicted.extend(base + k for k in evicted)
        return [key - offset for key in missed]

    def resize(self, capacity: int) -> None:
        """Give every policy instance `capacity` slots (the KV cache took or returned memory), evicting by the policy
        down to the new size; never fewer than top_k."""
        capacity = max(capacity, self.model.top_k)
        self.ready()
        for index, policy in enumerate(self._instances()):
            evicted = policy.resize(capacity)
            if self.track_evictions and evicted:
                base = self._evict_base[index] if self.scope == "layer" else 0
                self.evicted.extend(base + k for k in evicted)
        self.capacities = [capacity] * len(self.capacities)

    @property
    def uses_gate_weights(self) -> bool:
        return self.policies[0].uses_gate_weights

    def observe_gates(self, layer: int, experts: list[int], weights: list[float]) -> None:
        """Tell a policy that reads gate weights (FineMoE) the router's weights of this step, before the step."""
        policy, offset = self.policies[layer], self.offsets[layer]
        for expert, weight in zip(experts, weights):
            policy.observe_gate(offset + expert, weight)

    def mark_prefetch_candidates(self, pairs: list[tuple[int, int]]) -> None:
        """Tell policies that read prefetch candidates (MoE-Infinity) the prefetcher's latest (layer, expert)s."""
        if not self.policies[0].uses_prefetch_candidates:
            return
        if self.scope == "global":
            self.policies[0].observe_prefetch_candidates({self.offsets[layer] + e for layer, e in pairs})
        else:
            for layer, policy in enumerate(self.policies):
                policy.observe_prefetch_candidates({e for l, e in pairs if l == layer})

    def is_resident(self, layer: int, expert: int) -> bool:
        return self.offsets[layer] + expert in self.policies[layer].resident

    def admit_prefetch(self, layer: int, expert: int, step_layer: int, step_experts: list[int],
                       requested: set[int] = frozenset()) -> bool:
        """Insert a prefetched expert through the policy, never evicting an expert of the step now running
        (`step_layer`, `step_experts`) nor one the same prefetch request asked for (`requested`, model-wide keys);
        returns False, inserting nothing, when every resident expert is protected."""
        policy = self.policies[layer]
        offset = self.offsets[layer]
        protected = set()
        if policy is self.policies[step_layer]:
            step_offset = self.offsets[step_layer]
            protected.update(step_offset + e for e in step_experts)
        if requested:
            if self.scope == "global":
                protected |= requested
            else:
                base = self.model.key(layer, 0)
                protected.update(k - base for k in requested if base <= k < base + self.model.experts_per_layer)
        if len(policy) >= policy.capacity and all(key in protected for key in policy.resident):
            return False
        evicted = policy.admit(offset + expert, protected)
        if self.track_evictions:
            base = self._evict_base[layer]
            self.evicted.extend(base + k for k in evicted)
        return True
