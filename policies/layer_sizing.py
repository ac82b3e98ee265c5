"""Per-layer cache sizes chosen by dynamic programming over measured miss curves, in the spirit of AdapMoE.

AdapMoE (Zhong et al., "AdapMoE: Adaptive Sensitivity-based Expert Gating and Management for Efficient MoE
Inference", ICCAD'24, arXiv 2408.10284) gives each layer its own LRU cache and sizes them by dynamic programming so
that the layers that miss most get more slots (REFERENCE.md §3). We reproduce the allocation step only: given
miss_curves[l][c], the misses of layer l with c slots measured on a training trace, `layer_capacities` picks the
sizes that minimise the total misses under a slot budget. Where AdapMoE weighs layers by its own profiling, we take
the curves from `lru_miss_curves`, an exact per-layer LRU replay of the trace at every size in one pass.
The result goes straight to `ExpertCache(..., capacity=[...], scope="layer")`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulator.model import MoEModel
from simulator.stack_distance import LRUStack


def layer_capacities(
    miss_curves: Sequence[Sequence[float]], total_slots: int, min_slots: int, max_slots: int
) -> list[int]:
    """The per-layer capacities that minimise the summed misses with at most `total_slots` slots in all.

    Args:
        miss_curves: miss_curves[l][c] = misses of layer l with c slots, for c = 0 .. at least `min_slots`.
        total_slots: the budget: the capacities add up to at most this.
        min_slots: the least any layer gets (at least top_k for `ExpertCache`).
        max_slots: the most any layer gets; sizes beyond a layer's curve are not considered.

    Returns:
        One capacity per layer. Among equally good allocations: the fewest slots in all, then, going from the last
        layer back, the smallest size for each layer (deterministic).

    Raises:
        ValueError: if even `min_slots` per layer exceeds the budget, or a curve is too short for `min_slots`.
    """
    layers = len(miss_curves)
    if min_slots < 0 or max_slots < min_slots:
        raise ValueError(f"need 0 <= min_slots <= max_slots, got {min_slots} and {max_slots}")
    if layers * min_slots > total_slots:
        need = layers * min_slots
        raise ValueError(f"{layers} layers of at least {min_slots} slots need {need} > {total_slots} slots")
    for layer, curve in enumerate(miss_curves):
        if len(curve) <= min_slots:
            raise ValueError(f"miss curve of layer {layer} has no value for {min_slots} slots")
    # best[s]: least misses of the layers so far with exactly s slots; choices[l][s]: layer l's size in that optimum
    best = np.zeros(1)
    choices = []
    for curve in miss_curves:
        new = np.full(min(len(best) + max_slots, total_slots + 1), np.inf)
        choice = np.full(len(new), -1, dtype=np.int64)
        for size in range(min_slots, min(max_slots, len(curve) - 1) + 1):
            reach = min(len(best), len(new) - size)  # totals s + size that stay within the budget
            if reach <= 0:
                break
            cost = best[:reach] + float(curve[size])
            better = cost < new[size : size + reach]
            new[size : size + reach][better] = cost[better]
            choice[size : size + reach][better] = size
        best = new
        choices.append(choice)
    slots = int(np.argmin(best))  # the fewest slots among the optimal totals
    capacities = []
    for choice in reversed(choices):
        size = int(choice[slots])
        capacities.append(size)
        slots -= size
    return capacities[::-1]


def lru_miss_curves(layers: np.ndarray, experts: np.ndarray, model: MoEModel) -> list[list[int]]:
    """Misses of a per-layer LRU cache of every size 0 .. experts_per_layer, from trace rows in replay order.

    The curves come from the LRU stack distances of `simulator.stack_distance` (Mattson et al., 1970, with the
    replay's step rule: a layer step's experts are all judged before any is loaded, and a miss never evicts an
    expert of its own step), exact for every size from top_k up; values for c below top_k (which `ExpertCache`
    refuses) follow the same formula: an access hits iff fewer than c other experts were used since its last use.

    Args:
        layers: the MoE layer of each row, shape [rows].
        experts: routed expert ids of each row, shape [rows, k]; -1 = not recorded (skipped, as the replay does).
        model: gives the number of layers and experts per layer.

    Returns:
        curves[l][c] = misses of layer l with c slots; curves[l][0] is the layer's access count.
    """
    stack = LRUStack(model, "layer")
    stack.add(layers, experts)
    return (stack.accesses()[:, None] - stack.hits()).tolist()
