"""Adaptive prefetch horizon in the spirit of ExpertFlow: how far ahead to load, from the link and from feedback.

The predictor is a cross-layer transition chain (`TransitionPrefetcher`). The horizon — how many layers ahead it
requests — is recomputed after every router:
    lead    = (latency + top_n · bytes_per_expert / bandwidth) / layer_compute_s   # layers a fetch needs to arrive
    horizon = clamp(ceil(lead · precision), 1, max_horizon)
where layer_compute_s is the GPU's stall-free time per layer (`view.layer_compute_s`) and precision is the measured
share of predicted (layer, expert) pairs the router then chose (moving average). A slow link or a fast GPU pushes
the horizon out; poor predictions pull it in, since far predictions are the least accurate.
Without a clock (hit-rate-only replay) the horizon stays at 1. Departure: ExpertFlow also uses intermediate hidden
states, which a routing trace does not carry.
"""

import math

from simulator.prefetcher import Prefetcher, at_least_one
from policies.prefetchers.transition import TransitionPrefetcher


class AdaptivePrefetcher(Prefetcher):
    name = "adaptive"

    def __init__(self, model, top_n: int | None = None, max_horizon: int = 4, smoothing: float = 0.1):
        self.chain = TransitionPrefetcher(model, top_n=top_n, horizon=1)
        self.expert_bytes = model.bytes_per_expert
        self.max_horizon = at_least_one("max_horizon", max_horizon)
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be within (0, 1], got {smoothing!r}")
        self.smoothing = smoothing
        self.precision = 1.0
        self._predicted: dict[int, set[int]] = {}  # layer -> experts predicted for the current token

    @property
    def horizon(self) -> int:
        return self.chain.horizon

    def fit(self, chunks) -> None:
        self.chain.fit(chunks)

    def start_sequence(self) -> None:
        self._predicted = {}

    def at_token_start(self, view):
        self._predicted = {}
        return self.chain.at_token_start(view)

    def after_router(self, view):
        layer = view.layer
        guessed = self._predicted.pop(layer, None)
        if guessed:
            hit = len(guessed & set(view.experts)) / len(guessed)
            self.precision += self.smoothing * (hit - self.precision)
        self.chain.horizon = self._choose_horizon(view)
        requests = self.chain.after_router(view)
        for target, expert in requests:
            self._predicted.setdefault(target, set()).add(expert)
        return requests

    def _choose_horizon(self, view) -> int:
        link = view.link
        if link is None or not view.layer_compute_s:
            return 1
        fetch_s = link.spec.latency_s + self.chain.top_n * self.expert_bytes / link.spec.bandwidth_Bps
        lead = fetch_s / view.layer_compute_s
        return max(1, min(self.max_horizon, math.ceil(lead * self.precision)))
