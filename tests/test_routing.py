"""Cache-aware routing: the rule on hand-computed steps, the replay's counters by hand, the router's choice left
alone, the candidates columns (recorded from a tiny model, validated on read) and the refusals."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.app import recorded_config
from experiments.reproduce import rerouting
from experiments.run import simulate
from policies.lru import LRUCache
from policies.routing import ROUTING, CacheAwareRouting
from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.errors import InputError
from simulator.hardware import LinkSpec
from simulator.replay import Timing, replay
from tests.helpers import compose_run, toy_model
from traces.format import TraceChunk, TraceFile, TraceMeta, TraceWriter

TIMING = Timing(StepCosts(non_expert_s=1e-3, expert_s=1e-4), LinkSpec(bandwidth_Bps=24e3, latency_s=1e-4))
E = [0.5, 0.375, 0.25, 0.125]  # scores exact in binary, so each gap below is exact


def route(experts, candidates, scores, resident, **params):
    return CacheAwareRouting(**params).route(0, experts, None, candidates, scores, resident.__contains__)


# -- the rule, by hand ----------------------------------------------------------------------------------------------

def test_resident_candidate_taken():
    # 1 (0.375) is missing; runner-up 2 (0.25) is resident and 0.125 below it.
    assert route([0, 1], [0, 1, 2, 3], E, {0, 2}, max_score_gap=0.125) == [(1, 2)]
    assert route([0, 1], [0, 1, 2, 3], E, {0, 2}) == [(1, 2)]  # no gap limit


def test_none_within_the_gap():
    assert route([0, 1], [0, 1, 2, 3], E, {0, 2}, max_score_gap=0.1) == []
    assert route([0, 1], [0, 1, 2, 3], E, {0, 3}, max_score_gap=0.2) == []  # 3 is 0.25 below 1
    assert route([0, 1], [0, 1, 2, 3], E, {0}) == []  # no runner-up resident


def test_a_candidate_is_used_once():
    # Both routed experts are missing and one runner-up is resident: the lower-scoring (1) takes it, 0 stays.
    assert route([0, 1], [0, 1, 2, 3], E, {2}) == [(1, 2)]
    # Two resident runners-up: 1 takes the best (2), then 0 the next (3).
    assert route([0, 1], [0, 1, 2, 3], E, {2, 3}) == [(1, 2), (0, 3)]
    # With a gap of 0.25, 1 takes 2 (0.125 below) and 0 may not take 3 (0.375 below).
    assert route([0, 1], [0, 1, 2, 3], E, {2, 3}, max_score_gap=0.25) == [(1, 2)]
    # A candidate list naming a routed expert again: that one is already routed, so it is never a runner-up.
    assert route([0, 1], [0, 1, 0, 3], E, {0}) == []


def test_max_rank():
    assert route([0, 1], [0, 1, 2, 3], E, {0, 3}, max_rank=1) == []  # only the first runner-up, 2, not resident
    assert route([0, 1], [0, 1, 2, 3], E, {0, 3}, max_rank=2) == [(1, 3)]
    assert route([0, 1], [0, 1, 2, 3], E, {0, 3}, max_rank=2, max_score_gap=0.2) == []  # both limits hold


def test_bad_parameters():
    with pytest.raises(ValueError, match="max_score_gap"):
        CacheAwareRouting(max_score_gap=-0.1)
    with pytest.raises(ValueError, match="max_rank"):
        CacheAwareRouting(max_rank=0)
    assert ROUTING["router"] is None and ROUTING.load("cache-aware") is CacheAwareRouting


# -- the replay's counters, by hand --------------------------------------------------------------------------------

def trace_chunk(weights=True) -> TraceChunk:
    """One layer, top-2 of 6, three tokens (README "Accounting semantics" for the LRU states):
    t0 routes 0,1 (cache empty: both miss, nothing to swap) -> {0, 1}
    t1 routes 2,3, runner-up 0 resident: 3 (lower) -> 0; 2 misses, evicting 1 -> {0, 2}
    t2 routes 1,4, runners-up 2 then 0, both resident: 4 -> 2 (gap 0), then 1 -> 0 (gap 0.25)."""
    return TraceChunk(
        sequence=np.zeros(3, dtype=np.int32), token=np.arange(3, dtype=np.int32), layer=np.zeros(3, dtype=np.int16),
        experts=np.array([[0, 1], [2, 3], [1, 4]], dtype=np.int16),
        weights=np.array([[0.625, 0.375], [0.75, 0.25], [0.5, 0.5]], dtype=np.float32) if weights else None,
        candidates=np.array([[0, 1, 2, 5], [2, 3, 0, 5], [1, 4, 2, 0]], dtype=np.int16),
        candidate_scores=np.array([[0.5, 0.25, 0.125, 0.0625], [0.5, 0.25, 0.125, 0.0625],
                                   [0.375, 0.25, 0.25, 0.125]], dtype=np.float32),
    )


def run_toy(routing, weights=True, timing=None):
    model = toy_model(experts=6, top_k=2)
    return replay([trace_chunk(weights)], ExpertCache(LRUCache, 2, "layer", model), timing, routing=routing).summary()


@pytest.mark.parametrize("timing", [None, TIMING])
def test_counters_by_hand(timing):
    m = run_toy(CacheAwareRouting(), timing=timing)
    assert (m["accesses"], m["hits"], m["rerouted_accesses"]) == (6, 3, 3)  # t1: 0 hits; t2: 2 and 0 hit
    assert m["gate_mass_moved"] == pytest.approx(0.25 + 0.5 + 0.5)  # the replaced experts' gate weights
    assert m["gate_mass_moved_share"] == pytest.approx(1.25 / 3)
    assert m["bytes_demand"] == 3 * toy_model().bytes_per_expert  # 0, 1 and 2 loaded
    gap = run_toy(CacheAwareRouting(max_score_gap=0.125), timing=timing)
    assert (gap["hits"], gap["rerouted_accesses"], gap["gate_mass_moved"]) == (2, 2, 0.75)  # t2: only 4 -> 2
    plain = run_toy(None, timing=timing)
    assert plain["hits"] == 0 and "rerouted_accesses" not in plain and "gate_mass_moved" not in plain


def test_gate_mass_without_weights_is_the_score_share():
    m = run_toy(CacheAwareRouting(), weights=False)
    # t1: 3 holds 0.25 of 0.75; t2: 4 holds 0.25 and 1 holds 0.375 of 0.625. Each step's mass is 1.
    assert m["gate_mass_moved"] == pytest.approx(1 / 3 + 1)
    assert m["gate_mass_moved_share"] == pytest.approx((1 / 3 + 1) / 3)


def test_prefetcher_sees_the_experts_used():
    from policies.prefetchers.transition import TransitionPrefetcher

    model = toy_model(experts=6, top_k=2)
    chunk = trace_chunk()
    prefetcher = TransitionPrefetcher(model)
    seen = []
    original = prefetcher.at_token_start
    prefetcher.at_token_start = lambda view: seen.append(view.previous_routing) or original(view)
    replay([chunk], ExpertCache(LRUCache, 2, "layer", model), routing=CacheAwareRouting(), prefetcher=prefetcher)
    assert seen[2] == {0: [2, 0]}  # t1 computed 2 and 0, not the recorded 2 and 3


# -- the router's choice is left alone -----------------------------------------------------------------------------

@st.composite
def traces_without_better_runners(draw):
    """Random traces whose runners-up all score below every routed expert: a gap of 0 may never swap."""
    model = toy_model(layers=2, experts=8, top_k=2)
    tokens = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = tokens * 2
    ids = np.array([rng.permutation(8)[:5] for _ in range(rows)], dtype=np.int16)
    scores = np.sort(rng.random((rows, 5)).astype(np.float32), axis=1)[:, ::-1] + np.array([1, 1, 0, 0, 0], dtype=np.float32)
    chunk = TraceChunk(sequence=np.repeat(np.arange(tokens) // 10, 2).astype(np.int32),
                       token=np.repeat(np.arange(tokens), 2).astype(np.int32), layer=np.tile([0, 1], tokens).astype(np.int16),
                       experts=ids[:, :2].copy(), candidates=ids, candidate_scores=np.ascontiguousarray(scores))
    return model, chunk, draw(st.integers(2, 8))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces_without_better_runners(), st.booleans())
def test_no_swap_leaves_every_figure(case, timed):
    model, chunk, capacity = case
    timing = TIMING if timed else None
    routed = replay([chunk], ExpertCache(LRUCache, capacity, "layer", model), timing, routing=CacheAwareRouting(max_score_gap=0))
    plain = replay([chunk], ExpertCache(LRUCache, capacity, "layer", model), timing)  # the compiled path
    summary = routed.summary()
    assert summary.pop("rerouted_accesses") == 0 and summary.pop("gate_mass_moved") == 0
    summary.pop("gate_mass_moved_share")
    assert summary == plain.summary() and routed.layer_table() == plain.layer_table()  # the twin is exact


def test_router_is_not_recorded_in_the_config():
    from omegaconf import OmegaConf

    assert "routing" not in recorded_config(OmegaConf.create({"routing": {"_target_": None}, "seed": 0}))
    assert "routing" in recorded_config(OmegaConf.create({"routing": {"_target_": "x", "max_rank": 1}}))


# -- the trace format's candidates ---------------------------------------------------------------------------------

def write(path, chunk, model, width=4):
    with TraceWriter(path, TraceMeta(model=model, moe_layer_ids=[0]), weights=chunk.weights is not None,
                     candidates=width) as writer:
        writer.write(chunk)
    return path


def test_candidates_round_trip(tmp_path):
    model = toy_model(experts=6, top_k=2)
    trace = TraceFile(write(tmp_path / "t.parquet", trace_chunk(), model))
    assert trace.candidates == 4
    (chunk,) = trace.chunks(candidates=True)
    assert chunk.candidates.tolist() == trace_chunk().candidates.tolist()
    assert np.array_equal(chunk.candidate_scores, trace_chunk().candidate_scores)
    (plain,) = trace.chunks()
    assert plain.candidates is None  # read only when asked for


@pytest.mark.parametrize("row, column, value, message", [
    (1, "candidates", [2, 4, 0, 5], "does not begin with the routed experts [2, 3]"),
    (2, "candidates", [1, 4, 6, 0], "has an id outside 0..5 (experts_per_layer=6)"),
    (0, "candidates", [0, 1, 5, 5], "repeats an expert"),
    (2, "candidate_scores", [0.5, 0.25, float("nan"), 0.1], "is not finite"),
])
def test_bad_candidates_are_one_line(tmp_path, row, column, value, message):
    chunk = trace_chunk()
    getattr(chunk, column)[row] = value
    path = write(tmp_path / "bad.parquet", chunk, toy_model(experts=6, top_k=2))
    with pytest.raises(InputError) as err:
        list(TraceFile(path).chunks(candidates=True))
    assert str(err.value) == f"{path}: row {row}: field '{column}' = {getattr(chunk, column)[row].tolist()} {message}"


def test_half_a_pair_and_missing_columns(tmp_path):
    path = write(tmp_path / "t.parquet", trace_chunk(), toy_model(experts=6, top_k=2))
    table = pq.read_table(path)
    pq.write_table(table.drop(["candidate_scores"]), tmp_path / "half.parquet")
    with pytest.raises(InputError, match="column 'candidates' has no 'candidate_scores' beside it"):
        TraceFile(tmp_path / "half.parquet")
    pq.write_table(table.drop(["candidates", "candidate_scores"]), tmp_path / "none.parquet")
    with pytest.raises(InputError, match="'candidates' and 'candidate_scores' are missing"):
        list(TraceFile(tmp_path / "none.parquet").chunks(candidates=True))


# -- recorded from a tiny model, and run -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny OLMoE (top-2 of 8) recorded twice: by the command line with 3 runners-up, by `record` with all 6."""
    pytest.importorskip("torch")
    from tests.test_record import save_tiny_checkpoint, tiny_model
    from traces import cli
    from traces.record import record

    folder = tmp_path_factory.mktemp("routing")
    save_tiny_checkpoint(folder / "model")
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(f"w{3 * i} w{3 * i + 1} w{i + 40} w{i + 7}\n" for i in range(6)))
    three = folder / "three.parquet"
    assert cli.main(["record", "--model", str(folder / "model"), "--prompts", str(prompts), "-o", str(three),
                     "--max-new-tokens", "8", "--batch-size", "6", "--device", "cpu", "--candidates", "3"]) == 0
    model = tiny_model("olmoe")
    ids = [[3 * i + 2, 3 * i + 3, i + 42, i + 9] for i in range(6)]  # the tokenizer's ids of those words (w<n> = n + 2)
    every = folder / "every.parquet"
    record(model, None, ids, every, max_new_tokens=8, batch_size=6, device="cpu", progress=False, candidates=6)
    with pytest.raises(InputError, match="candidates 7 must be 0..6"):
        record(model, None, ids, folder / "x.parquet", device="cpu", progress=False, candidates=7)
    return three, every


