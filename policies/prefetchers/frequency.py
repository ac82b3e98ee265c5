"""Per-layer frequency top-N: after layer l's router, load the N experts of the next layers chosen most often so far.

Counts are learned online from the routing the replay has shown (across sequences), optionally seeded from a
training trace with `fit()`. It knows nothing of the current token: the baseline any context-aware predictor beats.
"""

import numpy as np

from simulator.prefetcher import Prefetcher, at_least_one


class FrequencyPrefetcher(Prefetcher):
    name = "frequency"

    def __init__(self, model, top_n: int | None = None, horizon: int = 1):
        self.layers = model.moe_layers
        self.top_n = at_least_one("top_n", top_n) or model.top_k
        self.horizon = at_least_one("horizon", horizon)
        self.counts = np.zeros((model.moe_layers, model.experts_per_layer))

    def fit(self, chunks) -> None:
        for chunk in chunks:
            for layer, experts in zip(chunk.layer.tolist(), chunk.experts.tolist()):
                self._count(layer, experts)

    def _count(self, layer, experts):
        self.counts[layer, [e for e in experts if e >= 0]] += 1

    def _top(self, first: int):
        out = []
        for layer in range(first, min(first + self.horizon, self.layers)):
            ranked = np.argsort(-self.counts[layer], kind="stable")[: self.top_n]
            out += [(layer, int(e)) for e in ranked if self.counts[layer, e] > 0]
        return out

    def at_token_start(self, view):
        return self._top(0)

    def after_router(self, view):
        self._count(view.layer, view.experts)
        return self._top(view.layer + 1)
