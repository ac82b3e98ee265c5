"""The literature's cache policies: differential tests against libCacheSim where it works, hand-computed traces where it
does not (or where we depart from it on purpose), the protected-key and few-slot corners, and AdapMoE's sizing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from policies.arc import ARCCache
from policies.check import check_policy
from policies.finemoe import FineMoECache
from policies.layer_sizing import layer_capacities, lru_miss_curves
from policies.lfu_aging import LFUAgingCache
from policies.lirs import LIRSCache
from policies.lru import LRUCache
from policies.moe_infinity import MoEInfinityCache
from policies.registry import policy_class
from policies.s3fifo import S3FIFOCache
from policies.sieve import SIEVECache
from simulator.cache import ExpertCache
from simulator.replay import replay
from tests.helpers import chunk, toy_model

LITERATURE = ["arc", "sieve", "s3fifo", "lirs", "lfu-aging", "moe-infinity", "finemoe"]


def play(policy, keys) -> list[bool]:
    """One key per step (the step protects only the key itself): True for a hit, in stream order."""
    outcome = []
    for key in keys:
        hit = key in policy.resident
        if hit:
            policy.hit(key)
        else:
            policy.admit(key, [key])
        outcome.append(hit)
    return outcome


def hits_of(outcome: str) -> list[bool]:
    return [c == "h" for c in outcome]


# ---- differential: libCacheSim 0.3.5 on top-1 streams --------------------------------------------------------------


@pytest.fixture(scope="module")
def lcs():
    """The libCacheSim differential test module, whose streams and oracleGeneral writer we reuse."""
    pytest.importorskip("libcachesim")
    from tests import test_policies_libcachesim

    return test_policies_libcachesim


@pytest.mark.parametrize(("ours", "theirs"), [("arc", "ARC"), ("sieve", "Sieve")])
def test_hits_equal_libcachesim(lcs, ours, theirs, tmp_path):
    """ARC and SIEVE evict exactly what libCacheSim's ARC.c and Sieve.c evict, at every size from 2 slots up."""
    for stream in sorted(lcs.STREAMS):
        keys = lcs.dense(lcs.STREAMS[stream]())
        caps = lcs.capacities(int(keys.max()) + 1)
        expected = lcs.libcachesim_hits(keys, theirs, caps, tmp_path)
        got = {c: lcs.our_hits(keys, ours, c) for c in caps}
        assert got == expected, f"{ours} on {stream}: (ours, libcachesim) {[(got[c], expected[c]) for c in caps]}"


