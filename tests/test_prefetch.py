"""Prefetching: link priorities, late-prefetch accounting, limits (unbounded / zero bandwidth), and each prefetcher
on a small hand-checked trace."""

import math

import numpy as np
import pytest

from policies.lru import LRUCache
from policies.prefetchers import FutureAccessError, Prefetcher
from policies.prefetchers.adaptive import AdaptivePrefetcher
from policies.prefetchers.eam import EAMPrefetcher
from policies.prefetchers.frequency import FrequencyPrefetcher
from policies.prefetchers.oracle import OraclePrefetcher
from policies.prefetchers.recorded import RecordedPrefetcher
from policies.prefetchers.transition import TransitionPrefetcher
from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.hardware import LinkSpec
from simulator.link import Link
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

LINK = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25)  # 24-byte experts: 2.25 s each


def test_demand_overtakes_queued_prefetch_but_not_one_in_flight():
    link = Link(LINK)
    a = link.prefetch(0.0, key=1, nbytes=24)
    b = link.prefetch(0.0, key=2, nbytes=24)
    link.advance(0.0)
    assert a.end_s == 2.25 and b.end_s is None  # a started at 0; b waits behind it
    assert link.transfer(1.0, 24) == 4.5  # demand at 1: after a (in flight), before b (queued)
    assert b.end_s is None
    link.advance(5.0)
    assert b.end_s == 6.75  # b starts when the demand is done
    c = link.prefetch(5.0, key=3, nbytes=24)
    assert link.promote(c, 5.5) == 9.0  # queued behind b, promoted: goes as a demand after b
    assert (link.bytes_prefetch, link.bytes_demand) == (48, 48)


def timed(rows, prefetcher, non_expert_s=1.0, capacity=2, link=LINK, layers=2, experts=4, k=1, scope="layer"):
    cache = ExpertCache(LRUCache, capacity, scope, toy_model(layers=layers, experts=experts, top_k=k))
    return replay([chunk(rows)], cache, Timing(StepCosts(non_expert_s, 0.5), link), prefetcher=prefetcher)


TWO_TOKENS = [(0, 0, 0, [0]), (0, 0, 1, [1]), (0, 1, 0, [0]), (0, 1, 1, [1])]


def test_late_prefetches_wait_only_for_the_rest_of_their_transfer():
    model = toy_model(layers=2, top_k=1)
    m = timed(TWO_TOKENS, OraclePrefetcher(model, horizon=1))
    # t=0 token start: prefetch (0,0) starts at once, arrives 2.25. Layer 0 router at 1.0: a late prefetch, waits
    # 1.25 (not a fresh 2.25); computed to 2.75. Its router (at 1.0) queued (1,1): it starts at 2.25, arrives 4.5.
    # Layer 1 router at 3.75: late again, waits 0.75; ends 5.0. Token 1: both hit: 6.0..6.5, 7.5..8.0.
    assert m.total_time_s == 8.0 and m.stall_time_s == 2.0 and m.compute_time_s == 6.0
    p = m.prefetch
    assert (p.issued, p.late, p.useful, p.wasted, p.late_wait_s) == (2, 2, 0, 0, 2.0)
    assert (m.hits, m.misses) == (2, 2)
    assert (p.bytes, m.bytes_demand, m.bytes_h2d) == (48, 0, 48)
    without = timed(TWO_TOKENS, None)
    assert without.total_time_s == 10.5 and (without.hits, without.misses) == (2, 2)


def test_prefetch_that_arrives_in_time_is_a_useful_hit():
    model = toy_model(layers=2, top_k=1)
    m = timed(TWO_TOKENS[:2], OraclePrefetcher(model, horizon=1), non_expert_s=3.0)
    # (0,0) arrives 2.25 < router 3.0: inserted, a hit. (1,1) queued at 3.0, arrives 5.25 < router 6.5: a hit.
    assert m.total_time_s == 7.0 and m.stall_time_s == 0.0
    assert (m.hits, m.prefetch.useful, m.summary()["hits_demand"]) == (2, 2, 0)


def random_rows(seed, sequences=2, tokens=30, layers=3, experts=8, k=2):
    rng = np.random.default_rng(seed)
    return [(s, t, l, rng.choice(experts, size=k, replace=False).tolist())
            for s in range(sequences) for t in range(tokens) for l in range(layers)]


@pytest.mark.parametrize("scope, capacity", [("layer", 2), ("global", 4)])
def test_oracle_with_unbounded_bandwidth_leaves_no_demand_miss(scope, capacity):
    rows = random_rows(1)
    model = toy_model(layers=3, experts=8, top_k=2)
    m = timed(rows, OraclePrefetcher(model, horizon=1), link=LinkSpec(math.inf, 0.0), capacity=capacity,
              layers=3, experts=8, k=2, scope=scope)
    assert m.misses == 0 and m.stall_time_s == 0.0
    assert m.prefetch.useful == m.prefetch.issued > 0


