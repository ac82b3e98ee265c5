"""One-pass hit-rate curves (simulator.stack_distance, `moe-trace curve`) equal per-size hit-rate-only replays exactly,
for LRU and Belady, in both scopes: on the shipped trace, the shared real traces (where ../shared is present) and
hypothesis' random traces; the CLI writes the JSON or refuses in one line; the figure is drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.plot import hit_rate_curves
from policies.belady import BeladyCache
from policies.lru import LRUCache
from policies.registry import policy_class
from simulator.cache import ExpertCache
from simulator.model import MoEModel
from simulator.replay import replay
from simulator.stack_distance import hit_curve
from traces import cli
from traces.format import TraceChunk, TraceFile

DEFAULT_TRACE = Path(__file__).parents[1] / "traces" / "data" / "default.parquet"
POLICY_CLASSES = {"lru": LRUCache, "belady": BeladyCache}


def chunked(trace: TraceChunk, rows: int) -> list[TraceChunk]:
    return [TraceChunk(trace.sequence[i:i + rows], trace.token[i:i + rows], trace.layer[i:i + rows],
                       trace.experts[i:i + rows]) for i in range(0, len(trace), rows)]


def replayed_hits(trace: TraceChunk, model: MoEModel, policy: str, scope: str, capacity: int,
                  compiled: bool = True) -> list[int]:
    """Per-layer hits of one hit-rate-only replay."""
    cache = ExpertCache(lambda c: POLICY_CLASSES[policy](c), capacity, scope, model)
    if cache.offline:
        cache.prepare(trace.sequence, trace.layer, trace.experts)
    return replay(chunked(trace, 1 << 12), cache, None, compiled=compiled).per_layer.hits


def assert_curve_equals_replays(trace, model, policy, scope, capacities, rows=1 << 12, compiled=True):
    curve = hit_curve(chunked(trace, rows), model, scope, policy)
    for capacity in capacities:
        assert curve.hits[:, capacity].tolist() == replayed_hits(trace, model, policy, scope, capacity, compiled), capacity


def head(path: Path, rows: int) -> tuple[TraceChunk, MoEModel]:
    trace = TraceFile(path)
    return next(trace.chunks(batch_rows=rows)), trace.meta.model


@pytest.mark.parametrize("policy", sorted(POLICY_CLASSES))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_curve_equals_replays_on_the_shipped_trace(policy, scope):
    trace, model = head(DEFAULT_TRACE, 20_000)
    per_layer = [model.top_k, model.top_k + 1, 16, model.experts_per_layer - 3, model.experts_per_layer]
    capacities = per_layer if scope == "layer" else [model.top_k, 7, *(c * model.moe_layers // 2 for c in per_layer[1:])]
    assert_curve_equals_replays(trace, model, policy, scope, capacities, rows=3_000)


@pytest.fixture(scope="module")
def real_traces(shared_traces, tmp_path_factory):
    from traces.importers import moe_beyond, vllm_jsonl

    out = tmp_path_factory.mktemp("real")
    moe_beyond.import_files([shared_traces / "deepseek_v2_lite_moebeyond_prompt_1351_data.csv"], out / "ds.parquet")
    vllm_jsonl.import_files([shared_traces / "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl"], out / "mx.parquet")
    return [head(out / "ds.parquet", 15_000), head(out / "mx.parquet", 7_000)]


@pytest.mark.parametrize("policy", sorted(POLICY_CLASSES))
def test_curve_equals_replays_on_real_traces(policy, real_traces):
    for trace, model in real_traces:
        layer = [model.top_k, model.top_k + 1, model.experts_per_layer // 2, model.experts_per_layer]
        assert_curve_equals_replays(trace, model, policy, "layer", layer)
        total = model.total_experts
        assert_curve_equals_replays(trace, model, policy, "global", [model.top_k, total // 5, total // 2, total - 1])


@st.composite
def cases(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 10))
    top_k = draw(st.integers(1, min(4, experts)))
    model = MoEModel("random", layers, experts, top_k, 0, 2, 2, 2.0, 0)
    tokens = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = tokens * layers
    skew = rng.random(experts) ** 3 + 1e-3
    routed = np.array([rng.choice(experts, top_k, replace=False, p=skew / skew.sum()) for _ in range(rows)],
                      dtype=np.int16)
    routed[rng.random(routed.shape) < draw(st.sampled_from([0.0, 0.3]))] = -1  # unrecorded experts
    sequence = np.sort(rng.integers(0, 3, tokens)).astype(np.int32).repeat(layers)  # several sequences
    trace = TraceChunk(sequence, np.arange(tokens, dtype=np.int32).repeat(layers),
                       np.tile(np.arange(layers, dtype=np.int16), tokens), routed)
    return trace, model, draw(st.sampled_from(["layer", "global"])), draw(st.sampled_from(sorted(POLICY_CLASSES))), \
        draw(st.integers(1, 7))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_curve_equals_python_replays_at_every_size(case):
    """Against the Python policy classes (not their compiled twins), at every size from top_k up."""
    trace, model, scope, policy, rows = case
    limit = model.experts_per_layer if scope == "layer" else model.total_experts
    assert_curve_equals_replays(trace, model, policy, scope, range(model.top_k, limit + 1), rows, compiled=False)


def test_cli_writes_the_curve(tmp_path, capsys):
    out = tmp_path / "curve.json"
    assert cli.main(["curve", str(DEFAULT_TRACE), "--scope", "global", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    model = TraceFile(DEFAULT_TRACE).meta.model
    assert doc["policy"] == "lru" and doc["scope"] == "global"
    assert doc["capacities"] == list(range(model.top_k, model.total_experts + 1))
    rates = doc["hit_rate"]
    assert len(rates) == len(doc["capacities"]) and rates == sorted(rates) and 0 <= rates[0] <= rates[-1] <= 1
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["curve", "missing.parquet", "--json", "OUT"], "no such trace file"),
    (["curve", str(DEFAULT_TRACE), "--scope", "sideways", "--json", "OUT"], "--scope"),
    (["curve", str(DEFAULT_TRACE), "--policy", "fifo", "--json", "OUT"], "--policy"),
    (["curve", str(DEFAULT_TRACE)], "--json"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, argv, fragment):
    argv = [str(tmp_path / a) if a == "OUT" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-trace: ") and err.count("\n") == 1 and fragment in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_refuses_a_folder_as_output(tmp_path, capsys):
    assert cli.main(["curve", str(DEFAULT_TRACE), "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_the_figure_is_drawn(tmp_path):
    files = []
    for policy in ("lru", "belady"):
        files.append(tmp_path / f"{policy}.json")
        assert cli.main(["curve", str(DEFAULT_TRACE), "--policy", policy, "--json", str(files[-1])]) == 0
    paths = hit_rate_curves(files, tmp_path / "figures")
    assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.stat().st_size > 0 for p in paths)


def replay_document(trace: TraceChunk, model: MoEModel, policy: str, scope: str, capacity, curve) -> str:
    """Everything a hit-rate-only replay reports (summary and per-layer table), as text, replayed or read from `curve`."""
    cache = ExpertCache(lambda c: POLICY_CLASSES[policy](c), capacity, scope, model)
    if cache.offline:
        cache.prepare(trace.sequence, trace.layer, trace.experts)
    curves = None if curve is None else (lambda p, s: curve if (p, s) == (policy, scope) else pytest.fail((p, s)))
    metrics = replay(chunked(trace, 1 << 12), cache, None, curves=curves)
    return json.dumps(metrics.summary(), sort_keys=True) + repr(metrics.layer_table())


@pytest.mark.parametrize("policy", sorted(POLICY_CLASSES))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_a_replay_read_from_the_curve_reports_what_the_replay_reports(policy, scope):
    trace, model = head(DEFAULT_TRACE, 12_000)
    curve = hit_curve(chunked(trace, 5_000), model, scope, policy)
    sizes = [6, 16, 64] if scope == "layer" else [6, 200, model.total_experts]
    if scope == "layer":
        sizes.append([6 + layer % 40 for layer in range(model.moe_layers)])  # per-layer sizes (AdapMoE's sizing)
    for capacity in sizes:
        assert replay_document(trace, model, policy, scope, capacity, curve) == \
            replay_document(trace, model, policy, scope, capacity, None), capacity


def test_a_curve_serves_only_the_exact_class_and_a_plain_hit_rate_only_replay():
    trace, model = head(DEFAULT_TRACE, 2_000)

    class MyLRU(LRUCache):  # a user's subclass may decide otherwise: it is replayed
        pass

    def refuse(policy, scope):
        raise AssertionError("the curve was asked for")

    for make, timing in ((MyLRU, None), (LRUCache, "timed")):
        cache = ExpertCache(make, 16, "layer", model)
        assert cache.curve_policy() == ("lru" if make is LRUCache else "")
        if timing:
            from experiments.benchmark import TIMING as timing  # any machine: a timed replay replays
        replay(chunked(trace, 500), cache, timing, curves=refuse)


def test_a_sweep_computes_each_curve_once_and_its_jobs_report_what_replays_report(tmp_path):
    """Four hit-rate-only jobs of one policy and trace: one curve file; the figures equal `replay.curves=false`'s."""
    def sweep(out, *extra):
        subprocess.run([sys.executable, "-c", "from experiments.app import main; main()", "-m", "cache.capacity=6,16",
                        "policy=lru,fifo",
                        "replay.timed=false", "replay.progress=false", f"hydra.sweep.dir={out}", *extra],
                       check=True, capture_output=True, cwd=Path(__file__).parents[1])
        return {p.parent.name.replace(",replay.curves=False", ""): json.loads(p.read_text())
                for p in Path(out).glob("*/metrics.json")}

    shared, alone = sweep(tmp_path / "a"), sweep(tmp_path / "b", "replay.curves=false")
    assert [p.name for p in (tmp_path / "a").glob(".curves/*/*.npz")] == ["26x64-top6-lru-layer.npz"]
    assert not list((tmp_path / "b").glob(".curves"))
    for document in (*shared.values(), *alone.values()):
        document["config"]["replay"].pop("curves")
    assert shared == alone and len(shared) == 4


