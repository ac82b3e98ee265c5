"""Properties of the replay that hold for every trace, policy, scope and capacity (hypothesis, small random traces)."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.registry import POLICIES, policy_class
from simulator.cache import SCOPES, ExpertCache
from simulator.compute import StepCosts
from simulator.hardware import LinkSpec
from simulator.model import MoEModel
from simulator.replay import Timing, replay
from traces.format import TraceChunk

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Case:
    """A small trace with the cache it is replayed through."""

    def __init__(self, model, rows, scope, capacity, reset, cuts):
        self.model = model
        self.rows = rows  # [(sequence, token, layer, [k ids, -1 = none])], in trace order
        self.scope = scope
        self.capacity = capacity
        self.reset = reset
        self.cuts = cuts  # row indices where a new chunk starts

    def chunks(self) -> list[TraceChunk]:
        seq, tok, lay, experts = zip(*self.rows)
        whole = TraceChunk(
            sequence=np.array(seq, dtype=np.int32),
            token=np.array(tok, dtype=np.int32),
            layer=np.array(lay, dtype=np.int16),
            experts=np.array(experts, dtype=np.int16).reshape(len(self.rows), self.model.top_k),
        )
        bounds = [0, *self.cuts, len(self.rows)]
        return [
            TraceChunk(whole.sequence[a:b], whole.token[a:b], whole.layer[a:b], whole.experts[a:b])
            for a, b in zip(bounds, bounds[1:])
        ]

    def cache(self, policy: str, cls=ExpertCache) -> ExpertCache:
        cache = cls(policy_class(policy), self.capacity, self.scope, self.model, reset_per_sequence=self.reset)
        if cache.offline:
            whole = self.chunks()
            cache.prepare(np.concatenate([c.sequence for c in whole]), np.concatenate([c.layer for c in whole]),
                          np.concatenate([c.experts for c in whole]))
        return cache

    def __repr__(self):
        m = self.model
        return (f"Case(L={m.moe_layers}, E={m.experts_per_layer}, k={m.top_k}, scope={self.scope!r}, "
                f"capacity={self.capacity}, reset_per_sequence={self.reset}, cuts={self.cuts}, rows={self.rows})")


@st.composite
def cases(draw) -> Case:
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 8))
    k = draw(st.integers(1, min(experts, 3)))
    scope = draw(st.sampled_from(SCOPES))
    capacity = draw(st.integers(k, experts if scope == "layer" else layers * experts))
    model = MoEModel(name="tiny", moe_layers=layers, experts_per_layer=experts, top_k=k, shared_experts=0,
                     hidden_size=16, expert_intermediate_size=8, param_bytes=2, non_expert_params_per_layer=100)
    gaps = draw(st.booleans())  # some traces leave experts unrecorded (-1)
    rows = []
    sequence = -1
    for _ in range(draw(st.integers(1, 3))):
        sequence += draw(st.integers(1, 3))  # ids need not be consecutive
        for token in range(draw(st.integers(1, 6))):
            for layer in range(layers):
                ids = draw(st.permutations(range(experts)))[:k]
                if gaps:
                    missing = draw(st.sets(st.integers(0, k - 1), max_size=k))
                    ids = [-1 if i in missing else e for i, e in enumerate(ids)]
                rows.append((sequence, token, layer, ids))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(rows) - 1)), max_size=3)) - {len(rows)})
    return Case(model, rows, scope, capacity, draw(st.booleans()), cuts)


timings = st.builds(
    lambda non_expert, expert, bandwidth, latency, engines, sharing: Timing(
        StepCosts(non_expert_s=non_expert, expert_s=expert), LinkSpec(bandwidth, latency, engines, sharing=sharing)
    ),
    st.floats(0.0, 1e-3),
    st.floats(1e-7, 1e-3),
    st.floats(1e6, 1e11),
    st.floats(0.0, 1e-4),
    st.integers(1, 3),
    st.sampled_from(["serial", "shared"]),
)


class ObservedCache(ExpertCache):
    """Judges every step independently of the cache and checks it after every step."""

    def access(self, layer, experts):
        policy, offset = self.policies[layer], self.offsets[layer]
        keys = [offset + e for e in experts]
        resident_before = [key in policy.resident for key in keys]
        misses = super().access(layer, experts)
        assert misses == [e for e, hit in zip(experts, resident_before) if not hit], "misses are judged before loading"
        assert all(key in policy.resident for key in keys), "every expert of the step is resident at its end"
        for instance, capacity in zip({id(p): p for p in self.policies}.values(), self.capacities):
            assert len(instance) <= capacity, f"{len(instance)} resident > capacity {capacity}"
        return misses


def accesses_by_layer(case: Case) -> list[int]:
    counts = [0] * case.model.moe_layers
    for _, _, layer, ids in case.rows:
        counts[layer] += sum(e >= 0 for e in ids)
    return counts


@SETTINGS
@given(case=cases(), policy=st.sampled_from(sorted(POLICIES)))
def test_counts_add_up_and_capacity_holds(case, policy):
    metrics = replay(case.chunks(), case.cache(policy, ObservedCache))
    per_layer = metrics.per_layer
    expected = accesses_by_layer(case)
    assert per_layer.accesses == expected
    assert metrics.accesses == sum(expected) == sum(per_layer.accesses)
    assert metrics.hits == sum(per_layer.hits)
    assert all(0 <= h <= a for h, a in zip(per_layer.hits, per_layer.accesses))
    assert metrics.hits + metrics.misses == metrics.accesses
    table = metrics.layer_table()
    assert [h + m for h, m in zip(table["hits"], table["misses"])] == expected
    assert metrics.layer_steps == len(case.rows)
    assert metrics.sequences == len({row[0] for row in case.rows})
    assert metrics.tokens == len({(row[0], row[1]) for row in case.rows})
    assert metrics.bytes_h2d == metrics.misses * case.model.bytes_per_expert == sum(per_layer.bytes_h2d)


@SETTINGS
@given(case=cases())
def test_no_policy_beats_belady(case):
    """Belady (farthest next use, always admits) is the optimum among policies that always load a missed expert."""
    belady = replay(case.chunks(), case.cache("belady")).hits
    for policy in sorted(POLICIES):
        hits = replay(case.chunks(), case.cache(policy)).hits
        assert hits <= belady, f"{policy} has {hits} hits, Belady {belady}"


@SETTINGS
@given(case=cases(), policy=st.sampled_from(sorted(POLICIES)), timing=timings)
def test_timed_replay_accounting(case, policy, timing):
    metrics = replay(case.chunks(), case.cache(policy), timing)
    untimed = replay(case.chunks(), case.cache(policy))
    assert (metrics.hits, metrics.accesses) == (untimed.hits, untimed.accesses), "timing does not change hits"
    assert metrics.stall_time_s >= 0
    assert all(s >= 0 for s in metrics.per_layer.stall_s)
    assert math.isclose(sum(metrics.per_layer.stall_s), metrics.stall_time_s, rel_tol=1e-9, abs_tol=1e-15)
    # total is the clock's end, compute and stall are sums: equal up to rounding, hence the relative 1e-9
    assert metrics.total_time_s >= metrics.compute_time_s * (1 - 1e-9)
    assert math.isclose(metrics.total_time_s, metrics.compute_time_s + metrics.stall_time_s, rel_tol=1e-9, abs_tol=1e-15)
    expected_compute = sum(
        timing.costs.non_expert_s + sum(e >= 0 for e in ids) * timing.costs.expert_s for *_, ids in case.rows
    )
    assert math.isclose(metrics.compute_time_s, expected_compute, rel_tol=1e-9, abs_tol=1e-15)
    bytes_per_expert = case.model.bytes_per_expert
    assert metrics.bytes_h2d == metrics.misses * bytes_per_expert == sum(metrics.per_layer.bytes_h2d)
    assert metrics.transfers_h2d == metrics.misses
    assert math.isclose(metrics.h2d_busy_s, metrics.misses * bytes_per_expert / timing.h2d.bandwidth_Bps, rel_tol=1e-9)
    if metrics.misses == 0:
        assert metrics.stall_time_s == 0


@SETTINGS
@given(case=cases(), policy=st.sampled_from(sorted(POLICIES)), timing=st.none() | timings)
def test_same_inputs_same_summary(case, policy, timing):
    first = replay(case.chunks(), case.cache(policy), timing)
    second = replay(case.chunks(), case.cache(policy), timing)
    assert json.dumps(first.summary()) == json.dumps(second.summary())
    assert json.dumps(first.layer_table()) == json.dumps(second.layer_table())


ONLINE = sorted(p for p in POLICIES if not ExpertCache(policy_class(p), 2, "layer", MoEModel(
    "tiny", 1, 2, 1, 0, 16, 8, 2, 100)).offline)


@SETTINGS
@given(case=cases(), policy=st.sampled_from(ONLINE), timing=st.none() | timings,
       prefetcher=st.sampled_from(["oracle", "frequency", "transition"]), horizon=st.integers(1, 3))
def test_prefetching_keeps_the_accounting(case, policy, timing, prefetcher, horizon):
    """With a prefetcher contending for the link (serial or shared), or without a clock: counts add up, stall is never
    negative, time is compute plus stall, every byte on the link is a demand fetch or a prefetch of one whole expert,
    the prefetch outcomes partition the prefetches issued (a reset per sequence too), and the link is busy at most all
    of the time."""
    from policies.prefetchers import PREFETCHERS

    cls = PREFETCHERS.load(prefetcher)
    m = replay(case.chunks(), case.cache(policy), timing, prefetcher=cls(case.model, horizon=horizon))
    s = m.summary()
    assert m.hits + m.misses == m.accesses == sum(accesses_by_layer(case))
    assert m.stall_time_s >= 0 and all(x >= 0 for x in m.per_layer.stall_s)
    assert math.isclose(m.total_time_s, m.compute_time_s + m.stall_time_s, rel_tol=1e-9, abs_tol=1e-15)
    assert s["bytes_h2d"] == s["bytes_demand"] + s["bytes_prefetch"]
    if timing is not None:  # transfers are counted on the links, which only a clocked replay has
        assert s["bytes_h2d"] == m.transfers_h2d * case.model.bytes_per_expert
    assert 0 <= s["prefetch_useful"] + s["prefetch_late"] <= s["prefetch_issued"]
    assert s["prefetch_issued"] == s["prefetch_useful"] + s["prefetch_late"] + s["prefetch_wasted"] + s["prefetch_unused_at_end"]
    if timing is not None:
        assert 0.0 <= s["h2d_utilisation_demand"] <= s["h2d_utilisation"] <= 1.0 + 1e-12
