"""The MoLE row cache: rows keyed by (layer, expert, token id), LRU in the expert cache's bytes; hand-computed."""

from dataclasses import replace

import pytest

from policies.lfu import LFUCache
from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.errors import InputError
from simulator.hardware import LinkSpec
from simulator.lut_cache import RowCache
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

COSTS = StepCosts(non_expert_s=1.0, expert_s=0.5)
LINK = LinkSpec(bandwidth_Bps=8.0, latency_s=0.25)
# top_k 1, ffn 1: 12-byte experts, 4-byte rows, so one expert's bytes hold 3 rows.
NARROW = replace(toy_model(layers=1, experts=4, top_k=1, ffn=1), kind="mole")


def mole(rows, token_ids, *, model, capacity, scope="layer", timed=False):
    cache = ExpertCache(LRUCache, capacity, scope, model)
    return replay([chunk(rows, token_ids)], cache, Timing(COSTS, LINK) if timed else None)


def test_budget_is_the_expert_caches_bytes_in_rows():
    model = replace(toy_model(layers=3, experts=4, top_k=2), kind="mole")  # 24-byte experts, 4-byte rows
    assert RowCache(ExpertCache(LRUCache, 2, "layer", model)).rows == [12, 12, 12]
    assert RowCache(ExpertCache(LRUCache, 5, "global", model)).rows == [30]


def test_a_repeated_token_id_hits_its_rows_and_the_stall_is_hand_computed():
    # Token 0 (id 7), experts [0, 1]: router at 1.0, both rows (8 bytes) in one read, 0.25 + 1.0: ends 2.25.
    # Token 1 (id 7), experts [1, 2]: row (1, 7) hits; router at 3.25, row (2, 7) (4 bytes) 0.25 + 0.5: ends 4.0.
    model = replace(toy_model(layers=1, experts=4, top_k=2), kind="mole")
    m = mole([(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2])], [7, 7], model=model, capacity=2, timed=True)
    assert m.total_time_s == 4.0 and m.stall_time_s == 1.25 + 0.75 and m.compute_time_s == 2.0
    assert (m.accesses, m.hits, m.misses, m.bytes_h2d, m.transfers_h2d) == (4, 1, 3, 3 * 4, 2)
    other = mole([(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2])], [7, 8], model=model, capacity=2, timed=True)
    assert (other.hits, other.bytes_h2d, other.total_time_s) == (0, 16, 2 * 2.25)


def test_capacity_evicts_the_least_recently_used_row():
    # 3 rows, all of expert 0. Ids 1 2 3 | 1 hits (order 2 3 1) | 4 evicts 2 | 2 misses, evicts 3 | 1 hits.
    rows = [(0, t, 0, [0]) for t in range(7)]
    ids = [1, 2, 3, 1, 4, 2, 1]
    for timed in (False, True):
        m = mole(rows, ids, model=NARROW, capacity=1, timed=timed)
        assert (m.accesses, m.hits, m.bytes_h2d) == (7, 2, 5 * NARROW.lut_row_bytes)
        assert m.per_layer.hits == [2]


def test_global_scope_pools_rows_across_layers():
    # Ids 1, 2, 1, each through 2 layers on expert 0: 4 distinct rows. Per layer, 3 rows each keep both ids; one
    # model-wide LRU of 3 rows has evicted (layer 0, id 1) and then (layer 1, id 1) by the time id 1 returns.
    model = replace(NARROW, moe_layers=2)
    rows = [(0, t, layer, [0]) for t in range(3) for layer in (0, 1)]
    ids = [1, 1, 2, 2, 1, 1]
    assert mole(rows, ids, model=model, capacity=1).hits == 2
    m = mole(rows, ids, model=model, capacity=1, scope="global")
    assert m.hits == 0 and m.bytes_h2d == 6 * model.lut_row_bytes


def test_mole_needs_token_ids_and_an_lru_cache():
    with pytest.raises(ValueError, match="token_id"):
        replay([chunk([(0, 0, 0, [0])])], ExpertCache(LRUCache, 1, "layer", NARROW))
    with pytest.raises(InputError, match="policy: model.kind=mole"):
        replay([chunk([(0, 0, 0, [0])], [1])], ExpertCache(LFUCache, 1, "layer", NARROW))


def test_timeline_shows_a_lookup_step():
    # As the repeated-id case above, token 1 only: non-expert 2.25..3.25, the missed row 3.5..4.0 on the link.
    model = replace(toy_model(layers=1, experts=4, top_k=2), kind="mole")
    cache = ExpertCache(LRUCache, 2, "layer", model)
    m = replay([chunk([(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2])], [7, 7])], cache, Timing(COSTS, LINK), timeline=(1, 2))
    assert sorted(m.timeline) == [("gpu", 2.25, 3.25, 0, "non-expert"), ("h2d", 3.5, 4.0, 2, "demand")]
