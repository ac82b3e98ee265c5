"""Placement plug-ins (simulator.placement, policies.placements): where routed experts are computed.

Hand-computed timelines on a small machine with round numbers (exact binary fractions, so float equality is exact),
the prefill copy rule in a batched step, `placement=gpu-cache` unchanged, invariants under every placement
(hypothesis, small random traces), refusals, prefetch filtering and the command line.

The machine of the hand-computed tests, unless a test says otherwise:
  non-expert work 1.0 s per layer step, an expert's GPU compute 0.5 s;
  24-byte experts over a 12 B/s link with 0.25 s latency: a fetch takes 0.25 + 24/12 = 2.25 s, serially;
  CPU: an expert 1.0 s; the activations' round trip 0.5 s (0.25 s each way).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.lru import LRUCache
from policies.miss_handling import CPUExecution
from policies.placements import CPUExperts, DynamicSplit, StaticLayers
from policies.schedulers import FCFSScheduler
from simulator.cache import ExpertCache
from simulator.compute import MissCosts, StepCosts
from simulator.errors import InputError
from simulator.hardware import LinkSpec
from simulator.prefetcher import Prefetcher
from simulator.replay import Timing, replay
from simulator.requests import requests_from_tokens
from simulator.scheduler import ServeLimits
from simulator.serving import serve
from simulator.trace_rows import tokens as group_tokens
from tests.helpers import chunk, toy_model

COSTS = StepCosts(non_expert_s=1.0, expert_s=0.5)
LINK = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25)
TIMING = Timing(COSTS, LINK)
MISS = MissCosts(transfer_s=2.25, cpu_expert_s=1.0, activation_round_trip_s=0.5)
EXPERT_BYTES = 24  # toy_model(): 3 · hidden 2 · ffn 2 · 2 bytes

MOE_SIM = [sys.executable, "-c", "from experiments.app import main; main()"]


class CheckedLRU(LRUCache):
    """LRU that asserts it never holds more than its capacity."""

    def insert(self, key):
        super().insert(key)
        assert len(self.resident) <= self.capacity, f"{len(self.resident)} resident > capacity {self.capacity}"


def run(rows, placement, *, layers=1, experts=4, top_k=2, capacity=2, timing=TIMING, miss=MISS, policy=LRUCache,
        warm=(), prefetcher=None, miss_handler=None):
    """Replay `rows` token by token; `warm`: (layer, expert) made resident before the replay."""
    cache = ExpertCache(policy, capacity, "layer", toy_model(layers=layers, experts=experts, top_k=top_k))
    for layer, expert in warm:
        cache.access(layer, [expert])
    m = replay([chunk(list(rows))], cache, timing, miss_costs=miss, placement=placement, prefetcher=prefetcher,
               miss_handler=miss_handler)
    return m, cache


def resident(cache, layer):
    return sorted(k - cache.offsets[layer] for k in cache.policies[layer].resident)


# -- 1. StaticLayers ----------------------------------------------------------------------------------------------

def test_static_layers_cpu_layer_runs_on_the_cpu_gpu_layer_through_the_cache():
    """2 MoE layers, top-1, cpu_layers=1: layer 0 on the CPU, layer 1 through the GPU cache. Two tokens, both route
    L0 -> e0, L1 -> e1.

    token 0, L0: router 0 + 1 = 1.0; activations reach the CPU at 1.25; e0 runs 1.25..2.25 (cpu_free 2.25); the
                 output is back at 2.5. GPU: nothing resident, waits 1.0 -> 2.5 (stall 1.5), adds it (0 s): 2.5.
    token 0, L1: router 3.5; e1 misses: on the link 3.5..5.75 (stall 2.25), computed 5.75..6.25.
    token 1, L0: router 7.25; CPU start max(7.5, 2.25) = 7.5, done 8.5, back 8.75 (stall 1.5).
    token 1, L1: router 9.75; e1 hits: 9.75..10.25.
    total 10.25; stall 1.5 + 2.25 + 1.5 = 5.25; compute 4·1.0 + 2·0.5 = 5.0 (= 10.25 - 5.25); cpu_busy 2·1.0 = 2.0.
    accesses 4 = hits 1 (layer 1) + loads 1 + cpu_executed 2; bytes 24 (one fetch).
    """
    rows = [(0, 0, 0, [0]), (0, 0, 1, [1]), (0, 1, 0, [0]), (0, 1, 1, [1])]
    m, cache = run(rows, StaticLayers(cpu_layers=1), layers=2, top_k=1)
    assert m.total_time_s == 10.25
    assert m.stall_time_s == 5.25
    assert m.compute_time_s == 5.0
    assert m.cpu_busy_s == 2.0
    assert m.cpu_executed == 2 and m.gpu_copies == 0
    assert (m.accesses, m.hits, m.expert_loads) == (4, 1, 1)
    assert list(m.per_layer.hits) == [0, 1] and list(m.per_layer.accesses) == [2, 2]
    assert m.bytes_h2d == EXPERT_BYTES
    assert resident(cache, 0) == [] and resident(cache, 1) == [1]
    assert list(m.per_layer.stall_s) == [3.0, 2.25]


def test_static_layers_list_and_pattern_choose_the_same_layers():
    """cpu_layers=[1] and pattern 'blk\\.1\\.' both put MoE layer 1 (of 3) on the CPU; cpu_layers=2 puts 0 and 1."""
    model = toy_model(layers=3)
    by_list, by_pattern, by_count = StaticLayers(cpu_layers=[1]), StaticLayers(pattern=r"blk\.1\."), StaticLayers(cpu_layers=2)
    for placement in (by_list, by_pattern, by_count):
        placement.bind(model)
    assert [by_list.on_cpu(layer) for layer in range(3)] == [False, True, False]
    assert [by_pattern.on_cpu(layer) for layer in range(3)] == [False, True, False]
    assert [by_count.on_cpu(layer) for layer in range(3)] == [True, True, False]
    both = StaticLayers(cpu_layers=[0], pattern=r"blk\.2\.")
    both.bind(model)
    assert [both.on_cpu(layer) for layer in range(3)] == [True, False, True]  # either names it


# -- 2. CPUExperts ------------------------------------------------------------------------------------------------

def test_cpu_experts_runs_every_expert_on_the_cpu_back_to_back():
    """1 layer, top-2, every expert on the CPU. Two tokens routing [0, 1].

    token 0: router 1.0; e0 on the CPU 1.25..2.25, back 2.5; e1 waits for the CPU: 2.25..3.25, back 3.5.
             end = t_router + rt/2 + 2·cpu + rt/2 = 1.0 + 0.25 + 2.0 + 0.25 = 3.5; GPU stalls 1.0 -> 2.5 -> 3.5 (2.5).
    token 1: router 3.5 + 1.0 = 4.5; the CPU has been free since 3.25 < 4.75: the same shape shifted by 3.5, end 7.0.
    Every access is a miss on the CPU: 4 cpu_executed, 0 hits, nothing on the link, the cache stays empty;
    cpu_busy 4·1.0 = 4.0; stall 2·2.5 = 5.0; compute 2·1.0 = 2.0.
    """
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [0, 1])]
    m, cache = run(rows, CPUExperts())
    assert m.total_time_s == 7.0
    assert m.stall_time_s == 5.0 and m.compute_time_s == 2.0
    assert m.cpu_busy_s == 4.0 and m.cpu_executed == 4
    assert (m.accesses, m.hits, m.misses, m.expert_loads) == (4, 0, 4, 0)
    assert m.bytes_h2d == 0 and m.transfers_h2d == 0
    assert cache.resident_count() == 0


def test_cpu_experts_cpu_busy_from_the_previous_step_cannot_delay_the_next():
    """A step ends only when the outputs of its CPU experts are back, so the CPU is always free again by the next
    router (cpu_free + rt/2 <= step end < next router): `start = max(t_router + rt/2, cpu_free)` always takes the
    first term at batch 1. With non-expert work 0 and no round trip the two terms meet exactly:
    token 0: router 0; e0 0..1, e1 1..2 (cpu_free 2.0); end 2.0. token 1: router 2.0 = cpu_free; e0 2..3, e1 3..4.
    total 4.0 = 4 experts · 1.0, the CPU busy the whole time.
    """
    timing = Timing(StepCosts(non_expert_s=0.0, expert_s=0.5), LINK)
    miss = MissCosts(transfer_s=2.25, cpu_expert_s=1.0, activation_round_trip_s=0.0)
    m, _ = run([(0, 0, 0, [0, 1]), (0, 1, 0, [0, 1])], CPUExperts(), timing=timing, miss=miss)
    assert m.total_time_s == 4.0 and m.cpu_busy_s == 4.0 and m.stall_time_s == 4.0


# -- 3. DynamicSplit ----------------------------------------------------------------------------------------------

SPLIT_MISS = MissCosts(transfer_s=2.25, cpu_expert_s=1.5, activation_round_trip_s=0.5)


def test_dynamic_split_sends_one_miss_to_the_cpu_and_loads_the_other():
    """1 layer, top-3, capacity 4, e0 resident beforehand; the CPU takes 1.5 s an expert. One token routes [0, 1, 2].

    router T = 1.0; the GPU is done with resident e0 at 1.5; the link is idle (a fetch issued now starts at 1.0).
    greedy, e1: load -> arrives 1.0 + 2.25 = 3.25, GPU end max(1.5, 3.25) + 0.5 = 3.75;
                CPU  -> done max(1.0 + 0.25, 0) + 1.5 = 2.75, back 3.0: step max(1.5, 3.0) = 3.0 < max(3.75, 1.0)
                -> CPU.
    greedy, e2: load -> arrives 3.25, GPU end 3.75; CPU -> done max(1.25, 2.75) + 1.5 = 4.25, back 4.5:
                max(1.5, 4.5) = 4.5 is not < max(3.75, 3.0) = 3.75 -> load.
    engine: the CPU runs e1 1.25..2.75 while the link carries e2 1.0..3.25 and the GPU computes e0 1.0..1.5 (all three
    overlap). GPU: 1.5, waits for e1's output to 3.0 (stall 1.5), adds it, waits for e2 to 3.25 (stall 0.25),
    computes it to 3.75. total 3.75, stall 1.75, cpu_busy 1.5; e2 is cached, e1 is not.
    """
    m, cache = run([(0, 0, 0, [0, 1, 2])], DynamicSplit(), top_k=3, capacity=4, miss=SPLIT_MISS, warm=[(0, 0)])
    assert m.total_time_s == 3.75
    assert m.stall_time_s == 1.75
    assert m.cpu_busy_s == 1.5
    assert (m.accesses, m.hits, m.expert_loads, m.cpu_executed) == (3, 1, 1, 1)
    assert m.bytes_h2d == EXPERT_BYTES
    assert resident(cache, 0) == [0, 2]


def test_dynamic_split_loads_everything_when_the_transfer_is_cheap():
    """As above with a 48 B/s link and two copy engines: a fetch takes 0.25 + 24/48 = 0.75 s, and the second fetch's
    set-up overlaps the first's bytes (on the wire back to back).

    greedy, e1: load -> arrives 1.75, GPU end max(1.5, 1.75) + 0.5 = 2.25; CPU -> back 1.25 + 1.5 + 0.25 = 3.0:
                3.0 is not < 2.25 -> load; the next load's bytes follow at 1.75 - 0.25 = 1.5.
    greedy, e2: load -> arrives 1.5 + 0.75 = 2.25, GPU end max(2.25, 2.25) + 0.5 = 2.75; CPU -> back 3.0:
                max(2.25, 3.0) = 3.0 is not < 2.75 -> load.
    engine: e1 on the wire 1.25..1.75, e2 1.75..2.25 (its set-up 1.0..1.25 overlapped). GPU: e0 1.0..1.5, waits
    for e1 (stall 0.25) 1.75..2.25, e2 2.25..2.75. total 2.75, stall 0.25, nothing on the CPU.
    """
    link = LinkSpec(bandwidth_Bps=48.0, latency_s=0.25, copy_engines=2)
    miss = MissCosts(transfer_s=0.75, cpu_expert_s=1.5, activation_round_trip_s=0.5)
    m, cache = run([(0, 0, 0, [0, 1, 2])], DynamicSplit(), top_k=3, capacity=4, miss=miss, warm=[(0, 0)],
                   timing=Timing(COSTS, link))
    assert m.cpu_executed == 0 and m.cpu_busy_s == 0.0
    assert m.total_time_s == 2.75 and m.stall_time_s == 0.25
    assert (m.hits, m.expert_loads, m.bytes_h2d) == (1, 2, 2 * EXPERT_BYTES)
    assert resident(cache, 0) == [0, 1, 2]


def test_dynamic_split_estimates_a_second_load_on_a_one_engine_link():
    """48 B/s link, ONE copy engine (serial: end = previous end + latency + bytes/bandwidth); CPU 1.375 s an expert.

    e1: load -> arrives 1.75, GPU end 2.25; CPU -> back 1.25 + 1.375 + 0.25 = 2.875: load.
    e2: on this link a load arrives 1.75 + 0.25 + 0.5 = 2.5 and the GPU ends 3.0; CPU -> back 2.875 < 3.0: CPU, and
        the step ends at max(2.25, 2.875) = 2.875 (the greedy estimates the arrival at 1.5 + 0.75 = 2.25, a GPU end of
        2.75 < 2.875, and loads: the step then ends at 3.0).
    """
    link = LinkSpec(bandwidth_Bps=48.0, latency_s=0.25, copy_engines=1)
    miss = MissCosts(transfer_s=0.75, cpu_expert_s=1.375, activation_round_trip_s=0.5)
    m, _ = run([(0, 0, 0, [0, 1, 2])], DynamicSplit(), top_k=3, capacity=4, miss=miss, warm=[(0, 0)],
               timing=Timing(COSTS, link))
    assert m.cpu_executed == 1 and m.total_time_s == 2.875


def test_dynamic_split_weighs_the_cpu_step_overhead():
    """1 layer, top-1, one token routing e0; CPU 1.0 s an expert plus 2.0 s once per CPU step.
    load -> arrives 1.0 + 2.25 = 3.25, computed to 3.75. CPU -> 1.25 + 2.0 + 1.0 = 4.25, back 4.5 (the engine's
    timing). Loading ends the step sooner: total 3.75, nothing on the CPU. (The greedy, without the overhead,
    estimates the CPU at 1.25 + 1.0 + 0.25 = 2.5 < 3.75 and picks it: total 4.5.)"""
    miss = MissCosts(transfer_s=2.25, cpu_expert_s=1.0, activation_round_trip_s=0.5, cpu_step_overhead_s=2.0)
    m, _ = run([(0, 0, 0, [0])], DynamicSplit(), top_k=1, capacity=1, miss=miss)
    assert m.cpu_executed == 0 and m.total_time_s == 3.75


def test_dynamic_split_without_a_clock_loads_every_miss():
    """Hit rate only: every choice costs nothing, so a split keeps loading (the plain cache's counts): 0 CPU runs,
    the same summary as placement=None. Greedy as _split_view feeds it: load -> 0 + 2.25 = 2.25; CPU ->
    max(0 + 0.25, 0) + 1.0 + 0.25 = 1.5 < 2.25 -> CPU."""
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [2, 3]), (0, 2, 0, [0, 2])]
    plain, _ = run(rows, None, timing=None, miss=None)
    split, _ = run(rows, DynamicSplit(), timing=None)
    assert split.cpu_executed == 0 and split.summary() == plain.summary()


# -- 4. the prefill threshold -------------------------------------------------------------------------------------

@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
def test_prefill_copies_an_expert_serving_enough_rows_and_runs_the_others_on_the_cpu(timed):
    """2 MoE layers, 4 experts, top-2, layer 0 on the CPU with gpu_prefill_min_tokens=3. One request of 4 tokens
    whose first 3 are its prompt: the prompt forms one iteration (3 rows); then one decode token.

    prompt, L0: rows route [0,1], [0,2], [0,3]: e0 serves 3 rows >= 3 -> copied (one full 24-byte fetch, computed on
    the GPU, not cached); e1, e2, e3 serve 1 row each -> CPU. L1: rows [0,1] x3 -> U = {0, 1} through the cache: 2
    loads. decode, L0: [0,1]: 1 row each -> 2 on the CPU. L1: [0,1] hits.
    gpu_copies 1, cpu_executed 3 + 2 = 5, expert_loads 2; bytes on the link (1 + 2) · 24 = 72.
    accesses (rows): L0 6 + 2 = 8, no hits; L1 6 + 2 = 8, hits 2 (decode): hits 2 of 16.
    """
    model = toy_model(layers=2, experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (0, 0, 1, [0, 1]), (0, 1, 0, [0, 2]), (0, 1, 1, [0, 1]),
            (0, 2, 0, [0, 3]), (0, 2, 1, [0, 1]), (0, 3, 0, [0, 1]), (0, 3, 1, [0, 1])]
    requests = requests_from_tokens(list(group_tokens([chunk(rows)])), None, 3)
    cache = ExpertCache(CheckedLRU, 4, "layer", model)
    m = serve(requests, cache, TIMING if timed else None, scheduler=FCFSScheduler(), limits=ServeLimits(1, 16),
              miss_costs=MISS, placement=StaticLayers(cpu_layers=1, gpu_prefill_min_tokens=3))
    assert [it[4] for it in m.iterations][:1] == [3]  # the first iteration is the whole prompt
    assert m.gpu_copies == 1
    assert m.cpu_executed == 5
    assert m.expert_loads == 2
    assert m.bytes_h2d == 3 * EXPERT_BYTES
    assert (m.accesses, m.hits) == (16, 2)
    assert list(m.per_layer.hits) == [0, 2]
    assert resident(cache, 0) == [] and resident(cache, 1) == [0, 1]
    if timed:
        assert m.cpu_busy_s == 5 * MISS.cpu_expert_s
        assert m.transfers_h2d == 3


def test_prefill_threshold_zero_never_copies():
    """gpu_prefill_min_tokens=0: the rule is off; the 3-row expert runs on the CPU too."""
    placement = StaticLayers(cpu_layers=1, gpu_prefill_min_tokens=0)
    assert not placement.copies(1) and not placement.copies(10_000)
    assert StaticLayers(cpu_layers=1).copies(32) and not StaticLayers(cpu_layers=1).copies(31)
    with pytest.raises(ValueError, match="gpu_prefill_min_tokens"):
        StaticLayers(gpu_prefill_min_tokens=-1)


def test_prefill_copy_at_batch_one_times_a_transient_fetch():
    """gpu_prefill_min_tokens=1 copies every CPU-layer expert at batch 1: 1 layer on the CPU, top-1, two tokens
    routing e0. Each step fetches e0 again (it is not kept): router 1.0, on the link 1.0..3.25 (stall 2.25),
    computed 3.25..3.75; token 1: router 4.75, arrives 7.0, done 7.5. total 7.5, stall 4.5, 2 copies, 48 bytes,
    nothing on the CPU and nothing cached.
    """
    m, cache = run([(0, 0, 0, [0]), (0, 1, 0, [0])], StaticLayers(cpu_layers=1, gpu_prefill_min_tokens=1), top_k=1)
    assert m.gpu_copies == 2 and m.cpu_executed == 0 and m.cpu_busy_s == 0.0
    assert m.total_time_s == 7.5 and m.stall_time_s == 4.5
    assert m.bytes_h2d == 2 * EXPERT_BYTES and m.transfers_h2d == 2
    assert (m.hits, m.expert_loads) == (0, 0) and cache.resident_count() == 0


# -- 5. gpu-cache unchanged, 6. invariants ------------------------------------------------------------------------

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_traces(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, min(3, experts)))
    capacity = draw(st.integers(top_k, experts))
    sequences = draw(st.integers(1, 2))
    length = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    rows = [(s, t, layer, rng.choice(experts, top_k, replace=False).tolist())
            for s in range(sequences) for t in range(length) for layer in range(layers)]
    return layers, experts, top_k, capacity, rows


@SETTINGS
@given(small_traces(), st.booleans())
def test_gpu_cache_equals_static_layers_with_no_cpu_layer(case, timed):
    """placement=None and StaticLayers(cpu_layers=0) (and an empty list) give the same run-level figures."""
    layers, experts, top_k, capacity, rows = case
    timing = TIMING if timed else None
    kwargs = dict(layers=layers, experts=experts, top_k=top_k, capacity=capacity, timing=timing)
    base, _ = run(rows, None, miss=None, **kwargs)
    none_on_cpu, _ = run(rows, StaticLayers(cpu_layers=0), **kwargs)
    empty_list, _ = run(rows, StaticLayers(cpu_layers=[]), **kwargs)
    assert none_on_cpu.summary() == base.summary()
    assert empty_list.summary() == base.summary()


PLACEMENT_MAKERS = {
    "gpu-cache": lambda layers: None,
    "static-first": lambda layers: StaticLayers(cpu_layers=1),
    "static-all": lambda layers: StaticLayers(cpu_layers=layers),
    "static-last-copied": lambda layers: StaticLayers(cpu_layers=[layers - 1], gpu_prefill_min_tokens=1),
    "cpu-experts": lambda layers: CPUExperts(),
    "dynamic-split": lambda layers: DynamicSplit(),
}


@SETTINGS
@given(small_traces(), st.sampled_from(sorted(PLACEMENT_MAKERS)), st.booleans(),
       st.sampled_from([MISS, SPLIT_MISS, MissCosts(0.75, 1.5, 0.5), MissCosts(2.25, 0.125, 0.0)]))
def test_invariants_under_every_placement(case, name, timed, miss):
    """At batch 1 without prefetch every access is exactly one of: a hit, a load, a CPU run, a GPU copy:
    accesses == hits + expert_loads + cpu_executed + gpu_copies; the link carries (loads + copies) · 24 bytes; the CPU
    is busy cpu_executed · cpu_expert_s; a CPU layer's cache stays empty; the cache never exceeds its capacity
    (CheckedLRU); stall >= 0 and total = compute + stall."""
    layers, experts, top_k, capacity, rows = case
    placement = PLACEMENT_MAKERS[name](layers)
    m, cache = run(rows, placement, layers=layers, experts=experts, top_k=top_k, capacity=capacity,
                   timing=TIMING if timed else None, miss=miss if placement is not None else None, policy=CheckedLRU)
    assert m.accesses == len(rows) * top_k
    assert 0 <= m.hits <= m.accesses and m.hits + m.misses == m.accesses
    assert m.accesses == m.hits + m.expert_loads + m.cpu_executed + m.gpu_copies
    assert m.expert_hits == m.hits and m.expert_lookups == m.accesses
    assert m.bytes_h2d == (m.expert_loads + m.gpu_copies) * EXPERT_BYTES
    for layer in range(layers):
        assert len(cache.policies[layer].resident) <= capacity
        if placement is not None and placement.on_cpu(layer):
            assert resident(cache, layer) == []
            assert m.per_layer.hits[layer] == 0
    if name in ("gpu-cache", "static-all"):
        assert m.cpu_executed == (m.accesses if name == "static-all" else 0)
    if name == "cpu-experts":
        assert m.cpu_executed == m.accesses and m.hits == 0
    if timed:
        assert m.stall_time_s >= 0.0
        assert m.cpu_busy_s == pytest.approx(m.cpu_executed * miss.cpu_expert_s, rel=1e-12)
        assert m.total_time_s == pytest.approx(m.compute_time_s + m.stall_time_s, rel=1e-12)
    else:
        assert m.total_time_s is None or m.summary()["total_time_s"] is None


@SETTINGS
@given(small_traces(), st.sampled_from(sorted(PLACEMENT_MAKERS)), st.booleans(), st.integers(1, 4), st.integers(0, 3),
       st.integers(0, 3))
def test_invariants_under_every_placement_in_batched_steps(case, name, timed, batch, prompt, min_tokens):
    """serve() at any batch, with prompts: each distinct expert of a step (U) is exactly one of a hit, a load, a CPU
    run or a GPU copy: expert_lookups == expert_hits + expert_loads + cpu_executed + gpu_copies; the link carries
    (loads + copies) · 24 bytes; a CPU layer's cache stays empty; the cache never exceeds its capacity."""
    layers, experts, top_k, capacity, rows = case
    placement = PLACEMENT_MAKERS[name](layers)
    if placement is not None:
        placement.gpu_prefill_min_tokens = min_tokens
    model = toy_model(layers=layers, experts=experts, top_k=top_k)
    cache = ExpertCache(CheckedLRU, capacity, "layer", model)
    requests = requests_from_tokens(list(group_tokens([chunk(rows)])), None, prompt)
    m = serve(requests, cache, TIMING if timed else None, scheduler=FCFSScheduler(), limits=ServeLimits(batch, 8),
              miss_costs=MISS if placement is not None else None, placement=placement)
    assert m.accesses == len(rows) * top_k and 0 <= m.hits <= m.accesses
    assert m.expert_lookups == m.expert_hits + m.expert_loads + m.cpu_executed + m.gpu_copies
    assert m.bytes_h2d == (m.expert_loads + m.gpu_copies) * EXPERT_BYTES
    for layer in range(layers):
        assert len(cache.policies[layer].resident) <= capacity
        if placement is not None and placement.on_cpu(layer):
            assert resident(cache, layer) == [] and m.per_layer.hits[layer] == 0
    if placement is None or min_tokens == 0:
        assert m.gpu_copies == 0
    if timed:
        assert m.stall_time_s >= 0.0
        assert m.cpu_busy_s == pytest.approx(m.cpu_executed * MISS.cpu_expert_s, rel=1e-12)


# -- 7. refusals --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpu_layers", [99, 3, -1, [5], [0, 2], [True], "1"])
def test_static_layers_refuses_layers_the_model_lacks(cpu_layers):
    with pytest.raises(InputError, match=r"^placement\.cpu_layers: ") as err:
        run([(0, 0, 0, [0, 1]), (0, 0, 1, [0, 1])], StaticLayers(cpu_layers=cpu_layers), layers=2)
    assert "\n" not in str(err.value)


def test_static_layers_refuses_a_bad_regex():
    with pytest.raises(InputError, match=r"^placement\.pattern: '\(' is not a regular expression") as err:
        StaticLayers(pattern="(")
    assert "\n" not in str(err.value)


def test_dynamic_split_refuses_a_miss_handler():
    with pytest.raises(InputError, match=r"placement=dynamic-split: .*takes no miss handler \(miss=cpu\)"):
        run([(0, 0, 0, [0, 1])], DynamicSplit(), miss_handler=CPUExecution())


def test_a_placement_needs_miss_costs():
    with pytest.raises(ValueError, match="needs miss_costs"):
        run([(0, 0, 0, [0, 1])], CPUExperts(), miss=None)


def test_static_layers_takes_a_miss_handler_for_its_gpu_layers():
    """A non-splitting placement keeps the miss handler for the GPU layers: L0 on the CPU by placement, L1's misses
    decided by miss=cpu (always): all 4 accesses on the CPU."""
    m, cache = run([(0, 0, 0, [0, 1]), (0, 0, 1, [2, 3])], StaticLayers(cpu_layers=1), layers=2,
                   miss_handler=CPUExecution(always=True))
    assert m.cpu_executed == 4 and cache.resident_count() == 0


def test_cli_refuses_cpu_layers_beyond_the_model_in_one_line(tmp_path):
    result = subprocess.run([*MOE_SIM, "placement=static-layers", "placement.cpu_layers=99", "replay.progress=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "placement.cpu_layers: 99" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# -- 8. prefetch filtering ----------------------------------------------------------------------------------------

class AskForEverything(Prefetcher):
    """Asks for every expert of every layer, at the token start and after each router."""

    name = "ask-all"

    def __init__(self, layers, experts):
        self.requests = [(layer, e) for layer in range(layers) for e in range(experts)]
        self.asked: list[tuple[int, int]] = []

    def at_token_start(self, view):
        self.asked += self.requests
        return self.requests

    def after_router(self, view):
        return self.requests


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
def test_no_prefetch_is_issued_for_a_cpu_layer(timed):
    """2 layers of 2 experts, capacity 2: the prefetcher asks for all four at the token start. Without a placement
    all four are issued; with layer 0 on the CPU only layer 1's two are (then resident: nothing more is issued),
    and layer 0's cache stays empty while its accesses run on the CPU."""
    rows = [(0, 0, 0, [0]), (0, 0, 1, [1]), (0, 1, 0, [1]), (0, 1, 1, [0])]
    timing = TIMING if timed else None
    kwargs = dict(layers=2, experts=2, top_k=1, capacity=2, timing=timing)
    plain, _ = run(rows, None, miss=None, prefetcher=AskForEverything(2, 2), **kwargs)
    assert plain.prefetch.issued == 4
    m, cache = run(rows, StaticLayers(cpu_layers=1), prefetcher=AskForEverything(2, 2), **kwargs)
    assert m.prefetch.issued == 2
    assert m.prefetch.bytes == 2 * EXPERT_BYTES
    assert resident(cache, 0) == [] and resident(cache, 1) == [0, 1]
    assert m.cpu_executed == 2 and m.per_layer.hits[0] == 0
    # L1: untimed, both prefetches land at once (2 hits); timed, e0 and e1 arrive at 2.25 and 4.5 on the serial
    # link and token 0's L1 router is at 3.5: e1 is a late prefetch, token 1's e0 a hit.
    assert m.per_layer.hits[1] + m.per_layer.prefetch_late[1] == 2
    assert list(m.per_layer.prefetch_late) == ([0, 1] if timed else [0, 0])


# -- 9. the command line ------------------------------------------------------------------------------------------

def _default_trace_accesses(layers_below: int) -> tuple[int, int]:
    """(accesses in MoE layers < layers_below, all accesses) of the shipped default trace."""
    import pyarrow.parquet as pq

    from experiments.config import DEFAULT_TRACE

    table = pq.read_table(DEFAULT_TRACE, columns=["layer", "experts"])
    layer = table.column("layer").to_numpy()
    experts = np.stack(table.column("experts").to_numpy(zero_copy_only=False))
    valid = experts >= 0
    return int(valid[layer < layers_below].sum()), int(valid.sum())


def _moe_sim(tmp_path, name, *overrides):
    out = tmp_path / name
    result = subprocess.run([*MOE_SIM, *overrides, "replay.progress=false", f"hydra.run.dir={out}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "metrics.json").read_text())["metrics"]


def test_cli_static_layers_runs_eight_layers_on_the_cpu_and_gpu_cache_is_unchanged(tmp_path):
    cpu_accesses, accesses = _default_trace_accesses(8)
    m = _moe_sim(tmp_path, "static", "placement=static-layers", "placement.cpu_layers=8")
    assert m["accesses"] == accesses
    assert m["cpu_executed"] == cpu_accesses and m["gpu_copies"] == 0
    assert m["cpu_busy_s"] > 0
    default = _moe_sim(tmp_path, "default", "placement=gpu-cache")
    assert default["hit_rate"] == 0.4752483974358974
    assert default["cpu_executed"] == 0 and default["gpu_copies"] == 0
