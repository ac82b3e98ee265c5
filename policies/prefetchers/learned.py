"""Replays a learned expert predictor online (`simulator.expert_predictor`; `moe-trace train-predictor` writes one).

At a token's start (decision point 0) and after layer l's router (decision point l + 1) the predictor scores the
next `horizon` layers from this token's routing so far, the previous tokens' routing and the sequence's mean so far,
and the `top_n` experts of each of those layers are requested, nearest layer first. It reads only the `PrefetchView`'s
past: the previous tokens and the sequence's history are kept here, per sequence, from `view.previous_routing`.

`prefetch.model=FILE` loads a trained predictor (refused in one line if it was trained for another layer count,
expert count or top-k); without one, `prefetch.train_trace=TRACE` trains one before the replay with the default
settings (`seed` seeds it).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from simulator.errors import InputError
from simulator.expert_predictor import ExpertPredictor, Routing, Training, decision_inputs, train
from simulator.prefetcher import Prefetcher, at_least_one

MAX_SEQUENCES = 4096
"""Sequences whose history is kept at once: more than any batch runs together, so only finished ones are dropped."""


class _Sequence:
    """What the prefetcher remembers of one sequence: its last tokens' multi-hot routing and their running sum."""

    def __init__(self, layers: int, experts: int, keep: int):
        self.previous: deque[np.ndarray] = deque(maxlen=max(keep, 1))
        self.sums = np.zeros((layers, experts))
        self.count = 0

    def add(self, hot: np.ndarray) -> None:
        self.previous.appendleft(hot)
        self.sums += hot
        self.count += 1


class LearnedPrefetcher(Prefetcher):
    name = "learned"

    def __init__(self, moe_model, model: str | None = None, top_n: int | None = None, horizon: int | None = None,
                 seed: int = 0):
        self.shape = moe_model
        self.top_n = at_least_one("top_n", top_n) or moe_model.top_k
        self.horizon = at_least_one("horizon", horizon)
        self.seed = seed
        self.predictor: ExpertPredictor | None = None
        if model is not None:
            predictor = ExpertPredictor.load(model)
            predictor.check_fits(moe_model)
            self._use(predictor)
        self._sequences: OrderedDict[int, _Sequence] = OrderedDict()

    def _use(self, predictor: ExpertPredictor) -> None:
        if self.horizon is not None and self.horizon > predictor.horizon:
            raise InputError(f"prefetch.horizon: {self.horizon} is beyond the predictor's horizon {predictor.horizon} "
                             f"({predictor.source or 'trained here'})")
        self.predictor = predictor
        self.horizon = self.horizon or predictor.horizon

    def fit(self, chunks) -> None:
        if self.predictor is None:
            routing = Routing.from_chunks(chunks, self.shape)
            self._use(train(routing, self.shape, horizon=self.horizon or 1, training=Training(seed=self.seed)))

    def _row(self, experts: list[int] | None) -> np.ndarray:
        """[1, E] multi-hot of one layer's experts (zero for a layer not routed yet)."""
        row = np.zeros((1, self.shape.experts_per_layer), dtype=np.float32)
        row[0, [e for e in experts or () if e >= 0]] = 1.0
        return row

    def _hot(self, routing: dict[int, list[int]]) -> np.ndarray:
        hot = np.zeros((self.shape.moe_layers, self.shape.experts_per_layer), dtype=np.float32)
        for layer, experts in routing.items():
            hot[layer] = self._row(experts)[0]
        return hot

    def _state(self, view) -> _Sequence:
        state = self._sequences.get(view.sequence)
        if state is None:
            p = self._predictor()
            state = self._sequences[view.sequence] = _Sequence(p.moe_layers, p.experts, p.features.previous_tokens)
            if len(self._sequences) > MAX_SEQUENCES:
                self._sequences.popitem(last=False)
        self._sequences.move_to_end(view.sequence)
        return state

    def _predictor(self) -> ExpertPredictor:
        if self.predictor is None:
            raise InputError("prefetch=learned: no predictor; give prefetch.model=FILE (written by moe-trace "
                             "train-predictor) or prefetch.train_trace=TRACE to train one first")
        return self.predictor

    def _predict(self, view, d: int):
        p = self._predictor()
        if d >= p.moe_layers:
            return []
        state = self._state(view)
        zero = np.zeros((1, p.experts), dtype=np.float32)

        def previous(i: int, layer: int) -> np.ndarray:
            return state.previous[i][layer][None] if i < len(state.previous) else zero

        def history(layer: int) -> np.ndarray:
            return (state.sums[layer] / max(state.count, 1))[None].astype(np.float32)

        x = decision_inputs(d, p.features, p.horizon, p.moe_layers, p.experts, 1,
                            lambda layer: self._row(view.token_routing.get(layer)), previous,
                            history if p.features.history else None)
        scores = p.logits(d, x)[0]
        out = []
        for j, target in enumerate(range(d, min(d + self.horizon, p.moe_layers))):
            ranked = np.argsort(-scores[j], kind="stable")[: self.top_n]
            out += [(target, int(e)) for e in ranked]
        return out

    def at_token_start(self, view):
        if view.previous_routing is None:
            self._sequences.pop(view.sequence, None)  # a sequence's first token: nothing of it is known yet
            self._state(view)
        else:
            self._state(view).add(self._hot(view.previous_routing))
        return self._predict(view, 0)

    def after_router(self, view):
        return self._predict(view, view.layer + 1)
