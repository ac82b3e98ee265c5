"""Batched serving judged by the compiled twins (simulator.serving's `_TwinSteps`) reports what the Python policies
report: every counter, for every online policy with a twin, both scopes, several capacities and batch sizes, with
prefill rows (steps whose experts outnumber the cache's slots) and without; on the shipped trace, 24 prompts of
the shared DeepSeek archive and hypothesis' random traces. Timed, with the compiled clock against Python and SimPy,
every figure is equal to the last bit, request arrivals (which make the clock decide the iterations) included."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware_profiles.schema import load_profile
from policies.registry import POLICIES, policy_class
from policies.schedulers import FCFSScheduler
from simulator.cache import ExpertCache
from simulator.compute import BatchCosts, Roofline, StepCosts, batch_costs, step_costs
from simulator.hardware import LinkSpec
from simulator.model import MoEModel
from simulator.replay import Timing
from simulator.requests import requests_from_tokens
from simulator.scheduler import ServeLimits
from simulator.serving import poisson_arrivals, serve
from simulator.trace_rows import tokens
from traces.format import TraceChunk, TraceFile

DEFAULT_TRACE = Path(__file__).parents[1] / "traces" / "data" / "default.parquet"
ONLINE_TWINNED = sorted(name for name in POLICIES
                        if policy_class(name).__dict__.get("compiled") and not policy_class(name).offline)


def served(trace: TraceChunk, model: MoEModel, name: str, capacity: int, scope: str, batch: int, prompt: int,
           compiled: bool, timing: Timing | None = None, rate_rps: float | None = None):
    cache = ExpertCache(lambda c: policy_class(name)(c), capacity, scope, model)
    listed = list(tokens([trace]))
    arrivals = poisson_arrivals(sorted({t.sequence for t in listed}), rate_rps, 7) if rate_rps else None
    requests = requests_from_tokens(listed, arrivals, prompt_tokens=prompt)
    metrics = serve(requests, cache, timing, scheduler=FCFSScheduler(), limits=ServeLimits(batch, 64),
                    compiled=compiled)
    assert (cache.twin is not None) == compiled
    return metrics


def assert_twin_serves_as_python(trace, model, name, capacity, scope, batch, prompt=0, timing=None, rate_rps=None):
    twin, python = (served(trace, model, name, capacity, scope, batch, prompt, c, timing, rate_rps)
                    for c in (True, False))
    assert json.dumps(twin.summary()) == json.dumps(python.summary())  # floats to the last bit; NaN equals itself
    assert repr(twin.per_layer) == repr(python.per_layer)
    assert repr(twin.requests) == repr(python.requests) and repr(twin.iterations) == repr(python.iterations)
    return twin


def load(path: Path, rows: int) -> tuple[TraceChunk, MoEModel]:
    trace = TraceFile(path)
    return next(trace.chunks(batch_rows=rows)), trace.meta.model


@pytest.mark.parametrize("name", ONLINE_TWINNED)
def test_twin_serves_as_python_on_the_shipped_trace(name):
    trace, model = load(DEFAULT_TRACE, 12_000)
    for scope, capacity in (("layer", model.top_k), ("layer", 16), ("global", 200)):
        for batch, prompt in ((1, 0), (4, 0), (4, 6)):
            assert_twin_serves_as_python(trace, model, name, capacity, scope, batch, prompt)


@pytest.mark.parametrize("name", ["lru", "lfu", "s3fifo"])
def test_timed_twin_serves_as_python_on_the_shipped_trace(name):
    trace, model = load(DEFAULT_TRACE, 12_000)
    profile = load_profile("rtx4090_pcie4")
    timing = Timing(step_costs(model, profile.gpu), profile.h2d, batch_costs(model, profile))
    for scope, capacity in (("layer", model.top_k), ("global", 200)):
        for batch, prompt, rate in ((1, 0, None), (4, 6, None), (4, 6, 40.0)):
            metrics = assert_twin_serves_as_python(trace, model, name, capacity, scope, batch, prompt, timing, rate)
            assert metrics.stall_time_s > 0


@pytest.fixture(scope="module")
def deepseek_prompts(shared_traces, tmp_path_factory):
    """The first 24 prompts of the shared DeepSeek-V2-Lite archive (many short sequences: real batches)."""
    from traces.importers import moe_beyond

    out = tmp_path_factory.mktemp("ds")
    with tarfile.open(shared_traces / "deepseek_v2_lite_moebeyond_training_data_eamc.tar.gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.name.endswith(".csv")),
                         key=lambda m: int(m.name.rsplit("_", 2)[-2]))[:24]
        archive.extractall(out, members=members, filter="data")
    moe_beyond.import_files(sorted(out.rglob("*.csv"), key=lambda p: int(p.name.split("_")[1])), out / "ds.parquet")
    return load(out / "ds.parquet", 100_000)


@pytest.mark.parametrize("name", ONLINE_TWINNED)
def test_twin_serves_as_python_on_the_shared_deepseek_prompts(name, deepseek_prompts):
    trace, model = deepseek_prompts
    for scope, capacity, prompt in (("layer", 8, 4), ("layer", 32, 0), ("global", 300, 4)):
        assert_twin_serves_as_python(trace, model, name, capacity, scope, 8, prompt)


@st.composite
def cases(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 10))
    top_k = draw(st.integers(1, min(3, experts)))
    model = MoEModel("random", layers, experts, top_k, 0, 2, 2, 2.0, 0)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    lengths = rng.integers(1, 12, draw(st.integers(1, 6)))
    sequence = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths * layers)
    token = np.concatenate([np.arange(n, dtype=np.int32).repeat(layers) for n in lengths])
    skew = rng.random(experts) ** 3 + 1e-3
    routed = np.array([rng.choice(experts, top_k, replace=False, p=skew / skew.sum()) for _ in range(len(token))],
                      dtype=np.int16)
    trace = TraceChunk(sequence, token, np.tile(np.arange(layers, dtype=np.int16), int(lengths.sum())), routed)
    scope = draw(st.sampled_from(["layer", "global"]))
    capacity = draw(st.integers(top_k, experts if scope == "layer" else experts * layers))
    return trace, model, scope, capacity, draw(st.integers(1, 6)), draw(st.integers(0, 4))


@pytest.mark.parametrize("name", ONLINE_TWINNED)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_twin_serves_as_python_on_random_traces(name, case):
    trace, model, scope, capacity, batch, prompt = case
    assert_twin_serves_as_python(trace, model, name, capacity, scope, batch, prompt)


@st.composite
def timings(draw):
    """Random machines: links (copy engines, issue cost, zero bandwidth) and batch costs of every shape."""
    times = st.floats(0.0, 1e-3, allow_nan=False)
    link = LinkSpec(bandwidth_Bps=draw(st.sampled_from([0.0, 1e3, 3.3e4, 1e9])), latency_s=draw(times),
                    copy_engines=draw(st.integers(1, 3)), issue_s=draw(st.sampled_from([0.0, 1.7e-6])))

    def roofline() -> Roofline:
        return Roofline(draw(times), draw(st.sampled_from([0.0, 1e-4, 3e-5])), draw(times))

    batch = BatchCosts(roofline(), roofline(), draw(times)) if draw(st.booleans()) else None
    return Timing(StepCosts(non_expert_s=draw(times), expert_s=draw(times)), link, batch)


@pytest.mark.parametrize("name", ["lru", "fifo", "lfu", "arc", "sieve", "random"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), timing=timings(), rate=st.sampled_from([None, 3.0, 1e3]))
def test_timed_twin_serves_as_python_on_random_traces(name, case, timing, rate):
    trace, model, scope, capacity, batch, prompt = case
    assert_twin_serves_as_python(trace, model, name, capacity, scope, batch, prompt, timing, rate)
