"""The compiled clock (simulator.compiled_timing) gives the timed replay's figures to the last bit.

A plain timed replay (demand fetches on one serial link) is run twice, compiled and through the Python replay and
SimPy (`compiled=False`), on hypothesis' random traces and links (several copy engines, issue costs, a link of zero
bandwidth) and on the shipped trace with the default profile; every figure must be equal, floats included.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware_profiles.schema import load_profile
from simulator.compute import StepCosts, step_costs
from simulator.hardware import LinkSpec
from simulator.model import MoEModel
from simulator.replay import Timing
from tests.test_compiled_policies import DEFAULT_TRACE, TWINNED, load
from tests.test_compiled_policies import both as replay_both
from traces.format import TraceChunk


def both(trace, model, name, capacity, scope, timing, rows=1 << 12):
    """The timed replay compiled and in Python: every figure equal, floats to the last bit."""
    twin, python = replay_both(trace, model, name, capacity, scope, rows, timing)
    assert json.dumps(twin.summary()) == json.dumps(python.summary())  # NaN (0/0 on a dead link) equals itself
    assert repr(twin.per_layer) == repr(python.per_layer)
    return twin


def test_shipped_trace_default_profile():
    trace, model = load(DEFAULT_TRACE, 20_000)
    profile = load_profile("rtx4090_pcie4")
    timing = Timing(step_costs(model, profile.gpu), profile.h2d)
    for scope, capacity in (("layer", 16), ("global", 16 * model.moe_layers)):
        metrics = both(trace, model, "lru", capacity, scope, timing)
        assert metrics.stall_time_s > 0 and metrics.total_time_s > metrics.compute_time_s


@st.composite
def cases(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 10))
    top_k = draw(st.integers(1, min(3, experts)))
    model = MoEModel("random", layers, experts, top_k, 0, 2, 2, 2.0, 0)
    tokens = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = tokens * layers
    routed = np.array([rng.choice(experts, top_k, replace=False) for _ in range(rows)], dtype=np.int16)
    routed[rng.random(routed.shape) < 0.15] = -1
    trace = TraceChunk(np.zeros(rows, np.int32), np.arange(tokens, dtype=np.int32).repeat(layers),
                       np.tile(np.arange(layers, dtype=np.int16), tokens), routed)
    times = st.floats(0.0, 1e-3, allow_nan=False)
    link = LinkSpec(bandwidth_Bps=draw(st.sampled_from([0.0, 1e3, 3.3e4, 1e9])), latency_s=draw(times),
                    copy_engines=draw(st.integers(1, 3)), issue_s=draw(st.sampled_from([0.0, 1.7e-6])))
    costs = StepCosts(non_expert_s=draw(times), expert_s=draw(times))
    scope = draw(st.sampled_from(["layer", "global"]))
    capacity = draw(st.integers(top_k, experts if scope == "layer" else experts * layers))
    return trace, model, scope, capacity, Timing(costs, link), draw(st.integers(1, 7))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), name=st.sampled_from(TWINNED))
def test_random_traces_and_links(case, name):
    trace, model, scope, capacity, timing, rows = case
    both(trace, model, name, capacity, scope, timing, rows)
