"""The policy contract: every registered policy passes `check_policy`, and the checker catches each kind of mistake."""

from __future__ import annotations

import random

import pytest

from policies.base import CachePolicy
from policies.check import PolicyContractError, check_policy, random_steps
from policies.lru import LRUCache
from policies.registry import POLICIES, policy_class

# (capacity, step_size): a step as large as the cache, a cache of one, and roomier caches
SHAPES = [(1, 1), (2, 2), (4, 4), (6, 4), (8, 2), (16, 6), (32, 8)]


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize(("capacity", "step_size"), SHAPES)
def test_registered_policy_keeps_the_contract(name, capacity, step_size):
    check_policy(policy_class(name), capacity, step_size=step_size, steps=200)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_registered_policy_keeps_the_contract_on_other_streams(name):
    for seed in range(1, 4):
        check_policy(policy_class(name), 5, step_size=3, steps=150, seed=seed)


def test_stream_exercises_hits_and_evictions():
    """The checker is only as good as its stream: it must both hit and overflow the cache."""
    capacity, step_size = 4, 4
    stream = random_steps(capacity, step_size, 200, seed=0)
    policy = LRUCache(capacity)
    hits = evictions = 0
    for step in stream:
        assert len(set(step)) == len(step) <= step_size
        for key in step:
            if key in policy.resident:
                policy.hit(key)
                hits += 1
            else:
                evictions += len(policy.admit(key, step))
    assert hits > 50 and evictions > 50
    assert random_steps(capacity, step_size, 200, seed=0) == stream


# Broken toy policies, one mistake each. All start from LRU so that only the mistake differs.


class EvictsProtected(LRUCache):
    def evict(self, protected):
        key = next(iter(self.resident))  # ignores `protected`
        del self.resident[key]
        return key


class EvictsButKeeps(LRUCache):
    def evict(self, protected):
        for key in self.resident:
            if key not in protected:
                return key  # forgets to remove it


class EvictsNonResident(LRUCache):
    def evict(self, protected):
        key = super().evict(protected)
        return key + 1000


class Overfills(LRUCache):
    def admit(self, key, protected):
        self.insert(key)  # never evicts
        return []


class ForgetsToInsert(LRUCache):
    def insert(self, key):
        pass


class HitEvicts(LRUCache):
    def hit(self, key):
        super().hit(key)
        if len(self.resident) > 1:
            self.resident.popitem(last=False)


class HidesEvictions(LRUCache):
    def admit(self, key, protected):
        super().admit(key, protected)
        return []  # evicts, but does not say so


class Unseeded(LRUCache):
    _rng = random.Random()

    def evict(self, protected):
        candidates = [k for k in self.resident if k not in protected]
        key = self._rng.choice(candidates)
        del self.resident[key]
        return key


class StartsFull(LRUCache):
    def __init__(self, capacity):
        super().__init__(capacity)
        self.resident[10_000] = None


class NeedsPrepare(CachePolicy):
    """An offline policy whose `prepare` must have been called: the checker has to call it."""

    offline = True

    def __init__(self, capacity):
        super().__init__(capacity)
        self.resident = {}
        self._future = None

    def prepare(self, keys, step_size):
        self._future = keys

    def hit(self, key):
        assert self._future is not None

    def insert(self, key):
        assert self._future is not None
        self.resident[key] = None

    def evict(self, protected):
        key = next(k for k in self.resident if k not in protected)
        del self.resident[key]
        return key


@pytest.mark.parametrize(
    ("broken", "words"),
    [
        (EvictsProtected, "protected"),
        (EvictsButKeeps, "left it resident"),
        (EvictsNonResident, "not resident"),
        (Overfills, "more than capacity"),
        (ForgetsToInsert, "not resident"),
        (HitEvicts, "hit() changed residency"),
        (HidesEvictions, "admit must return"),
        (Unseeded, "not deterministic"),
        (StartsFull, "must start empty"),
    ],
)
def test_checker_catches_a_broken_policy(broken, words):
    with pytest.raises(PolicyContractError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_policy(broken, 4, step_size=3)


def test_checker_catches_protected_eviction_when_capacity_equals_step():
    with pytest.raises(PolicyContractError, match="protected"):
        check_policy(EvictsProtected, 3, step_size=3)


def test_checker_prepares_offline_policies():
    check_policy(NeedsPrepare, 4, step_size=2)


def test_checker_accepts_a_factory():
    check_policy(lambda capacity: policy_class("random")(capacity, seed=7), 4)


def test_checker_rejects_a_step_larger_than_the_cache():
    with pytest.raises(ValueError, match="step_size"):
        check_policy(LRUCache, 2, step_size=3)