def test_recorder_keeps_the_router_candidates(recorded):
    three, every = recorded
    (a,) = TraceFile(three).chunks(candidates=True, weights=True)
    (b,) = TraceFile(every).chunks(candidates=True, weights=True)
    assert TraceFile(three).candidates == 5 and TraceFile(every).candidates == 8
    assert np.array_equal(a.candidates[:, :2], a.experts)
    # OLMoE's gate weights are its softmax probabilities (no renormalisation): the scores of the routed experts.
    assert np.allclose(a.candidate_scores[:, :2], a.weights, atol=1e-6)
    # All 8 candidates: a softmax over every expert, the runners-up in descending order below the routed ones.
    assert np.allclose(b.candidate_scores.sum(axis=1), 1, atol=1e-5)
    assert (np.diff(b.candidate_scores[:, 2:], axis=1) <= 0).all()
    assert (b.candidate_scores[:, 2:].max(axis=1) <= b.candidate_scores[:, :2].min(axis=1)).all()
    # Three runners-up are the first three of all (same model, same routing).
    assert np.array_equal(a.experts, b.experts) and np.array_equal(a.candidates, b.candidates[:, :5])
    assert "candidates" in TraceFile(three).meta.provenance


def test_cache_aware_run_and_sweep_script(recorded, capsys):
    three, _ = recorded
    base = (f"trace.path={three}", "replay.progress=false", "cache.capacity=3")
    router = simulate(compose_run(*base)).metrics.summary()
    aware = simulate(compose_run(*base, "routing=cache-aware", "routing.max_score_gap=1")).metrics.summary()
    assert aware["accesses"] == router["accesses"] and aware["hit_rate"] > router["hit_rate"]
    assert aware["rerouted_accesses"] > 0 and 0 < aware["gate_mass_moved_share"] < 1
    assert rerouting.main(["--trace", str(three), "--capacities", "3", "--gaps", "0,1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[:3] == ["3", "router", f"{router['hit_rate']:.4f}"]
    assert out[4].split()[:3] == ["3", "1.0000", f"{aware['hit_rate']:.4f}"]


@pytest.mark.parametrize("overrides, message", [
    (("routing=cache-aware",), "has no 'candidates' column"),
    (("routing=cache-aware", "serve=continuous"), "batched serving (serve=continuous) takes routing=router"),
    (("routing=cache-aware", "routing.max_rank=0"), "routing=cache-aware: max_rank 0 must be ≥ 1"),
])
def test_refusals_are_one_line(overrides, message):
    with pytest.raises(InputError) as err:
        simulate(compose_run("replay.progress=false", *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_offline_policy_and_mole_are_refused():
    from dataclasses import replace as with_kind

    from policies.belady import BeladyCache

    model = toy_model(experts=6, top_k=2)
    chunk = trace_chunk()
    offline = ExpertCache(BeladyCache, 2, "layer", model)
    offline.prepare(chunk.sequence, chunk.layer, chunk.experts)
    with pytest.raises(InputError, match="policy=belady is offline"):
        replay([chunk], offline, routing=CacheAwareRouting())
    mole = ExpertCache(LRUCache, 2, "layer", with_kind(model, kind="mole"))
    with pytest.raises(InputError, match="model.kind=mole"):
        replay([chunk], mole, routing=CacheAwareRouting())
