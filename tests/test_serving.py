"""Batched serving (simulator.serving): batch 1 is the token-by-token replay, identities that hold at every batch
size, hand-computed timelines, and hypothesis properties over small random traces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.lru import LRUCache
from policies.prefetchers.frequency import FrequencyPrefetcher
from policies.schedulers import FCFSScheduler
from simulator.cache import ExpertCache
from simulator.compute import BatchCosts, Roofline, StepCosts
from simulator.hardware import LinkSpec
from simulator.metrics import ITERATION_COLUMNS, REQUEST_COLUMNS
from simulator.model import MoEModel
from simulator.replay import Timing, replay
from simulator.requests import requests_from_tokens
from simulator.scheduler import ServeLimits
from simulator.serving import KvMemory, poisson_arrivals, serve
from simulator.trace_rows import tokens as group_tokens
from tests.helpers import chunk, toy_model

# 24-byte experts over a 12 B/s link: 2 s on the wire after 0.25 s of latency (exact binary fractions throughout).
COSTS = StepCosts(non_expert_s=1.0, expert_s=0.5)
LINK = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, copy_engines=1)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CheckedLRU(LRUCache):
    """LRU that asserts it never holds more than its capacity."""

    def insert(self, key):
        super().insert(key)
        assert len(self.resident) <= self.capacity, f"{len(self.resident)} resident > capacity {self.capacity}"

    def resize(self, capacity):
        evicted = super().resize(capacity)
        assert len(self.resident) <= self.capacity
        return evicted


def synthetic_rows(layers=3, experts=8, top_k=2, sequences=4, length=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(sequences):
        for t in range(length):
            for layer in range(layers):
                rows.append((s, t, layer, rng.choice(experts, top_k, replace=False).tolist()))
    return rows


def requests_of(rows_or_chunks, arrivals=None, prompt=0):
    chunks = rows_or_chunks if isinstance(rows_or_chunks, list) and rows_or_chunks and not isinstance(rows_or_chunks[0], tuple) \
        else [chunk(rows_or_chunks)]
    return requests_from_tokens(list(group_tokens(chunks)), arrivals, prompt)


def serve_rows(rows, model, capacity, timing=None, batch=1, max_tokens=2048, prompt=0, arrivals=None,
               kv=KvMemory(), prefetcher=None, policy=LRUCache):
    cache = ExpertCache(policy, capacity, "layer", model)
    return serve(requests_of(rows, arrivals, prompt), cache, timing, scheduler=FCFSScheduler(),
                 limits=ServeLimits(batch, max_tokens), kv=kv, prefetcher=prefetcher)


# -- 1. batch 1 is the token-by-token replay --------------------------------------------------------------------

ZERO_ATTENTION = BatchCosts(Roofline(0.0, 0.5, 0.0), Roofline(0.0, 1.0, 0.0), 0.0)


@pytest.mark.parametrize("batch_costs", [None, ZERO_ATTENTION], ids=["no-batch-costs", "zero-attention"])
@pytest.mark.parametrize("with_prefetch", [False, True], ids=["demand", "frequency-prefetch"])
def test_batch_one_equals_replay(batch_costs, with_prefetch):
    model = toy_model(layers=3, experts=8, top_k=2)
    rows = synthetic_rows()
    timing = Timing(COSTS, LINK, batch_costs)
    expected = replay([chunk(rows)], ExpertCache(LRUCache, 3, "layer", model), Timing(COSTS, LINK),
                      prefetcher=FrequencyPrefetcher(model) if with_prefetch else None).summary()
    got = serve_rows(rows, model, 3, timing, prefetcher=FrequencyPrefetcher(model) if with_prefetch else None).summary()
    for key in ("hit_rate", "total_time_s", "stall_time_s", "compute_time_s", "bytes_h2d", "accesses", "hits",
                "transfers_h2d", "tokens", "sequences", "layer_steps"):
        assert got[key] == expected[key], key
    if with_prefetch:
        assert expected["prefetch_issued"] > 0
    assert expected["hits"] < expected["accesses"]  # the trace does miss
    assert {k: got[k] for k in expected} == expected  # every token-by-token figure, not only the headline ones


def test_batch_one_hit_rate_only_equals_replay():
    model = toy_model(layers=3, experts=8, top_k=2)
    rows = synthetic_rows(seed=3)
    expected = replay([chunk(rows)], ExpertCache(LRUCache, 2, "layer", model)).summary()
    got = serve_rows(rows, model, 2).summary()
    assert {k: got[k] for k in expected} == expected


# -- 2. identities ----------------------------------------------------------------------------------------------

def distinct_pairs(chunks) -> int:
    pairs = set()
    for c in chunks:
        for layer, experts in zip(c.layer.tolist(), c.experts.tolist()):
            pairs.update((layer, e) for e in experts if e >= 0)
    return len(pairs)


def check_identities(chunks, model, prompt):
    tokens = list(group_tokens(chunks))
    prompt_total = sum(r.prompt_tokens for r in requests_from_tokens(tokens, None, prompt))
    pairs = distinct_pairs(chunks)
    accesses = None
    for batch in (1, 4, 16):
        cache = ExpertCache(CheckedLRU, model.experts_per_layer, "layer", model)
        m = serve(requests_from_tokens(tokens, None, prompt), cache, None, scheduler=FCFSScheduler(),
                  limits=ServeLimits(batch, 64))
        assert m.expert_loads == pairs, batch
        assert m.expert_hits + m.expert_loads == m.expert_lookups
        assert m.tokens == len(tokens)
        if accesses is None:
            accesses = m.accesses
        assert m.accesses == accesses, batch
        assert sum(row[5] for row in m.requests) == len(tokens) - prompt_total
        assert m.summary()["output_tokens"] == len(tokens) - prompt_total
        assert sum(it[3] for it in m.iterations) == len(tokens)


def test_identities_synthetic():
    model = toy_model(layers=3, experts=8, top_k=2)
    rows = synthetic_rows(sequences=6, length=7, seed=1)
    check_identities([chunk(rows)], model, prompt=0)
    check_identities([chunk(rows)], model, prompt=3)


def shared_moe_beyond_prefix(files=4, tokens=12):
    path = Path(__file__).parents[1].parent / "shared" / "traces" / "real" / "moe-beyond-test-predicted"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (fresh clone without ../shared)")
    from simulator.presets import get_preset
    from simulator.trace_rows import TraceChunk
    from traces.importers.moe_beyond import read_csv

    model = get_preset("deepseek-v2-lite")
    out = []
    for sequence in range(files):
        c = read_csv(path / f"prompt_{sequence + 1}_data_predicted.csv", model, sequence)
        n = tokens * model.moe_layers
        out.append(TraceChunk(c.sequence[:n], c.token[:n], c.layer[:n], c.experts[:n]))
    return model, out


def test_identities_moe_beyond_prefix():
    model, chunks = shared_moe_beyond_prefix()
    check_identities(chunks, model, prompt=4)


def test_timed_identities_synthetic():
    model = toy_model(layers=3, experts=8, top_k=2)
    rows = synthetic_rows(sequences=5, length=5, seed=2)
    timing = Timing(COSTS, LINK, BatchCosts(Roofline(0.0, 0.5, 0.125), Roofline(0.0, 1.0, 0.25), 0.0625))
    for batch in (1, 3, 8):
        m = serve_rows(rows, model, 3, timing, batch=batch, max_tokens=5, prompt=2)
        for _, arrival, first, finish, _, _, _ in m.requests:
            assert arrival <= first <= finish
        assert max(row[3] for row in m.requests) == m.total_time_s
        assert m.expert_hits + m.expert_loads == m.expert_lookups


@pytest.mark.parametrize("rate", [0.02, 0.2, 5.0])
def test_poisson_batch_one_busy_time_is_offline_total(rate):
    model = toy_model(layers=3, experts=8, top_k=2)
    rows = synthetic_rows(sequences=6, length=4, seed=4)
    offline = serve_rows(rows, model, 3, Timing(COSTS, LINK))
    arrivals = poisson_arrivals(list(range(6)), rate, seed=7)
    m = serve_rows(rows, model, 3, Timing(COSTS, LINK), arrivals=arrivals)
    busy, previous = 0.0, 0.0
    for _, arrival, _, finish, _, _, _ in sorted(m.requests, key=lambda r: r[1]):
        busy += finish - max(arrival, previous)
        previous = finish
    assert busy == pytest.approx(offline.total_time_s, rel=1e-9)
    # the rest of the makespan is the wait for arrivals, which the metrics report apart
    assert m.idle_time_s == pytest.approx(m.total_time_s - busy, rel=1e-9, abs=1e-12) and offline.idle_time_s == 0.0
    assert m.total_time_s == pytest.approx(m.compute_time_s + m.stall_time_s + m.idle_time_s, rel=1e-12)
    assert (m.hits, m.accesses, m.bytes_h2d) == (offline.hits, offline.accesses, offline.bytes_h2d)
    for _, arrival, first, finish, _, _, queued in m.requests:
        assert arrival <= first <= finish and queued >= 0


# -- 3. hand-computed timelines ---------------------------------------------------------------------------------

def test_two_requests_chunked_prompt_timeline():
    # One MoE layer, 4 experts, top-2, cache of 4 (LRU). Expert roofline max(0.25 n, 0.5) (0.5 for n <= 2);
    # non-expert roofline max(0.25 n, 1.0) (1.0 for n <= 4) plus 0.125 s per context token; 24-byte experts on the
    # 12 B/s, 0.25 s link: a fetch takes 2.25 s, serially.
    # Request A (seq 0): 2 tokens, no prompt. Request B (seq 1): 3 tokens, prompt 2. max_batch 2, 2 tokens per
    # iteration.
    # it 1 (t=0): A decode pos0 [0,1] (ctx 1), B prompt chunk pos0 [0,2] (ctx 1). U = [0,1,2], all miss.
    #   router 0 + 1.0 + 2·0.125 = 1.25; fetches end 3.5, 5.75, 8.0; each computed 0.5 after arrival:
    #   4.0, 6.25, 8.5 (stall 2.25 + 1.75 + 1.75 = 5.75). A's first token at 8.5.
    # it 2 (t=8.5): A decode pos1 [0,1] (ctx 2), B chunk pos1 [1,2] (ctx 2). All hit. router 8.5 + 1.0 + 0.5 = 10.0,
    #   three experts 0.5 each: 11.5. A finishes; B's prompt is done: B's first token at 11.5.
    # it 3 (t=11.5): B decode pos2 [3,0] (ctx 3), alone: router 11.5 + 1.0 + 0.375 = 12.875; e0 hits (to 13.375),
    #   e3 arrives 12.875 + 2.25 = 15.125 (stall 1.75), computed to 15.625.
    model = toy_model(layers=1, experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [0, 1]), (1, 0, 0, [0, 2]), (1, 1, 0, [1, 2]), (1, 2, 0, [3, 0])]
    timing = Timing(COSTS, LINK, BatchCosts(Roofline(0.0, 0.5, 0.25), Roofline(0.0, 1.0, 0.25), 0.125))
    m = serve_rows(rows, model, 4, timing, batch=2, max_tokens=2, prompt={1: 2})
    assert ITERATION_COLUMNS == ("start_s", "end_s", "requests", "tokens", "prefill_tokens", "kv_bytes", "expert_slots")
    assert m.iterations == [(0.0, 8.5, 2, 2, 1, 0, 4), (8.5, 11.5, 2, 2, 1, 0, 4), (11.5, 15.625, 1, 1, 0, 0, 4)]
    assert REQUEST_COLUMNS[:6] == ("sequence", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens")
    assert m.requests == [(0, 0.0, 8.5, 11.5, 0, 2, 0.0), (1, 0.0, 11.5, 15.625, 2, 1, 0.0)]
    assert m.total_time_s == 15.625
    assert m.stall_time_s == 7.5
    assert m.compute_time_s == 2.75 + 3.0 + 2.375
    assert (m.accesses, m.hits) == (10, 5)
    assert (m.expert_lookups, m.expert_hits, m.expert_loads) == (8, 4, 4)
    assert (m.bytes_h2d, m.transfers_h2d) == (96, 4)
    s = m.summary()
    assert s["ttft_mean_s"] == (8.5 + 11.5) / 2
    assert s["e2e_mean_s"] == (11.5 + 15.625) / 2
    assert s["prompt_tokens"] == 2 and s["output_tokens"] == 3 and s["iterations"] == 3


def test_overfull_step_direct():
    # capacity 2 = top_k; resident LRU order [0, 1]. U = [0, 2, 3, 1]: misses [2, 3] (judged first); hits 0 then
    # 1 (order stays [0, 1]); admit 2 evicts 0 (LRU, not among the misses still to come); admit 3 evicts 1.
    model = toy_model(layers=1, experts=4, top_k=2)
    cache = ExpertCache(CheckedLRU, 2, "layer", model)
    assert cache.access(0, [0, 1]) == [0, 1]
    assert cache.access(0, [0, 2, 3, 1]) == [2, 3]
    assert list(cache.policies[0].resident) == [2, 3]


@pytest.mark.parametrize("timed", [False, True])
def test_overfull_step_in_serve(timed):
    # Two requests, batch 2, capacity 2 = top_k.
    # it 1: A [0,1], B [0,1]: U = [0,1], both miss: accesses 4, hits 0; lookups 2, loads 2. Resident [0, 1].
    # it 2: A [0,2], B [3,1]: U = [0,2,3,1] > capacity: misses [2,3]; hits 0, 1 (one row each): accesses 4,
    #   hits 2; lookups 4, expert hits 2, loads 2. Admitting 2 evicts 0, admitting 3 evicts 1: resident [2, 3].
    # it 3: A [2,0], B [2,3]: U = [2,0,3] > capacity: miss [0]; hits 2 (two rows) and 3: accesses 4, hits 3;
    #   lookups 3, expert hits 2, loads 1. Hits leave order [2, 3]; admitting 0 evicts 2: resident [3, 0].
    model = toy_model(layers=1, experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [0, 2]), (0, 2, 0, [2, 0]),
            (1, 0, 0, [0, 1]), (1, 1, 0, [3, 1]), (1, 2, 0, [2, 3])]
    cache = ExpertCache(CheckedLRU, 2, "layer", model)
    m = serve(requests_of(rows), cache, Timing(COSTS, LINK) if timed else None, scheduler=FCFSScheduler(),
              limits=ServeLimits(2, 8))
    assert (m.accesses, m.hits) == (12, 5)
    assert (m.expert_lookups, m.expert_hits, m.expert_loads) == (9, 4, 5)
    assert list(cache.policies[0].resident) == [3, 0]
    assert m.bytes_h2d == 5 * 24
    if timed:
        assert math.isclose(m.total_time_s, m.compute_time_s + m.stall_time_s, rel_tol=1e-12)


def test_dynamic_kv_gives_slots_and_takes_them_back():
    # 24-byte experts, 24 bytes of KV per token, budget 168 bytes; configured cache 4 slots (1 layer).
    # Admission: A (2 tokens, 48 B at full length) and B (3 tokens, 72 B) + the smallest cache (2·24) = 168 fit.
    # it 1: KV after it (1 + 1) · 24 = 48 -> (168 - 48) / 24 = 5 slots, capped at 4. A [0,1], B [2,3]: 4 misses,
    #   resident LRU [0,1,2,3].
    # it 2: KV (2 + 2) · 24 = 96 -> 3 slots: resize evicts LRU 0. A [1,2], B [2,3]: all 4 accesses hit.
    # it 3: A has finished: KV 3 · 24 = 72 -> 4 slots. B [0,1]: 0 misses (it was evicted), 1 hits.
    model = toy_model(layers=1, experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2]),
            (1, 0, 0, [2, 3]), (1, 1, 0, [2, 3]), (1, 2, 0, [0, 1])]
    kv = KvMemory("dynamic", kv_bytes_per_token=24, budget_bytes=168, bytes_per_expert=24)
    cache = ExpertCache(CheckedLRU, 4, "layer", model)
    m = serve(requests_of(rows), cache, None, scheduler=FCFSScheduler(), limits=ServeLimits(2, 16), kv=kv)
    assert [it[5] for it in m.iterations] == [48, 96, 72]
    assert [it[6] for it in m.iterations] == [4, 3, 4]
    assert [it[2] for it in m.iterations] == [2, 2, 1]
    assert (m.accesses, m.hits) == (10, 5)
    assert cache.capacities == [4]
    s = m.summary()
    assert s["min_expert_slots"] == 3 and s["peak_kv_bytes"] == 96


def test_dynamic_kv_defers_admission():
    # Budget 144: A (48 B) + cache floor 48 fit; B would need 48 + 72 + 48 = 168 > 144, so B waits until A finishes.
    model = toy_model(layers=1, experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2]),
            (1, 0, 0, [2, 3]), (1, 1, 0, [2, 3]), (1, 2, 0, [0, 1])]
    kv = KvMemory("dynamic", kv_bytes_per_token=24, budget_bytes=144, bytes_per_expert=24)
    m = serve(requests_of(rows), ExpertCache(CheckedLRU, 4, "layer", model), Timing(COSTS, LINK),
              scheduler=FCFSScheduler(), limits=ServeLimits(2, 16), kv=kv)
    # slots: A alone: (144 - 24)/24 = 5 -> 4; (144 - 48)/24 = 4; then B: 120/24=5 -> 4, 96/24 = 4, 72/24 = 3.
    assert [it[2] for it in m.iterations] == [1, 1, 1, 1, 1]
    assert [it[5] for it in m.iterations] == [24, 48, 24, 48, 72]
    assert [it[6] for it in m.iterations] == [4, 4, 4, 4, 3]
    a, b = m.requests
    assert b[6] == pytest.approx(a[3])  # B queued until A finished


# -- 4. properties ------------------------------------------------------------------------------------------------

@st.composite
def serve_cases(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 8))
    k = draw(st.integers(1, min(experts, 3)))
    capacity = draw(st.integers(k, experts))
    model = MoEModel(name="tiny", moe_layers=layers, experts_per_layer=experts, top_k=k, shared_experts=0,
                     hidden_size=2, expert_intermediate_size=2, param_bytes=2, non_expert_params_per_layer=0)
    rows = []
    sequences = draw(st.integers(1, 4))
    for s in range(sequences):
        for t in range(draw(st.integers(1, 5))):
            for layer in range(layers):
                rows.append((s, t, layer, draw(st.permutations(range(experts)))[:k]))
    batch = draw(st.integers(1, 8))
    max_tokens = draw(st.integers(1, 12))
    prompt = draw(st.integers(0, 4))
    rate = draw(st.one_of(st.none(), st.floats(0.01, 100.0)))
    seed = draw(st.integers(0, 2**16))
    return model, rows, capacity, batch, max_tokens, prompt, rate, seed


PROPERTY_TIMING = Timing(COSTS, LINK, BatchCosts(Roofline(0.01, 0.5, 0.125), Roofline(0.1, 1.0, 0.25), 0.03125))


def run_case(case, prefetch=False):
    model, rows, capacity, batch, max_tokens, prompt, rate, seed = case
    arrivals = poisson_arrivals(sorted({r[0] for r in rows}), rate, seed) if rate is not None else None
    cache = ExpertCache(CheckedLRU, capacity, "layer", model)
    m = serve(requests_of(rows, arrivals, prompt), cache, PROPERTY_TIMING, scheduler=FCFSScheduler(),
              limits=ServeLimits(batch, max_tokens), prefetcher=FrequencyPrefetcher(model) if prefetch else None)
    return m, cache


@SETTINGS
@given(case=serve_cases())
def test_serving_properties(case):
    model, rows, capacity, batch, max_tokens, prompt, rate, seed = case
    m, cache = run_case(case)
    per_layer = m.per_layer
    expected = [0] * model.moe_layers
    for _, _, layer, ids in rows:
        expected[layer] += len(ids)
    assert per_layer.accesses == expected
    assert m.accesses == sum(expected) and m.hits == sum(per_layer.hits)
    assert 0 <= m.hits <= m.accesses and m.hits + m.misses == m.accesses
    assert all(0 <= h <= a for h, a in zip(per_layer.hits, per_layer.accesses))
    assert m.stall_time_s >= 0 and all(s >= 0 for s in per_layer.stall_s)
    if rate is None:
        assert math.isclose(m.total_time_s, m.compute_time_s + m.stall_time_s, rel_tol=1e-9, abs_tol=1e-12)
    else:
        assert m.total_time_s >= (m.compute_time_s + m.stall_time_s) * (1 - 1e-9)
    assert m.bytes_h2d == m.transfers_h2d * model.bytes_per_expert == m.expert_loads * model.bytes_per_expert
    assert sum(per_layer.bytes_h2d) == m.bytes_h2d
    assert m.expert_hits + m.expert_loads == m.expert_lookups
    assert m.expert_lookups <= m.accesses
    assert all(len(p) <= c for p, c in zip(cache.policies, cache.capacities))
    # requests and iterations
    n_tokens = sum(1 for _ in group_tokens([chunk(rows)]))
    assert m.tokens == n_tokens
    prompts = sum(row[4] for row in m.requests)
    assert sum(row[5] for row in m.requests) == n_tokens - prompts
    for _, arrival, first, finish, _, _, queued in m.requests:
        assert arrival <= first <= finish <= m.total_time_s
        assert queued >= 0
    assert sum(it[3] for it in m.iterations) == n_tokens
    for start, end, requests, tokens, prefill, _, _ in m.iterations:
        assert start <= end and 1 <= requests <= batch and requests <= tokens <= max_tokens and 0 <= prefill <= tokens
    starts = [it[0] for it in m.iterations]
    assert starts == sorted(starts)
    # byte-identical rerun
    again, _ = run_case(case)
    assert again.summary() == m.summary()
    assert again.iterations == m.iterations and again.requests == m.requests


@SETTINGS
@given(case=serve_cases())
def test_serving_properties_with_prefetch(case):
    m, cache = run_case(case, prefetch=True)
    assert m.hits + m.misses == m.accesses and 0 <= m.hits <= m.accesses
    assert m.stall_time_s >= 0
    assert m.bytes_h2d == m.transfers_h2d * case[0].bytes_per_expert
    assert all(len(p) <= c for p, c in zip(cache.policies, cache.capacities))
    again, _ = run_case(case, prefetch=True)
    assert again.summary() == m.summary()


@SETTINGS
@given(n=st.integers(0, 50), rate=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_poisson_arrivals_monotone(n, rate, seed):
    arrivals = poisson_arrivals(list(range(n)), rate, seed)
    times = [arrivals[s] for s in range(n)]
    assert times == sorted(times)
    assert all(t >= 0 for t in times)
    assert poisson_arrivals(list(range(n)), rate, seed) == arrivals


@SETTINGS
@given(case=serve_cases(), prefetch=st.booleans())
def test_batch_one_offline_equals_replay_property(case, prefetch):
    model, rows, capacity, _, _, _, _, _ = case
    expected = replay([chunk(rows)], ExpertCache(LRUCache, capacity, "layer", model), Timing(COSTS, LINK),
                      prefetcher=FrequencyPrefetcher(model) if prefetch else None).summary()
    got = serve_rows(rows, model, capacity, Timing(COSTS, LINK), batch=1,
                     prefetcher=FrequencyPrefetcher(model) if prefetch else None).summary()
    assert {k: got[k] for k in expected} == expected


@SETTINGS
@given(case=serve_cases())
def test_all_experts_cache_loads_each_pair_once(case):
    model, rows, _, batch, max_tokens, prompt, _, _ = case
    m = serve_rows(rows, model, model.experts_per_layer, None, batch=batch, max_tokens=max_tokens, prompt=prompt)
    assert m.expert_loads == len({(layer, e) for _, _, layer, ids in rows for e in ids})
    assert m.hits + m.misses == m.accesses
    assert m.expert_hits + m.expert_loads == m.expert_lookups


@SETTINGS
@given(case=serve_cases(), rate=st.floats(0.01, 100.0))
def test_poisson_batch_one_busy_time_property(case, rate):
    model, rows, capacity, _, max_tokens, prompt, _, seed = case
    offline = serve_rows(rows, model, capacity, PROPERTY_TIMING, batch=1, max_tokens=max_tokens, prompt=prompt)
    arrivals = poisson_arrivals(sorted({r[0] for r in rows}), rate, seed)
    m = serve_rows(rows, model, capacity, PROPERTY_TIMING, batch=1, max_tokens=max_tokens, prompt=prompt,
                   arrivals=arrivals)
    busy, previous = 0.0, 0.0
    for _, arrival, _, finish, _, _, _ in sorted(m.requests, key=lambda r: r[1]):
        busy += finish - max(arrival, previous)
        previous = finish
    assert busy == pytest.approx(offline.total_time_s, rel=1e-9)
    assert m.idle_time_s == pytest.approx(m.total_time_s - busy, rel=1e-9, abs=1e-12)
    assert m.total_time_s == pytest.approx(m.compute_time_s + m.stall_time_s + m.idle_time_s, rel=1e-12)
    assert (m.hits, m.accesses, m.bytes_h2d, m.expert_loads) == (offline.hits, offline.accesses, offline.bytes_h2d,
                                                                  offline.expert_loads)


@SETTINGS
@given(case=serve_cases(), kv_per_token=st.integers(1, 48), extra_slots=st.integers(0, 30), prefetch=st.booleans())
def test_dynamic_kv_properties(case, kv_per_token, extra_slots, prefetch):
    model, rows, capacity, batch, max_tokens, prompt, rate, seed = case
    bpe, layers = model.bytes_per_expert, model.moe_layers
    longest = max(sum(1 for r in rows if r[0] == s and r[2] == 0) for s in {r[0] for r in rows})
    # room for the longest request's KV beside the smallest expert cache, and then some
    budget = longest * kv_per_token + model.top_k * layers * bpe + extra_slots * bpe
    kv = KvMemory("dynamic", kv_bytes_per_token=kv_per_token, budget_bytes=budget, bytes_per_expert=bpe)
    arrivals = poisson_arrivals(sorted({r[0] for r in rows}), rate, seed) if rate is not None else None
    cache = ExpertCache(CheckedLRU, capacity, "layer", model)
    m = serve(requests_of(rows, arrivals, prompt), cache, PROPERTY_TIMING, scheduler=FCFSScheduler(),
              limits=ServeLimits(batch, max_tokens), kv=kv, prefetcher=FrequencyPrefetcher(model) if prefetch else None)
    for _, _, _, _, _, kv_bytes, slots in m.iterations:
        assert model.top_k * layers <= slots <= capacity * layers
        assert kv_bytes + slots * bpe <= budget
    assert m.hits + m.misses == m.accesses
    assert m.tokens == sum(it[3] for it in m.iterations)
    assert all(row[3] is not None for row in m.requests)


def test_cpu_miss_choice_depends_on_the_batch():
    # Fiddler's choice for n rows: CPU time 0.2·n s against a 1 s transfer. One layer, 8 requests that all route
    # to experts [0, 1] (cache of 2): at batch 1 the CPU wins (0.2 < 1), so no miss is ever loaded and every access
    # runs on the CPU; at batch 8 one step serves 8 rows per expert (1.6 > 1): both experts are loaded once and then hit.
    from policies.miss_handling import CPUExecution
    from simulator.compute import MissCosts

    model = toy_model(layers=1, experts=4, top_k=2)
    rows = [(seq, 0, 0, [0, 1]) for seq in range(8)]
    costs = lambda n: MissCosts(transfer_s=1.0, cpu_expert_s=0.2 * n, activation_round_trip_s=0.0)
    timing = Timing(COSTS, LINK, BatchCosts(Roofline(0.0, 0.5, 0.0), Roofline(0.0, 1.0, 0.0), 0.0, costs))
    results = {}
    for batch in (1, 8):
        cache = ExpertCache(LRUCache, 2, "layer", model)
        results[batch] = serve(requests_of(rows), cache, timing, scheduler=FCFSScheduler(), limits=ServeLimits(batch, 64),
                               miss_handler=CPUExecution(), miss_costs=costs(1))
    assert results[1].cpu_executed == 16 and results[1].expert_loads == 0 and results[1].hits == 0
    assert results[8].cpu_executed == 0 and results[8].expert_loads == 2 and results[8].accesses == 16


def _phased_trace(path, phases_by_token):
    """A 2-layer trace whose tokens (sequence, token, phase code) are given; two rows per token."""
    from traces.format import TraceMeta, TraceWriter

    model = toy_model(layers=2, experts=4, top_k=2)
    sequence, token, layer, phase = [], [], [], []
    for s, t, p in phases_by_token:
        for l in range(2):
            sequence.append(s), token.append(t), layer.append(l), phase.append(p)
    c = chunk([(s, t, l, [0, 1]) for s, t, l in zip(sequence, token, layer)])
    c.phase = np.asarray(phase, dtype=np.int8)
    with TraceWriter(path, TraceMeta(model, [0, 1]), phase=True) as w:
        w.write(c)
    return path


def test_prompt_tokens_from_the_phase_column(tmp_path):
    from simulator.errors import InputError
    from traces.format import TraceFile

    # sequence 0: 3 prefill then 2 decode tokens; sequence 1: decode only; sequence 2: 1 prefill, 1 decode
    good = _phased_trace(tmp_path / "good.parquet", [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 1), (0, 4, 1),
                                                     (1, 0, 1), (1, 1, 1), (2, 0, 0), (2, 1, 1)])
    assert TraceFile(good).prompt_tokens() == {0: 3, 2: 1}
    bad = _phased_trace(tmp_path / "bad.parquet", [(0, 0, 0), (0, 1, 1), (0, 2, 0)])
    with pytest.raises(InputError, match=r"row 4: phase=prefill after a decode token of sequence 0"):
        TraceFile(bad).prompt_tokens()


def test_handled_misses_keep_their_place_in_u_on_the_link():
    # Two rows: [0, 1] and [2, 3]; U = [0, 1, 2, 3], all missing. The handler fetches expert 2 (router rank 0 in its
    # row) as a half-size copy and loads the others: the link carries them in U order, 0, 1, 2, 3.
    from simulator.compute import MissCosts
    from simulator.miss_handler import LOAD, LOW_PRECISION, MissHandler

    class HalfCopyOfTwo(MissHandler):
        def decide(self, layer, expert, rank, weight, costs):
            assert rank == (0 if expert in (0, 2) else 1)  # the router rank in the first row routing to it
            return (LOW_PRECISION, 0.5) if expert == 2 else (LOAD, 1.0)

    model = toy_model(layers=1, experts=4, top_k=2)
    rows = [(0, 0, 0, [0, 1]), (1, 0, 0, [2, 3])]
    m = serve(requests_of(rows), ExpertCache(LRUCache, 4, "layer", model), Timing(COSTS, LINK), scheduler=FCFSScheduler(),
              limits=ServeLimits(2, 8), miss_handler=HalfCopyOfTwo(), miss_costs=MissCosts(1.0, 1.0, 0.0), timeline=(0, 2))
    link = [e for e in m.timeline if e.resource == "h2d"]
    assert [e.id for e in link] == [0, 1, 2, 3]
    assert m.approximated_low_precision == 1 and m.expert_loads == 3