def test_s3fifo_equals_libcachesim_where_it_works(lcs, tmp_path):
    """libCacheSim's S3FIFO aborts below 10 slots and caches nothing below 20 (S of ⌊10%⌋ slots refuses a key as
    large as itself), so compare from 20 slots up, with G sized as libCacheSim sizes it (⌊90%⌋ of the slots)."""
    for stream in sorted(lcs.STREAMS):
        keys = lcs.dense(lcs.STREAMS[stream]())
        caps = [c for c in (20, 24, 30, 32, 40, 48, 64, 100) if c <= (int(keys.max()) + 1) // 2]
        expected = lcs.libcachesim_hits(keys, "S3FIFO", caps, tmp_path)
        got = {c: sum(play(S3FIFOCache(c, ghost_size=int(c * 0.9)), keys.tolist())) for c in caps}
        assert got == expected, f"s3fifo on {stream}: (ours, libcachesim) {[(got[c], expected[c]) for c in caps]}"


def test_libcachesim_s3fifo_fails_at_few_slots_where_ours_works(lcs, tmp_path):
    keys = lcs.dense(lcs.STREAMS["zipf-64keys-s1.0"]())
    assert lcs.libcachesim_hits(keys, "S3FIFO", [20], tmp_path)[20] > 0
    with pytest.raises(pytest.fail.Exception, match="exited with"):  # aborts: "small_fifo=0 bytes"
        lcs.libcachesim_hits(keys, "S3FIFO", [5], tmp_path)
    with pytest.raises(AssertionError, match="'objects': 0"):  # runs, but never admits a key
        lcs.libcachesim_hits(keys, "S3FIFO", [12], tmp_path)
    for c in (1, 2, 3, 5, 8, 12):
        assert sum(play(S3FIFOCache(c), keys.tolist())) > 0


# ---- hand-computed traces ----------------------------------------------------------------------------------------

a, b, c, d, e, f = range(6)


def test_arc_keeps_a_twice_used_key_through_a_scan():
    # a a b c a, 2 slots: a moves to T2; c evicts T1's b (|T1| = 1 > p = 0), so the last a hits. LRU evicts a.
    assert play(ARCCache(2), [a, a, b, c, a]) == hits_of("mhmmh")
    assert play(LRUCache(2), [a, a, b, c, a]) == hits_of("mhmmm")


def test_arc_adapts_p_on_ghost_hits():
    arc = ARCCache(2)
    play(arc, [a, b, a, c])  # T1 = [c], T2 = [a], B1 = [b]
    assert (list(arc._t1), list(arc._t2), list(arc._b1), arc._p) == ([c], [a], [b], 0)
    play(arc, [b])  # B1 hit: p = 0 + max(1, 0/1) = 1; |T1| = 1 is not > p, so T2's a goes to B2; b enters T2
    assert (list(arc._t1), list(arc._t2), list(arc._b2), arc._p) == ([c], [b], [a], 1)
    play(arc, [a])  # B2 hit: p = 1 - max(1, 0/1) = 0; |T1| = 1 > 0, so c goes to B1
    assert (list(arc._t1), list(arc._t2), list(arc._b1), arc._p) == ([], [b, a], [c], 0)


def test_arc_replace_skips_a_protected_list():
    arc = ARCCache(2)
    play(arc, [a, a, b])  # T1 = [b], T2 = [a], p = 0: REPLACE would take b
    assert arc.admit(c, [c, b]) == [a]  # b is in the step: T2's LRU key goes instead, to B2
    assert (list(arc._t1), list(arc._t2), list(arc._b2)) == ([b, c], [], [a])


def test_sieve_keeps_a_visited_old_key():
    # a b c a d e f a, 3 slots: d clears a's bit and evicts b, e and f evict c and d; a survives. LRU evicts a at e.
    assert play(SIEVECache(3), [a, b, c, a, d, e, f, a]) == hits_of("mmmhmmmh")
    assert play(LRUCache(3), [a, b, c, a, d, e, f, a]) == hits_of("mmmhmmmm")


def test_sieve_hand_skips_protected_keys_without_clearing_them():
    sieve = SIEVECache(3)
    play(sieve, [a, b, c, a])  # queue a b c (a oldest), a visited
    assert sieve.evict([a]) == b and sieve.resident[a] is True  # a passed over, bit kept
    assert sieve.evict([]) == c  # the hand rested on c
    assert sieve.evict([]) == a  # wraps to the tail: clears a's bit, comes round, evicts it


def test_s3fifo_two_slots():
    # S and M have one slot each, G one id. a b a b c a b d:
    # a -> S; b finds S full before any eviction -> M; a, b hit (1 use each); c evicts S's a (1 < 2 uses) into G;
    # a is found in G -> M, evicting S's c into G; b hits (2 uses); d: M is over its one slot, so M evicts:
    # b has uses left (reinserted, 1 left), a has none -> a leaves.
    s3 = S3FIFOCache(2)
    assert play(s3, [a, b, a, b, c, a, b, d]) == hits_of("mmhhmmhm")
    assert (list(s3._small), list(s3._main), list(s3._ghost), s3.resident) == ([d], [b], [c], {b: 1, d: 0})
    assert play(LRUCache(2), [a, b, a, b, c, a, b, d]) == hits_of("mmhhmmmm")


def test_s3fifo_queue_sizes_at_few_slots():
    for capacity, small in [(1, 1), (2, 1), (9, 1), (10, 1), (19, 1), (20, 2), (100, 10)]:
        s3 = S3FIFOCache(capacity)
        assert (s3._small_size, s3._main_size, s3._ghost_size) == (small, capacity - small, capacity - small)


def test_s3fifo_one_slot():
    assert play(S3FIFOCache(1), [a, a, b, a, a, a, b]) == hits_of("mhmmhhm")  # a's 2 uses move it to M, then it goes


def test_s3fifo_protected_small_key_sends_eviction_to_main():
    s3 = S3FIFOCache(2)
    play(s3, [a, b])  # S = [a], M = [b]
    assert s3.admit(c, [c, a]) == [b]


def test_lirs_hand_trace():
    # 3 slots: 2 LIR, 1 HIR. a b c a d b c d a c (S listed bottom first, Q front first):
    # a, b LIR; c HIR (Q = [c]); a hits; d evicts c (c stays in S, non-resident), d HIR; b hits, S pruned to a d b;
    # c (not in S any more) evicts d, enters as HIR; d is in S: evicts c, becomes LIR, demoting the bottom LIR a to Q;
    # a hits as HIR outside S (stays HIR, pushed on S); c is in S: evicts a, becomes LIR, demoting b.
    lirs = LIRSCache(3)
    assert play(lirs, [a, b, c, a, d, b, c, d, a, c]) == hits_of("mmmhmhmmhm")
    assert lirs.resident == {b: False, c: True, d: True}
    assert (list(lirs._stack), list(lirs._queue)) == ([d, a, c], [b])


def test_lirs_hir_key_reused_within_the_stack_becomes_lir():
    lirs = LIRSCache(3)
    play(lirs, [a, b, c, c])  # c is HIR, and still in S when hit again: it becomes LIR, a (bottom) becomes HIR
    assert lirs.resident == {a: False, b: True, c: True}
    assert (list(lirs._stack), list(lirs._queue)) == ([b, c], [a])


def test_lirs_evicts_an_lir_key_when_q_is_all_protected():
    lirs = LIRSCache(3)
    play(lirs, [a, b, c])  # LIR a b, Q = [c]
    assert lirs.admit(d, [c, d]) == [a]  # the bottom LIR key; the free LIR place goes to d
    assert lirs.resident == {b: True, c: False, d: True}


def test_lfu_aging_forgets_old_counts():
    # 2 slots, halving every 4 accesses: a a a b -> counts a 3, b 1, then halved to a 1, b 0. c evicts b; b then
    # finds a and c tied at 1 and evicts a, the least recent. Without ageing, a keeps 3 and c goes.
    aging = LFUAgingCache(2, period=4)
    play(aging, [a, a, a, b, c])
    assert aging.admit(b, [b]) == [a]
    plain = LFUAgingCache(2, period=10**9)
    play(plain, [a, a, a, b, c])
    assert plain.admit(b, [b]) == [c]
    assert LFUAgingCache(5).period == 40


def test_lfu_aging_ties_go_to_the_least_recent_and_protection_is_respected():
    lfu = LFUAgingCache(3, period=10**9)
    play(lfu, [a, b, c, b, a])  # counts a 2, b 2, c 1
    assert lfu.admit(d, [d, c]) == [b]  # c is in the step; a and b tie at 2, b was used less recently


def test_moe_infinity_matches_reference_description():
    # REFERENCE.md §3: evict by highest in-cache visit count, protecting prefetch candidates and running experts.
    def cache():
        moe = MoEInfinityCache(3)
        play(moe, [a, b, c, a, a, b])  # in-cache visits: a 3, b 2, c 1
        return moe

    assert cache().admit(d, [d]) == [a]
    moe = cache()
    moe.observe_prefetch_candidates({a})
    assert moe.admit(d, [d]) == [b]
    moe = cache()
    moe.observe_prefetch_candidates({a})
    assert moe.admit(d, [d, b]) == [c]  # b runs in this step
    moe = cache()
    moe.observe_prefetch_candidates({a, b, c})
    assert moe.admit(d, [d]) == [a]  # nothing but candidates left: the highest count goes
    low = MoEInfinityCache(3, order="lowest")  # EfficientMoE's FindExpertEvict rule
    play(low, [a, b, c, a, a, b])
    assert low.admit(d, [d]) == [c]


def test_moe_infinity_count_restarts_after_eviction():
    moe = MoEInfinityCache(2)
    play(moe, [a, a, a, b, c])  # a (3 visits) goes for c
    assert moe.resident == {b: 1, c: 1}
    play(moe, [a])  # a comes back with 1 visit; b and c tie at 1, b is the least recent
    assert moe.resident == {c: 1, a: 1}


def test_finemoe_weighs_visits_by_gate_probability():
    def run(weights):
        fine = FineMoECache(2, top_k=2)
        for key, w in [(a, 0.1), (a, 0.1), (a, 0.1), (b, 0.9)]:
            if weights:
                fine.observe_gate(key, w)
            play(fine, [key])
        return fine.admit(c, [c])

    assert run(weights=True) == [a]  # a: 3 × 0.1 = 0.3 < b: 1 × 0.9
    assert run(weights=False) == [b]  # both 1/top_k: a's 3 visits beat b's 1
    fine = FineMoECache(2, top_k=4)
    assert fine.default_probability == 0.25


def test_finemoe_skips_protected_and_breaks_ties_by_recency():
    fine = FineMoECache(3)
    play(fine, [a, b, c])
    assert fine.admit(d, [d, a]) == [b]  # all score 1; a (oldest) is in the step
    fine.observe_gate(c, 0.5)  # a resident key's score changes at once
    assert fine.admit(e, [e]) == [c]


def test_finemoe_without_weights_is_lfu():
    """With no gate weights the score is visits × a constant: FineMoE makes LFU's decisions (ties by recency)."""
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 12, 3000).tolist()
    for capacity in (1, 2, 3, 5, 8):
        assert play(FineMoECache(capacity), keys) == play(policy_class("lfu")(capacity), keys)


