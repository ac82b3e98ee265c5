"""The learned expert predictor: deterministic training, an online replay that matches the offline scores and never
reads the future, files refused in one line when they do not fit, and MoE-Beyond's scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies.check import CHECK_MODEL, check_prefetcher
from policies.prefetchers.learned import LearnedPrefetcher
from simulator.errors import InputError
from simulator.expert_predictor import ExpertPredictor, Routing, RoutingInputs
from simulator.prefetcher import PrefetchView
from traces import cli
from traces.format import TraceChunk, TraceFile, TraceMeta, TraceWriter
from traces.predictor_training import Scores, evaluate_predictor, evaluate_recorded

from tests.helpers import compose_run


def _write_trace(path, model, sequences=3, tokens=30, seed=0):
    """Routing with structure to learn: each layer's experts follow the layer below's through a fixed map, with
    noise, and a token often repeats the previous token's experts."""
    rng = np.random.default_rng(seed)
    L, E, k = model.moe_layers, model.experts_per_layer, model.top_k
    follow = rng.permutation(E)
    rows = []
    for s in range(sequences):
        last = None
        for t in range(tokens):
            here = []
            for layer in range(L):
                if last is not None and rng.random() < 0.3:
                    ids = list(last[layer])
                elif layer and rng.random() < 0.7:
                    ids = [int(follow[e]) for e in here[-1]]
                else:
                    ids = [int(e) for e in rng.choice(E, k, replace=False)]
                here.append(ids)
                rows.append((s, t, layer, ids))
            last = here
    seq, tok, lay, ex = zip(*rows)
    chunk = TraceChunk(np.array(seq, np.int32), np.array(tok, np.int32), np.array(lay, np.int16), np.array(ex, np.int16))
    with TraceWriter(path, TraceMeta(model, list(range(L)), {"source": "test"})) as w:
        w.write(chunk)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny trace of the contract checker's model (4 layers × 8 experts, top-2) and a predictor trained on it."""
    folder = tmp_path_factory.mktemp("learned")
    trace = _write_trace(folder / "tiny.parquet", CHECK_MODEL)
    predictor = folder / "tiny.json"
    args = ["train-predictor", "--train", str(trace), "--out", str(predictor), "--horizon", "2", "--hidden", "16",
            "--epochs", "10", "--batch-size", "16", "--learning-rate", "0.01", "--current-layers", "2",
            "--previous-tokens", "2", "--previous-at-current"]
    assert cli.main(args) == 0
    return trace, predictor, args


def test_training_is_deterministic_for_a_seed(tiny, tmp_path):
    trace, predictor, args = tiny
    again, other = tmp_path / "again.json", tmp_path / "other.json"
    assert cli.main([a if a != str(predictor) else str(again) for a in args]) == 0
    assert cli.main([a if a != str(predictor) else str(other) for a in args] + ["--seed", "1"]) == 0
    assert again.read_bytes() == predictor.read_bytes()
    assert other.read_bytes() != predictor.read_bytes()
    doc = json.loads(predictor.read_bytes())
    assert doc["training"]["seed"] == 0 and doc["training"]["traces"] == ["tiny.parquet"]
    assert doc["model"] == {"name": CHECK_MODEL.name, "moe_layers": 4, "experts": 8, "top_k": 2}


def test_it_learns_the_structure(tiny):
    trace, predictor, _ = tiny
    f1 = evaluate_predictor(ExpertPredictor.load(predictor), trace).overall()["f1"]
    assert f1 > 0.5  # chance is top_k / experts = 0.25


