"""The prefetcher and miss-handler contracts: every registered class passes its checker, and each checker catches
the mistakes it is there for."""

from __future__ import annotations

import random

import pytest

from policies.check import PolicyContractError, check_miss_handler, check_prefetcher
from policies.miss_handling import MISS_HANDLERS
from policies.prefetchers import PREFETCHERS
from simulator.miss_handler import CPU, LOAD, LOW_PRECISION, MissHandler
from simulator.prefetcher import Prefetcher


@pytest.mark.parametrize("name", [n for n in PREFETCHERS if PREFETCHERS[n] is not None])
def test_registered_prefetcher_keeps_the_contract(name):
    cls = PREFETCHERS.load(name)
    check_prefetcher(cls)
    check_prefetcher(cls, seed=3)


@pytest.mark.parametrize("name", [n for n in MISS_HANDLERS if MISS_HANDLERS[n] is not None])
def test_registered_miss_handler_keeps_the_contract(name):
    check_miss_handler(MISS_HANDLERS.load(name))


class _Quiet(Prefetcher):
    def __init__(self, model):
        self.model = model


class Cheater(_Quiet):
    def after_router(self, view):
        return [(layer, experts[0]) for layer, experts in view.future(1)]


class OutOfRange(_Quiet):
    def after_router(self, view):
        return [(view.layer + 1, self.model.experts_per_layer)]


class NoneReturner(_Quiet):
    def at_token_start(self, view):
        return None


class Unseeded(_Quiet):
    def __init__(self, model):
        super().__init__(model)
        self.rng = random.Random()

    def after_router(self, view):
        return [(view.layer, self.rng.randrange(self.model.experts_per_layer))]


class MissingColumn(_Quiet):
    predictions = ("speculative",)


class NotAPrefetcher:
    def __init__(self, model):
        pass


@pytest.mark.parametrize(("broken", "words"), [
    (Cheater, "oracle = True"),
    (OutOfRange, "outside the model"),
    (NoneReturner, "returned None"),
    (Unseeded, "not deterministic"),
    (MissingColumn, "does not have"),
    (NotAPrefetcher, "subclass simulator.prefetcher.Prefetcher"),
])
def test_prefetcher_checker_catches(broken, words):
    with pytest.raises(PolicyContractError, match=words):
        check_prefetcher(broken)


class UnknownAction(MissHandler):
    def decide(self, layer, expert, rank, weight, costs):
        return "offload", 1.0


class ZeroPrecision(MissHandler):
    def decide(self, layer, expert, rank, weight, costs):
        return LOW_PRECISION, 0.0


class NeedsWeightSilently(MissHandler):
    def decide(self, layer, expert, rank, weight, costs):
        return (LOAD, 1.0) if weight > 0.5 else (CPU, 0.0)


class Coin(MissHandler):
    def __init__(self):
        self.rng = random.Random()

    def decide(self, layer, expert, rank, weight, costs):
        return (CPU, 0.0) if self.rng.random() < 0.5 else (LOAD, 1.0)


@pytest.mark.parametrize(("broken", "words"), [
    (UnknownAction, "known actions"),
    (ZeroPrecision, "byte fraction"),
    (NeedsWeightSilently, "raised TypeError"),
    (Coin, "not deterministic"),
])
def test_miss_handler_checker_catches(broken, words):
    with pytest.raises(PolicyContractError, match=words):
        check_miss_handler(broken)
