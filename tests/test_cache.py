"""The expert cache: scopes, capacity limits, the step rule, resets, and unrecorded (-1) experts."""

import pytest

from policies.belady import NEVER, BeladyCache, next_use_positions
from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.errors import InputError
from simulator.replay import replay
from tests.helpers import chunk, toy_model


def test_layer_scope_gives_each_layer_its_own_slots():
    model = toy_model(layers=2, experts=4, top_k=2)
    cache = ExpertCache(LRUCache, 2, "layer", model)
    assert cache.access(0, [0, 1]) == [0, 1]
    assert cache.access(1, [0, 1]) == [0, 1]  # same ids, other layer: misses
    assert cache.access(0, [1, 0]) == []
    assert cache.resident_count() == 4


def test_global_scope_shares_slots_across_layers():
    model = toy_model(layers=2, experts=4, top_k=2)
    cache = ExpertCache(LRUCache, 2, "global", model)
    cache.access(0, [0, 1])
    assert cache.access(1, [0, 1]) == [0, 1]  # evicts layer 0's experts
    assert cache.access(0, [0, 1]) == [0, 1]
    assert cache.resident_count() == 2


def test_a_step_never_evicts_its_own_experts():
    # LRU order before the step: 2 (oldest), 0, 1. The step needs 2 and 3: 2 is a hit, so 3 must evict 0.
    model = toy_model(experts=4, top_k=2)
    cache = ExpertCache(LRUCache, 3, "layer", model)
    cache.access(0, [2, 0])
    cache.access(0, [1])
    assert cache.access(0, [2, 3]) == [3]
    assert set(cache.policies[0].resident) == {1, 2, 3}


@pytest.mark.parametrize(
    "capacity, scope, needle",
    [(0, "layer", "cache.capacity: 0"), (1, "layer", "top_k=2"), (5, "layer", "4 experts per layer"),
     (9, "global", "8 experts in the model"), (4, "nowhere", "cache.scope")],
)
def test_impossible_capacities_are_one_line_errors(capacity, scope, needle):
    with pytest.raises(InputError) as err:
        ExpertCache(LRUCache, capacity, scope, toy_model(layers=2))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unrecorded_experts_are_not_accesses():
    model = toy_model(experts=4, top_k=2)
    m = replay([chunk([(0, 0, 0, [0, -1]), (0, 1, 0, [-1, -1]), (0, 2, 0, [0, 1])])], ExpertCache(LRUCache, 2, "layer", model))
    assert (m.accesses, m.hits, m.tokens, m.layer_steps) == (3, 1, 3, 3)


def test_reset_per_sequence_starts_each_sequence_cold():
    model = toy_model(experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [0, 1]), (1, 0, 0, [0, 1])]
    kept = replay([chunk(rows)], ExpertCache(LRUCache, 2, "layer", model))
    reset = replay([chunk(rows)], ExpertCache(LRUCache, 2, "layer", model, reset_per_sequence=True))
    assert (kept.hits, reset.hits) == (4, 2)
    assert (kept.sequences, kept.tokens) == (2, 3)


def test_belady_with_reset_is_prepared_per_sequence():
    # Sequence 0 alone: capacity 2, keys 0 1 2 0 1: Belady keeps 0 and evicts 1 for 2... one step per key (top-1).
    model = toy_model(experts=4, top_k=1)
    rows = [(s, t, 0, [e]) for s in (0, 1) for t, e in enumerate([0, 1, 2, 0, 1])]
    c = chunk(rows)
    cache = ExpertCache(BeladyCache, 2, "layer", model, reset_per_sequence=True)
    cache.prepare(c.sequence, c.layer, c.experts)
    m = replay([c], cache)
    # Per sequence: misses 0, 1; at 2 evict the farthest of {0, 1} -> 1; hit 0; miss 1. Hits 1 per sequence.
    assert m.hits == 2


def test_next_use_positions():
    assert next_use_positions([5, 6, 5, 5, 7]).tolist() == [2, NEVER, 3, NEVER, NEVER]