NO_STACK_ALGORITHM = [  # (policy, one layer's experts at top_k 1, c, hits with c slots, hits with c + 1)
    ("fifo", [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5], 3, 3, 2),  # Belady's anomaly (Belady, Nelson, Shedler 1969)
    ("lfu", [1, 1, 2, 4, 0, 4, 0, 5, 1, 5, 1, 5, 4], 2, 5, 4),
    ("lfu-aging", [1, 1, 2, 4, 0, 4, 0, 5, 1, 5, 1, 5, 4], 2, 5, 4),
    ("arc", [3, 4, 0, 0, 1, 2, 3, 3, 4, 0, 0, 1, 0], 3, 5, 4),
    ("sieve", [3, 3, 3, 3, 1, 4, 4, 3, 1, 0, 2, 4, 0], 3, 8, 7),
    ("s3fifo", [3, 3, 0, 5, 2, 0, 1, 4, 3, 4, 5, 0, 4], 3, 5, 4),
    ("random", [5, 1, 4, 5, 0, 2, 3, 0, 3, 3], 3, 4, 3),
    ("moe-infinity", [1, 0, 4, 2, 1, 3, 3, 1, 3, 2, 0], 3, 4, 3),
    ("finemoe", [1, 1, 2, 4, 0, 4, 0, 5, 1, 5, 1, 5, 4], 2, 5, 4),
]


@pytest.mark.parametrize("policy,experts,capacity,hits_c,hits_c1", NO_STACK_ALGORITHM)
def test_the_other_shipped_policies_are_no_stack_algorithms(policy, experts, capacity, hits_c, hits_c1):
    """One more slot hits less on these traces (found by random search), so no one-pass curve can serve them: the
    README's "Hit-rate curves in one pass" says why each is no stack algorithm under the step rule."""
    cls = policy_class(policy)
    model = MoEModel(name="one-layer", moe_layers=1, experts_per_layer=6, top_k=1, shared_experts=0, hidden_size=8,
                     expert_intermediate_size=8, param_bytes=2, non_expert_params_per_layer=0)
    n = len(experts)
    trace = TraceChunk(np.zeros(n, np.int32), np.arange(n, dtype=np.int32), np.zeros(n, np.int16),
                       np.array(experts, np.int16).reshape(-1, 1))
    hits = []
    for slots in (capacity, capacity + 1):
        for compiled in (False, True):
            cache = ExpertCache(lambda c: cls(c), slots, "layer", model)
            hits.append(replay([trace], cache, None, compiled=compiled).per_layer.hits[0])
    assert hits == [hits_c, hits_c, hits_c1, hits_c1]
