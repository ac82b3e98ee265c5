"""Hand-computed timelines: the timed replay must reproduce them exactly (all inputs are exact binary fractions)."""

import pytest

from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.compute import StepCosts, gpu_s
from simulator.hardware import GPUSpec, LinkSpec
from simulator.link import Link
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

# 24-byte experts over a 12 B/s link: 2 s on the wire, after 0.25 s of latency. Non-expert part 1 s, expert 0.5 s.
COSTS = StepCosts(non_expert_s=1.0, expert_s=0.5)
ONE_ENGINE = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, copy_engines=1)
TWO_ENGINES = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, copy_engines=2)

THREE_TOKENS = [(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2]), (0, 2, 0, [2, 1])]


def run(rows, link=ONE_ENGINE, capacity=2):
    cache = ExpertCache(LRUCache, capacity, "layer", toy_model())
    return replay([chunk(rows)], cache, Timing(COSTS, link))


def test_three_tokens_one_copy_engine():
    # token 0: router at 1.0; e0 on the wire 1.25..3.25, e1 3.5..5.5 (serial: one engine).
    #          GPU waits 1.0..3.25 (stall 2.25), computes e0 to 3.75, waits to 5.5 (stall 1.75), ends 6.0.
    # token 1: e1 hits, e2 misses (LRU evicts e0). Router at 7.0; e1 computed 7.0..7.5; e2 arrives 7.25+2 = 9.25
    #          (stall 1.75), computed to 9.75.
    # token 2: both hit: router 10.75, two experts, ends 11.75.
    m = run(THREE_TOKENS)
    assert (m.hits, m.misses, m.tokens) == (3, 3, 3)
    assert m.total_time_s == 11.75
    assert m.compute_time_s == 6.0
    assert m.stall_time_s == 5.75
    assert m.bytes_h2d == 72
    assert m.transfers_h2d == 3
    assert m.h2d_busy_s == 6.0
    assert m.per_layer.stall_s == [5.75]


def test_second_copy_engine_hides_latency_of_the_second_transfer():
    # token 0: e1's set-up overlaps e0's wire time: e1 on the wire 3.25..5.25; stall 2.25 + 1.5, ends 5.75.
    m = run(THREE_TOKENS[:1], link=TWO_ENGINES)
    assert m.total_time_s == 5.75
    assert m.stall_time_s == 3.75


def test_all_hits_cost_compute_only():
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [0, 1]), (0, 2, 0, [1, 0])]
    m = run(rows)
    # First token: 2 misses as above (6.0 s); the next two: 1 + 2·0.5 = 2 s each.
    assert m.total_time_s == 10.0
    assert m.stall_time_s == 4.0


def test_transfer_finishing_before_the_gpu_needs_it_costs_no_stall():
    # Resident experts keep the GPU busy while the missed one crosses: 3 hits of 1 s each cover a 2.25 s transfer.
    costs = StepCosts(non_expert_s=0.0, expert_s=1.0)
    model = toy_model(experts=8, top_k=4)
    cache = ExpertCache(LRUCache, 4, "layer", model)
    rows = [(0, 0, 0, [0, 1, 2, 3]), (0, 1, 0, [0, 1, 2, 4])]
    m = replay([chunk(rows)], cache, Timing(costs, ONE_ENGINE))
    # token 0: four serial transfers end 2.25, 4.5, 6.75, 9.0; GPU computes each 1 s after arrival: ends 10.0.
    # token 1: e4 arrives 10 + 2.25 = 12.25; GPU busy with hits until 13.0, then e4 until 14.0: no stall.
    assert m.total_time_s == 14.0
    assert m.stall_time_s == 10.0 - 4.0


def test_link_queue_carries_over_between_layer_steps():
    link = Link(ONE_ENGINE)
    assert link.transfer(0.0, 24) == 2.25
    assert link.transfer(1.0, 24) == 4.5  # waits for the first
    assert link.transfer(10.0, 24) == 12.25  # idle link: latency + wire
    assert link.bytes_moved == 72 and link.transfers == 3


def test_hit_rate_only_replay_counts_the_same_as_timed():
    cache = ExpertCache(LRUCache, 2, "layer", toy_model())
    m = replay([chunk(THREE_TOKENS)], cache)
    assert (m.hits, m.misses, m.bytes_h2d) == (3, 3, 72)
    assert m.summary()["total_time_s"] is None


