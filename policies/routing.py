"""Routing policies: cache-aware routing (ExpertFlow) beside the router's own choice (`routing=router`, no policy).
The interface is `simulator.routing`'s; the replay counts the swaps and the gate mass they move, since each changes
the model's output.
"""

from __future__ import annotations

from simulator.registry import Registry
from simulator.routing import RoutingPolicy


class CacheAwareRouting(RoutingPolicy):
    """A routed expert that is not resident gives its place to a resident runner-up of the router.

    A runner-up c may replace a non-resident routed expert e when c is resident, routed by no one this step, among
    the first `max_rank` runners-up (router ranks k .. k + max_rank − 1; None: all the trace recorded) and
    score(e) − score(c) ≤ `max_score_gap` (router probabilities; None: any gap). The non-resident routed experts go
    from the lowest-scoring up, so the least gate mass moves first, each taking the best-scoring runner-up left that
    it may take.
    """

    name = "cache-aware"

    def __init__(self, max_score_gap: float | None = None, max_rank: int | None = None):
        if max_score_gap is not None and not max_score_gap >= 0:
            raise ValueError(f"max_score_gap {max_score_gap} must be ≥ 0 (router probability) or null (any gap)")
        if max_rank is not None and max_rank < 1:
            raise ValueError(f"max_rank {max_rank} must be ≥ 1 (runners-up past the top-k) or null (all recorded)")
        self.max_score_gap = max_score_gap
        self.max_rank = max_rank

    def route(self, layer, experts, weights, candidates, scores, resident):
        k = len(experts)
        last = len(candidates) if self.max_rank is None else k + self.max_rank
        runners = sorted(((scores[i], c) for i, c in enumerate(candidates[k:last], k) if c not in experts and resident(c)),
                         key=lambda runner: -runner[0])  # best first; a tie keeps the router's order
        if not runners:
            return []
        gap = self.max_score_gap
        swaps = []
        for position in sorted((p for p, e in enumerate(experts) if not resident(e)), key=lambda p: (scores[p], -p)):
            for index, (score, candidate) in enumerate(runners):
                if gap is None or scores[position] - score <= gap:
                    swaps.append((position, candidate))
                    del runners[index]
                    break
            if not runners:
                break
        return swaps


ROUTING = Registry("routing", {
    "router": None,
    "cache-aware": "policies.routing:CacheAwareRouting",
})
