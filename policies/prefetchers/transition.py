"""Cross-layer transition: P(expert e' at layer l+1 | the experts chosen at layer l), from co-occurrence counts.

After layer l's router, the next layer's experts are scored by the summed transition counts from this token's
experts at l, and the top N requested; with `horizon` > 1 the score vector is carried further through the
row-normalised transition matrices (a Markov chain over layers). Counts are learned online from every token the
replay has shown, and can be seeded from a training trace with `fit()`. At a token's start, layer 0's most frequent
experts so far are requested.
"""

import numpy as np

from simulator.prefetcher import Prefetcher, at_least_one


class TransitionPrefetcher(Prefetcher):
    name = "transition"

    def __init__(self, model, top_n: int | None = None, horizon: int = 1):
        self.layers = model.moe_layers
        self.top_n = at_least_one("top_n", top_n) or model.top_k
        self.horizon = at_least_one("horizon", horizon)
        experts = model.experts_per_layer
        self.transitions = np.zeros((max(model.moe_layers - 1, 0), experts, experts))
        self.first_layer = np.zeros(experts)  # layer-0 popularity, for a token's start

    def fit(self, chunks) -> None:
        previous = None
        for chunk in chunks:
            for seq, pos, layer, experts in zip(chunk.sequence.tolist(), chunk.token.tolist(),
                                                chunk.layer.tolist(), chunk.experts.tolist()):
                experts = [e for e in experts if e >= 0]
                here = (seq, pos, layer)
                if previous is not None and previous[0][:2] == here[:2] and previous[0][2] + 1 == layer:
                    self._learn(layer - 1, previous[1], experts)
                if layer == 0:
                    self.first_layer[experts] += 1
                previous = (here, experts)

    def _learn(self, layer, source, target):
        if source and target:
            self.transitions[layer][np.ix_(source, target)] += 1

    def _predict(self, layer: int, scores: np.ndarray):
        out = []
        for target in range(layer + 1, min(layer + 1 + self.horizon, self.layers)):
            scores = scores @ self.transitions[target - 1]
            total = scores.sum()
            if total <= 0:
                break
            scores = scores / total
            ranked = np.argsort(-scores, kind="stable")[: self.top_n]
            out += [(target, int(e)) for e in ranked if scores[e] > 0]
        return out

    def at_token_start(self, view):
        ranked = np.argsort(-self.first_layer, kind="stable")[: self.top_n]
        return [(0, int(e)) for e in ranked if self.first_layer[e] > 0]

    def after_router(self, view):
        layer, experts = view.layer, view.experts
        if layer == 0:
            self.first_layer[experts] += 1
        source = view.token_routing.get(layer - 1)
        if source is not None:
            self._learn(layer - 1, source, experts)
        scores = np.zeros(self.transitions.shape[-1] if self.layers > 1 else 0)
        if self.layers < 2:
            return []
        scores[experts] = 1.0
        return self._predict(layer, scores)
