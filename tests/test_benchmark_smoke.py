"""The benchmark runs end to end on a tiny trace, and its naive SimPy model is a like-for-like comparison.

No timing is asserted: speed depends on the machine; these tests only guard that the numbers printed are about
the same simulation.
"""

import json
from collections import OrderedDict

import numpy as np
import pytest

from experiments import benchmark as bm


@pytest.fixture(scope="module")
def trace():
    return bm.synthetic_trace(5_000, seed=1)


def test_synthetic_trace_shape(trace):
    model = bm.MODEL
    assert (trace.experts >= 0).sum() >= 5_000
    assert len(trace) % model.moe_layers == 0
    assert trace.experts.min() >= 0 and trace.experts.max() < model.experts_per_layer
    s = np.sort(trace.experts, axis=1)
    assert not (s[:, 1:] == s[:, :-1]).any(), "a layer step repeats an expert"
    assert np.array_equal(trace.layer[: model.moe_layers], np.arange(model.moe_layers))
    assert np.array_equal(bm.synthetic_trace(5_000, seed=1).experts, trace.experts), "not reproducible"


def test_naive_simpy_equals_timed_replay(trace):
    replayed = bm.run_replay(trace, "layer", timed=True)
    naive = bm.run_naive_simpy(trace)
    assert 0 < naive.hits < naive.accesses
    assert (naive.accesses, naive.hits) == (replayed.accesses, replayed.hits)
    assert naive.total_time_s == pytest.approx(replayed.total_time_s, rel=1e-9)


def test_hit_rate_only_replay_agrees_with_timed(trace):
    for scope in ("layer", "global"):
        assert bm.run_replay(trace, scope, timed=False).hits == bm.run_replay(trace, scope, timed=True).hits


def test_oracle_general_file(trace, tmp_path):
    path = tmp_path / "t.bin"
    bm.write_oracle_general(trace, str(path))
    records = np.fromfile(path, dtype=bm.ORACLE_GENERAL)
    keys = records["obj_id"].astype(np.int64)
    assert bm.ORACLE_GENERAL.itemsize == 24 and len(records) == trace.experts.size
    assert np.array_equal(keys, (trace.layer[:, None] * bm.MODEL.experts_per_layer + trace.experts).ravel())
    following = records["next_access_vtime"]
    later = following >= 0
    assert np.array_equal(keys[following[later]], keys[later]) and (following[later] > np.flatnonzero(later)).all()


def test_libcachesim_lru_matches_a_plain_lru(trace, tmp_path):
    pytest.importorskip("libcachesim")
    path = str(tmp_path / "t.bin")
    bm.write_oracle_general(trace, path)
    keys = (trace.layer[:, None] * bm.MODEL.experts_per_layer + trace.experts).ravel().tolist()
    lru, hits = OrderedDict(), 0
    for key in keys:
        if key in lru:
            lru.move_to_end(key)
            hits += 1
        else:
            if len(lru) >= bm.GLOBAL_CAPACITY:
                lru.popitem(last=False)
            lru[key] = None
    assert bm.run_libcachesim_lru(path) == (len(keys), hits)


def test_main_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # the streamed file kept small and the 126-job sweep left out: test_streamed_replay_of_a_trace_file and
    # tests/test_sweep*.py cover them; this test is about the table
    bm.main(["--accesses", "5000", "--naive-accesses", "1000", "--repeats", "1", "--large-accesses", "30000",
             "--no-sweep", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "accesses/s" in printed and "naive SimPy" in printed
    assert "issue 12's goals" in printed and "capacities from one curve" in printed and "126-job" in printed
    result = json.loads(out.read_text())
    assert result["checks"]["naive_vs_replay"]["hits_equal"]
    assert result["checks"]["naive_vs_replay"]["time_equal"]
    assert len(result["rows"]) >= 5


def test_streamed_replay_of_a_trace_file(tmp_path):
    """The large-trace check replays the file it wrote, all of it, with the in-memory replay's hits."""
    path = str(tmp_path / "large.parquet")
    written = bm.write_large_trace(path, 20_000, seed=2)
    piece = bm.synthetic_trace(20_000, seed=2)
    for scope in ("layer", "global"):
        result = bm.run_streamed(path, scope)
        assert result["accesses"] == written == piece.experts.size
        assert result["hits"] == bm.run_replay(piece, scope, timed=False).hits
        assert result["peak_rss_mib"] > 0