# ---- every size, every corner ------------------------------------------------------------------------------------


class GatedFineMoE(FineMoECache):
    """FineMoE fed a gate weight before every access, as the replay does for `uses_gate_weights` policies."""

    def hit(self, key):
        self.observe_gate(key, ((7 * key + self._clock) % 10 + 1) / 10)
        super().hit(key)

    def admit(self, key, protected):
        self.observe_gate(key, ((3 * key + self._clock) % 10 + 1) / 10)
        return super().admit(key, protected)


def moe_infinity_with_candidates(capacity):
    moe = MoEInfinityCache(capacity)
    moe.observe_prefetch_candidates(set(range(0, 3 * capacity, 2)))
    return moe


@pytest.mark.parametrize("capacity", range(1, 9))
def test_contract_with_the_step_as_large_as_the_cache(capacity):
    factories = [policy_class(name) for name in LITERATURE] + [GatedFineMoE, moe_infinity_with_candidates]
    for factory in factories:
        check_policy(factory, capacity, step_size=capacity, steps=120)
        check_policy(factory, capacity, step_size=max(1, capacity // 2), steps=120, seed=1)


def test_every_literature_policy_is_useful_at_few_slots():
    """Per-layer caches of 3..8 slots on a top-2 stream whose popular experts shift: every policy hits, none beats
    Belady, and none collapses (each keeps at least 3/4 of FIFO's hits)."""
    rng = np.random.default_rng(3)
    experts, k = 16, 2
    weights = 1 / np.arange(1, experts + 1)
    rows = []
    for token in range(1500):
        if token % 300 == 0:
            weights = rng.permutation(weights)
        rows.append((0, token, 0, rng.choice(experts, size=k, replace=False, p=weights / weights.sum()).tolist()))
    trace, model = chunk(rows), toy_model(layers=1, experts=experts, top_k=k)

    def hits(name, capacity):
        cache = ExpertCache(policy_class(name), capacity, "layer", model)
        if cache.offline:
            cache.prepare(trace.sequence, trace.layer, trace.experts)
        return replay([trace], cache).hits

    for capacity in range(3, 9):
        fifo, belady = hits("fifo", capacity), hits("belady", capacity)
        for name in LITERATURE:
            assert 0.75 * fifo <= hits(name, capacity) <= belady, (name, capacity)


# ---- AdapMoE per-layer sizing ------------------------------------------------------------------------------------


def test_layer_capacities_equal_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        layers, experts = int(rng.integers(1, 5)), int(rng.integers(1, 7))
        curves = [rng.integers(0, 50, experts + 1).tolist() for _ in range(layers)]
        if rng.random() < 0.5:
            curves = [sorted(curve, reverse=True) for curve in curves]
        low = int(rng.integers(0, experts + 1))
        high = int(rng.integers(low, experts + 2))
        budget = int(rng.integers(layers * low, layers * experts + 3))
        got = layer_capacities(curves, budget, low, high)
        sizes = range(low, min(high, experts) + 1)
        best = min(sum(cv[s] for cv, s in zip(curves, combo))
                   for combo in itertools.product(sizes, repeat=layers) if sum(combo) <= budget)
        assert sum(got) <= budget and all(s in sizes for s in got)
        assert sum(cv[s] for cv, s in zip(curves, got)) == best


def test_layer_capacities_give_slots_where_misses_fall_most():
    curves = [[9, 5, 4, 4], [9, 8, 2, 1]]  # layer 1 gains 6 from its second slot, layer 0 only 1
    assert layer_capacities(curves, 3, 1, 3) == [1, 2]
    assert layer_capacities(curves, 6, 1, 3) == [2, 3]  # the third slot of layer 0 saves nothing: left unused
    with pytest.raises(ValueError, match="need 4 > 3"):
        layer_capacities(curves, 3, 2, 3)


def test_lru_miss_curves_equal_replaying_lru_at_every_size():
    rng = np.random.default_rng(1)
    for _ in range(30):
        layers, experts = int(rng.integers(1, 4)), int(rng.integers(2, 9))
        k = int(rng.integers(1, min(experts, 3) + 1))
        model = toy_model(layers=layers, experts=experts, top_k=k)
        rows = []
        for token in range(int(rng.integers(1, 40))):
            for layer in range(layers):
                ids = rng.permutation(experts)[:k].tolist()
                if rng.random() < 0.2:
                    ids[int(rng.integers(k))] = -1  # unrecorded
                rows.append((0, token, layer, ids))
        trace = chunk(rows)
        curves = lru_miss_curves(trace.layer, trace.experts, model)
        accesses = [sum(e >= 0 for row in rows if row[2] == layer for e in row[3]) for layer in range(layers)]
        assert [curve[0] for curve in curves] == accesses
        for capacity in range(k, experts + 1):
            per_layer = replay([trace], ExpertCache(LRUCache, capacity, "layer", model)).per_layer
            misses = [acc - hit for acc, hit in zip(per_layer.accesses, per_layer.hits)]
            assert misses == [curve[capacity] for curve in curves], capacity


def test_sized_caches_replay():
    """The chosen sizes go straight into a per-layer ExpertCache and do at least as well as an even split."""
    rng = np.random.default_rng(2)
    model = toy_model(layers=3, experts=8, top_k=2)
    spread = [2, 5, 8]  # layer l routes over its first spread[l] experts: the layers need different sizes
    rows = [(0, t, l, rng.choice(spread[l], 2, replace=False).tolist()) for t in range(300) for l in range(3)]
    trace = chunk(rows)
    sizes = layer_capacities(lru_miss_curves(trace.layer, trace.experts, model), 12, 2, 8)
    assert sum(sizes) <= 12 and sizes[0] == 2
    sized = replay([trace], ExpertCache(LRUCache, sizes, "layer", model)).hits
    even = replay([trace], ExpertCache(LRUCache, 4, "layer", model)).hits
    assert sized >= even


def test_adapmoe_sizing_from_the_config_never_misses_more_than_uniform(tmp_path):
    """`cache.sizing=adapmoe` shares capacity × layers slots by the DP over the replayed trace's exact LRU curves,
    so the uniform split is one of the allocations it chose among: it misses no more than uniform LRU does, with no
    more slots in all, and every layer keeps at least top_k."""
    from experiments.config import CacheConfig, HardwareConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
    from experiments.run import simulate
    from simulator.presets import get_preset
    from traces.synth import SynthParams, write_synthetic

    path = tmp_path / "t.parquet"
    write_synthetic(path, get_preset("mixtral-8x7b"), SynthParams(sequences=2, tokens_per_sequence=60, seed=5))

    def run(**cache):
        return simulate(RunConfig(trace=TraceConfig(path=str(path)), model=ModelConfig(), hardware=HardwareConfig(profile="rtx4090_pcie4"),
                                  policy={"_target_": "policies.lru.LRUCache"}, cache=CacheConfig(**cache),
                                  replay=ReplayConfig(timed=False, progress=False)))

    uniform = run(capacity=3)
    sized = run(capacity=3, sizing="adapmoe")
    assert sum(sized.capacities) <= 3 * 32 and min(sized.capacities) >= 2
    assert sized.metrics.misses <= uniform.metrics.misses
    assert sized.capacities != uniform.capacities  # the synthetic layers differ, so the DP moves slots
    budget = run(capacity=3, sizing="adapmoe", budget=80)
    assert sum(budget.capacities) <= 80 and budget.metrics.misses >= sized.metrics.misses
