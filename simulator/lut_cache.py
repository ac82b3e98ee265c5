"""The GPU's cache of Mixture-of-Lookup-Experts table rows, in the memory the expert cache would take.

A MoLE expert is a table with one row (its output vector, `lut_row_bytes`) per token id, so what a layer step needs
is the rows (layer, expert, token id) of its routed experts. The cache stands in for the `ExpertCache` of the same
configuration: per layer or model-wide as its scope, and in the same bytes, `capacity · bytes_per_expert` per
instance, counted in rows. Eviction is the expert cache's policy, which must be LRU (the only one checked for rows);
a step's rows are never evicted to make room for each other (an expert's bytes hold 2 or 3 × its intermediate size
in rows, and the budget is at least top_k experts).
"""

from __future__ import annotations

from simulator.cache import ExpertCache
from simulator.errors import InputError


class RowCache:
    def __init__(self, experts: ExpertCache):
        if experts.policies[0].name != "lru":
            raise InputError(f"policy: model.kind=mole caches table rows by LRU (policy=lru), not {experts.policies[0].name}")
        model = experts.model
        self._make_policy = experts.make_policy
        self.rows = [c * model.bytes_per_expert // model.lut_row_bytes for c in experts.capacities]
        """Rows per LRU instance: one per MoE layer (scope layer) or one in all (scope global)."""
        self.per_layer = experts.scope == "layer"
        self.experts_per_layer = model.experts_per_layer
        self.keys_per_token = model.experts_per_layer if self.per_layer else model.total_experts
        self.reset_per_sequence = experts.reset_per_sequence
        self._empty()

    def _empty(self) -> None:
        self.policies = [self._make_policy(rows) for rows in self.rows]

    def start_sequence(self, sequence: int, first: bool) -> None:
        """Called by the replay as each sequence begins: empties the cache if it resets per sequence."""
        if self.reset_per_sequence and not first:
            self._empty()

    def access(self, layer: int, experts: list[int], token_id: int) -> list[int]:
        """Judge the rows of one layer step (router order) and load the missing ones; returns their experts."""
        if self.per_layer:
            policy, offset = self.policies[layer], token_id * self.keys_per_token
        else:
            policy, offset = self.policies[0], token_id * self.keys_per_token + layer * self.experts_per_layer
        keys = [offset + e for e in experts]
        resident = policy.resident
        misses = []
        for expert, key in zip(experts, keys):
            if key in resident:
                policy.hit(key)
            else:
                policy.admit(key, keys)
                misses.append(expert)
        return misses