def test_oracle_with_zero_bandwidth_gives_the_no_prefetch_result():
    rows = random_rows(2)
    model = toy_model(layers=3, experts=8, top_k=2)
    kwargs = dict(link=LinkSpec(0.0, 0.0), capacity=3, layers=3, experts=8, k=2)
    with_oracle = timed(rows, OraclePrefetcher(model, horizon=3), **kwargs)
    without = timed(rows, None, **kwargs)
    assert (with_oracle.hits, with_oracle.misses) == (without.hits, without.misses)
    assert with_oracle.prefetch.useful == 0
    assert per_layer_hits(with_oracle) == per_layer_hits(without)


def per_layer_hits(m):
    return m.per_layer.hits


def test_a_prefetcher_that_reads_the_future_by_mistake_is_caught():
    class Cheat(Prefetcher):
        def after_router(self, view):
            return [(layer, e) for layer, experts in view.future(1) for e in experts]

    with pytest.raises(FutureAccessError):
        timed(TWO_TOKENS, Cheat())


def test_prefetchers_see_only_the_past():
    seen = []

    class Spy(Prefetcher):
        def at_token_start(self, view):
            seen.append(("start", view.position, dict(view.token_routing)))
            return ()

        def after_router(self, view):
            seen.append(("router", view.position, dict(view.token_routing)))
            return ()

    timed(TWO_TOKENS[:2], Spy())
    assert seen == [("start", 0, {}), ("router", 0, {0: [0]}), ("router", 0, {0: [0], 1: [1]})]


def hit_only(rows, prefetcher, capacity=2, layers=2, experts=4, k=1, predictions=None):
    c = chunk(rows)
    if predictions is not None:
        c.predictions = predictions
    cache = ExpertCache(LRUCache, capacity, "layer", toy_model(layers=layers, experts=experts, top_k=k))
    return replay([c], cache, prefetcher=prefetcher)


def test_recorded_predictions_are_prefetched_from_the_token_start():
    model = toy_model(layers=2, top_k=1)
    rows = [(0, 0, 0, [2]), (0, 0, 1, [3])]
    right = hit_only(rows, RecordedPrefetcher(model, column="p"), predictions={"p": [[2], [3]]})
    wrong = hit_only(rows, RecordedPrefetcher(model, column="p"), predictions={"p": [[1], [0]]})
    assert (right.hits, right.prefetch.useful) == (2, 2)
    assert (wrong.hits, wrong.prefetch.useful, wrong.prefetch.unused_at_end) == (0, 0, 2)


def test_frequency_prefetches_the_most_chosen_experts_of_the_next_layer():
    model = toy_model(layers=2, experts=4, top_k=1)
    prefetcher = FrequencyPrefetcher(model, top_n=1)
    # Layer 1 picks 3, 3, 2, 3 (one slot per layer). Token 1: 3 is requested but resident; hit. Token 2: 2 misses
    # (evicting 3). Token 3: after the layer-0 router, 3 (count 2) is requested, loaded, and hit: useful.
    rows = [(0, t, l, [e]) for t, pair in enumerate([(0, 3), (0, 3), (1, 2), (1, 3)]) for l, e in enumerate(pair)]
    m = hit_only(rows, prefetcher, capacity=1)
    assert prefetcher.counts[1].tolist() == [0, 0, 1, 3]
    assert m.per_layer.hits[1] == 2 and m.prefetch.useful == 1


def test_transition_learns_which_expert_follows_which():
    model = toy_model(layers=2, experts=4, top_k=1)
    prefetcher = TransitionPrefetcher(model, top_n=1)
    rows = [(0, t, l, [e]) for t, pair in enumerate([(0, 2), (1, 3), (0, 2), (1, 3)]) for l, e in enumerate(pair)]
    m = hit_only(rows, prefetcher, capacity=1)
    assert prefetcher.transitions[0][0, 2] == 2 and prefetcher.transitions[0][1, 3] == 2
    # Tokens 2 and 3: after layer 0 picks 0 (then 1), the learned follower 2 (then 3) is loaded first: hits.
    # Token 2's start also requests layer 0's most frequent expert so far (0, first of a tie): a third useful one.
    assert m.per_layer.hits == [1, 2] and m.prefetch.useful == 3