def test_roofline_is_memory_bound_at_batch_one():
    gpu = GPUSpec("toy", memory_bytes=1, memory_bandwidth_Bps=1000.0, flops=1e6, kernel_overhead_s=0.5)
    # 100 params × 2 bytes / 1000 B/s = 0.2 s  vs  2·100 FLOP / 1e6 = 0.0002 s.
    model = toy_model(param_bytes=2.0)
    assert gpu_s(100, model, gpu) == pytest.approx(0.5 + 0.2)
    # At 10,000 tokens the FLOPs dominate: 2·100·1e4 / 1e6 = 2 s.
    assert gpu_s(100, model, gpu, tokens=10_000) == pytest.approx(0.5 + 2.0)


def test_timeline_window_records_what_the_gpu_and_the_link_did():
    cache = ExpertCache(LRUCache, 2, "layer", toy_model())
    m = replay([chunk(THREE_TOKENS)], cache, Timing(COSTS, ONE_ENGINE), timeline=(1, 2))
    # Token 1 only (see test_three_tokens_one_copy_engine): expert 2 crosses 7.25..9.25 (key layer 0 · 4 + 2).
    assert sorted(m.timeline) == sorted([
        ("gpu", 6.0, 7.0, 0, "non-expert"),
        ("gpu", 7.0, 7.5, 0, "resident experts"),
        ("h2d", 7.25, 9.25, 2, "demand"),
        ("gpu", 9.25, 9.75, 0, "fetched expert"),
    ])


ISSUING = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, copy_engines=1, issue_s=0.125)


def test_issuing_demand_fetches_costs_the_gpu_stream():
    # As test_three_tokens_one_copy_engine, with 0.125 s of GPU time per demand fetch issued (the link's latency still
    # counts from the router). token 0: issues two fetches 1.0..1.25; e0 lands 3.25 (stall 2.0), e1 5.5 (stall 1.75),
    # ends 6.0. token 1: issues e2 7.0..7.125, e1 7.125..7.625, e2 lands 9.25 (stall 1.625), ends 9.75.
    # token 2: both hit, ends 11.75. The issue time hides under the stalls here: the total is unchanged.
    m = run(THREE_TOKENS, link=ISSUING)
    assert m.total_time_s == 11.75
    assert m.compute_time_s == 6.0 + 3 * 0.125
    assert m.stall_time_s == 5.75 - 3 * 0.125
    assert m.per_layer.stall_s == [5.375]


def test_issue_time_delays_the_resident_experts():
    # As test_transfer_finishing_before_the_gpu_needs_it_costs_no_stall, issuing at 0.125 s a fetch. token 0: four
    # issues 0..0.5; arrivals 2.25, 4.5, 6.75, 9.0; ends 10.0 (stall 10 - 0.5 - 4 = 5.5). token 1: issues e4
    # 10.0..10.125, three hits to 13.125 (e4 landed at 12.25), e4 to 14.125.
    costs = StepCosts(non_expert_s=0.0, expert_s=1.0)
    cache = ExpertCache(LRUCache, 4, "layer", toy_model(experts=8, top_k=4))
    rows = [(0, 0, 0, [0, 1, 2, 3]), (0, 1, 0, [0, 1, 2, 4])]
    m = replay([chunk(rows)], cache, Timing(costs, ISSUING))
    assert m.total_time_s == 14.125
    assert m.stall_time_s == 5.5
    assert m.compute_time_s == 8.625


def test_timeline_shows_the_issue_time():
    cache = ExpertCache(LRUCache, 2, "layer", toy_model())
    m = replay([chunk(THREE_TOKENS)], cache, Timing(COSTS, ISSUING), timeline=(1, 2))
    assert sorted(m.timeline) == sorted([
        ("gpu", 6.0, 7.0, 0, "non-expert"),
        ("gpu", 7.0, 7.125, 0, "issue fetches"),
        ("gpu", 7.125, 7.625, 0, "resident experts"),
        ("h2d", 7.25, 9.25, 2, "demand"),
        ("gpu", 9.25, 9.75, 0, "fetched expert"),
    ])