def test_the_replay_asks_for_what_the_evaluation_scores(tiny):
    """The prefetcher's online inputs (kept from the view) give the same scores as the offline evaluation's, so its
    requests are the evaluated top-k of each layer ahead."""
    trace, path, _ = tiny
    predictor = ExpertPredictor.load(path)
    file = TraceFile(trace)
    routing = Routing.from_chunks(file.chunks(), CHECK_MODEL)
    inputs = RoutingInputs(routing, predictor.features, predictor.horizon)
    offline = [predictor.logits(d, inputs.at(d)) for d in range(CHECK_MODEL.moe_layers)]
    prefetcher = LearnedPrefetcher(CHECK_MODEL, model=str(path))
    view = PrefetchView(CHECK_MODEL, None, None, False, None)
    seq_of = np.cumsum(routing.previous < 0) - 1
    previous = None
    for i in range(len(routing)):
        if routing.previous[i] < 0:
            previous = None
        view.sequence, view.layer, view.experts, view.token_routing = int(seq_of[i]), -1, [], {}
        view.previous_routing = previous
        asked = [prefetcher.at_token_start(view)]
        for layer in range(CHECK_MODEL.moe_layers):
            view.layer = layer
            view.experts = view.token_routing[layer] = np.flatnonzero(routing.hot[i, layer]).tolist()
            asked.append(prefetcher.after_router(view))
        for d in range(CHECK_MODEL.moe_layers):
            for j, target in enumerate(range(d, min(d + predictor.horizon, CHECK_MODEL.moe_layers))):
                want = set(np.argsort(-offline[d][i, j], kind="stable")[: CHECK_MODEL.top_k].tolist())
                assert {e for layer, e in asked[d] if layer == target} == want, (i, d, target)
        previous = dict(view.token_routing)


def test_the_learned_prefetcher_keeps_the_contract_and_never_reads_the_future(tiny):
    _, path, _ = tiny
    check_prefetcher(lambda model: LearnedPrefetcher(model, model=str(path)))  # FutureAccessError is a violation


def test_moe_sim_replays_it(tiny):
    from experiments.run import simulate

    trace, path, _ = tiny
    run = compose_run(f"trace.path={trace}", "prefetch=learned", f"prefetch.model={path}", "cache.capacity=3",
                      "replay.timed=false")
    m = simulate(run).metrics.summary()
    assert m["prefetch_issued"] > 0 and m["prefetch_useful"] > 0


def test_a_predictor_that_does_not_fit_is_one_line(tiny, tmp_path, capsys):
    _, path, _ = tiny
    other = tmp_path / "other.parquet"
    _write_trace(other, CHECK_MODEL.__class__(**{**CHECK_MODEL.__dict__, "moe_layers": 5}), sequences=1, tokens=3)
    assert cli.main(["eval-predictor", str(path), "--test", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "moe_layers" in err and "4" in err
    with pytest.raises(InputError, match="field 'top_k': 2 does not fit"):
        LearnedPrefetcher(CHECK_MODEL.__class__(**{**CHECK_MODEL.__dict__, "top_k": 3}), model=str(path))


@pytest.mark.parametrize("edit, field", [
    (lambda doc: "not json", "not JSON"),
    (lambda doc: {**doc, "format": "x"}, "field 'format'"),
    (lambda doc: {**doc, "horizon": 0}, "field 'horizon'"),
    (lambda doc: {**doc, "weights": {**doc["weights"], "w2": {**doc["weights"]["w2"], "data": "AAAA"}}},
     "field 'weights.w2.data'"),
    (lambda doc: {**doc, "features": {**doc["features"], "previous_tokens": 1}}, "field 'weights.w1.shape'"),
])
def test_a_malformed_predictor_file_is_one_line(tiny, tmp_path, edit, field):
    _, path, _ = tiny
    doc = edit(json.loads(path.read_bytes()))
    bad = tmp_path / "bad.json"
    bad.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(InputError, match=field) as err:
        ExpertPredictor.load(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_scores_follow_moe_beyond():
    """top-2 of 4 experts, two rows: routed {0,1} predicted {0,2}; routed {2,3} predicted {2,3}."""
    s = Scores.empty(1)
    s.add(0, np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool), np.array([[1, 0, 1, 0], [0, 0, 1, 1]], bool))
    m = s.overall()
    assert m["precision"] == m["recall"] == m["f1"] == 0.75
    assert m["accuracy"] == 6 / 8
    assert m["macro_f1"] == pytest.approx((0.75 + 0.75) / 2)


def test_moe_beyond_recorded_predictions_score_its_f1(shared_traces, tmp_path):
    """MoE-Beyond's 86.6% F1 is scikit-learn's macro F1 over per-expert decisions: its recorded test predictions give
    it by our code."""
    from traces.importers.moe_beyond import import_files

    trace = tmp_path / "test.parquet"
    import_files([shared_traces / "moe-beyond-test-predicted"], trace)
    m = evaluate_recorded(trace, "moe_beyond").overall()
    assert m["macro_f1"] == pytest.approx(0.866, abs=0.001)
    assert m["f1"] == pytest.approx(0.756, abs=0.001) and m["accuracy"] == pytest.approx(0.954, abs=0.001)