def test_eam_matches_the_closest_stored_sequence_and_ranks_by_decayed_priority():
    model = toy_model(layers=3, experts=4, top_k=1)
    prefetcher = EAMPrefetcher(model, top_n=2)
    a = np.array([[5, 0, 0, 0], [0, 4, 1, 0], [0, 0, 0, 3]])  # layer 0 favours expert 0
    b = np.array([[0, 0, 0, 5], [2, 0, 0, 0], [0, 2, 0, 0]])  # layer 0 favours expert 3
    prefetcher.load_collection(np.stack([a, b]))
    prefetcher.start_sequence()

    class View:
        layer, experts = 0, [0]

    requests = prefetcher.after_router(View())
    # Closest is a. Priorities EAM[l', e] · (1 − (l' − 0)/(L + 1)), L = 3: layer 1: 4·0.75 = 3, 1·0.75 = 0.75;
    # layer 2: 3·0.5 = 1.5. Highest first.
    assert requests == [(1, 1), (2, 3), (1, 2)]


def test_adaptive_horizon_grows_with_a_slow_link_and_shrinks_with_poor_predictions():
    model = toy_model(layers=8, experts=4, top_k=1)
    rows = [(0, t, l, [(t + l) % 4]) for t in range(20) for l in range(8)]
    slow = AdaptivePrefetcher(model, max_horizon=4)
    timed(rows, slow, non_expert_s=1.0, layers=8, k=1, link=LinkSpec(1.0, 0.0))  # 24 s per expert vs ~1.5 s per layer
    fast = AdaptivePrefetcher(model, max_horizon=4)
    timed(rows, fast, non_expert_s=1.0, layers=8, k=1, link=LinkSpec(1e6, 0.0))
    assert fast.horizon == 1 and slow.horizon > 1
    hit_rate_only = AdaptivePrefetcher(model)
    hit_only(rows, hit_rate_only, layers=8)
    assert hit_rate_only.horizon == 1

    class View:  # lead = 24 s per fetch / 1.5 s per layer = 16 layers
        link = Link(LinkSpec(1.0, 0.0))
        layer_compute_s = 1.5

    slow.precision = 1.0
    assert slow._choose_horizon(View()) == 4  # capped at max_horizon
    slow.precision = 0.1
    assert slow._choose_horizon(View()) == 2  # ceil(16 · 0.1)


def test_offline_policies_refuse_prefetching():
    from policies.belady import BeladyCache
    from simulator.errors import InputError

    cache = ExpertCache(BeladyCache, 2, "layer", toy_model(layers=2, top_k=1))
    with pytest.raises(InputError):
        replay([chunk(TWO_TOKENS)], cache, prefetcher=OraclePrefetcher(toy_model(layers=2, top_k=1)))


def test_a_preempting_link_pauses_the_prefetch_on_the_wire():
    link = Link(LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, preempt_prefetch=True))
    a = link.prefetch(0.0, key=1, nbytes=24)
    link.advance(0.0)
    assert a.end_s == 2.25  # on the wire 0.25..2.25
    # A demand at 1.0 is set up by 1.25 and takes the wire: 1.25..3.25. The prefetch had 1.0 s of bytes left.
    assert link.transfer(1.0, 24) == 3.25
    assert a.end_s == 4.25
    # The resumed prefetch is on the wire again (3.25..4.25) when a demand comes at 3.5: paused again at 3.75 with
    # 0.5 s left; the demand runs 3.75..5.75, the prefetch ends 6.25.
    assert link.transfer(3.5, 24) == 5.75
    assert a.end_s == 6.25


def test_oracle_horizon_reaches_across_several_tokens():
    model = toy_model(layers=2, top_k=1)
    rows = [(0, t, l, [(t + l) % 4]) for t in range(6) for l in range(2)]
    m = hit_only(rows, OraclePrefetcher(model, horizon=5), capacity=4)
    assert m.misses == 0  # every step was prefetched before its router spoke


def test_issuing_prefetches_costs_the_gpu_stream():
    # As test_prefetch_that_arrives_in_time_is_a_useful_hit, with 0.125 s per transfer issued (latency still counted
    # from the issue). Token start: (0,0) issued 0..0.125, arrives 2.25; router at 0.125 + 3 = 3.125: a hit. After
    # it, (1,1) issued 3.125..3.25 (arrives 5.375); e0 computed to 3.75. Layer 1: router 6.75, a hit, ends 7.25.
    model = toy_model(layers=2, top_k=1)
    issuing = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, issue_s=0.125)
    cache = ExpertCache(LRUCache, 2, "layer", model)
    m = replay([chunk(TWO_TOKENS[:2])], cache, Timing(StepCosts(3.0, 0.5), issuing),
               prefetcher=OraclePrefetcher(model, horizon=1), timeline=(0, 1))
    assert m.total_time_s == 7.25 and m.compute_time_s == 7.25 and m.stall_time_s == 0.0
    assert (m.hits, m.prefetch.useful) == (2, 2)
    gpu = sorted(e for e in m.timeline if e[0] == "gpu")
    assert gpu[:3] == [("gpu", 0.0, 0.125, 0, "issue prefetches"), ("gpu", 0.125, 3.125, 0, "non-expert"),
                       ("gpu", 3.125, 3.25, 0, "issue fetches")]
