"""moe-sim end to end, as a user runs it: one run, a grid, determinism, a user's policy, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.presets import get_preset
from traces.format import TraceChunk, TraceMeta, TraceWriter

MOE_SIM = [sys.executable, "-c", "from experiments.app import main; main()"]


def moe_sim(*args, cwd, env=None):
    return subprocess.run([*MOE_SIM, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    """A small DeepSeek-V2-Lite-shaped trace: 2 sequences × 40 tokens × 26 layers, skewed popularity."""
    path = tmp_path_factory.mktemp("trace") / "t.parquet"
    rng = np.random.default_rng(7)
    model = get_preset("deepseek-v2-lite")
    n = 2 * 40 * model.moe_layers
    scores = rng.random((n, model.experts_per_layer)) ** np.linspace(1, 4, model.experts_per_layer)
    experts = np.argsort(scores, axis=1)[:, : model.top_k]
    tokens = np.arange(n) // model.moe_layers
    with TraceWriter(path, TraceMeta(model, list(range(1, 27)), {"source": "test"})) as w:
        w.write(TraceChunk(tokens // 40, tokens % 40, np.arange(n) % model.moe_layers, experts))
    return path


def run_dir(cwd: Path) -> Path:
    (metrics,) = cwd.glob("outputs/*/*/metrics.json")
    return metrics.parent


def test_one_run_writes_metrics_and_per_layer_table(tmp_path, trace):
    result = moe_sim(f"trace.path={trace}", "cache.capacity=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    m = doc["metrics"]
    for key in ("accesses", "hits", "misses", "hit_rate", "tokens", "total_time_s", "compute_time_s",
                "stall_time_s", "time_per_token_s", "bytes_h2d"):
        assert key in m
    assert m["accesses"] == 2 * 40 * 26 * 6 and m["tokens"] == 80
    assert m["hits"] + m["misses"] == m["accesses"]
    assert doc["config"]["cache"]["capacity"] == 8
    layers = pd.read_parquet(run_dir(tmp_path) / "per_layer.parquet")
    assert len(layers) == 26 and layers["accesses"].sum() == m["accesses"]


def test_same_config_and_seed_give_identical_bytes(tmp_path, trace):
    texts = []
    for i in range(2):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        assert moe_sim(f"trace.path={trace}", "policy=random", "seed=3", cwd=cwd).returncode == 0
        texts.append((run_dir(cwd) / "metrics.json").read_bytes())
    assert texts[0] == texts[1]


def test_grid_runs_every_combination(tmp_path, trace):
    result = moe_sim("-m", f"trace.path={trace}", "policy=lru,belady", "cache.capacity=8,16", "replay.timed=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = {}
    for path in (tmp_path / "multirun").rglob("metrics.json"):
        doc = json.loads(path.read_text())
        runs[(doc["config"]["policy"]["_target_"], doc["config"]["cache"]["capacity"])] = doc["metrics"]["hit_rate"]
    assert len(runs) == 4
    for capacity in (8, 16):
        assert runs[("policies.belady.BeladyCache", capacity)] >= runs[("policies.lru.LRUCache", capacity)]


def test_a_users_policy_plugs_in_through_target(tmp_path, trace):
    (tmp_path / "my_policies.py").write_text(
        "from policies.fifo import FIFOCache\n\nclass MyFIFO(FIFOCache):\n    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    mine = moe_sim(f"trace.path={trace}", "policy._target_=my_policies.MyFIFO", "replay.timed=false", cwd=tmp_path, env=env)
    assert mine.returncode == 0, mine.stderr
    mine_doc = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    ref_cwd = tmp_path / "ref"
    ref_cwd.mkdir()
    assert moe_sim(f"trace.path={trace}", "policy=fifo", "replay.timed=false", cwd=ref_cwd).returncode == 0
    ref_doc = json.loads((run_dir(ref_cwd) / "metrics.json").read_text())
    assert mine_doc["metrics"]["hits"] == ref_doc["metrics"]["hits"]


def write_bad_trace(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.parquet"
    if kind == "truncated":
        good = tmp_path / "good.parquet"
        model = get_preset("deepseek-v2-lite")
        with TraceWriter(good, TraceMeta(model, list(range(26)))) as w:
            w.write(TraceChunk(np.zeros(26), np.zeros(26), np.arange(26), np.tile(np.arange(6), (26, 1))))
        path.write_bytes(good.read_bytes()[:-40])
    elif kind == "empty":
        with TraceWriter(path, TraceMeta(get_preset("deepseek-v2-lite"), list(range(26)))):
            pass
    elif kind == "not_parquet":
        path.write_text("Layer ID,Token\n1,0\n")
    elif kind == "missing_column":
        pd.DataFrame({"sequence": [0], "token": [0], "layer": [0]}).to_parquet(path)
    elif kind == "id_out_of_range":
        model = get_preset("deepseek-v2-lite")
        experts = np.tile(np.arange(6), (26, 1))
        experts[3, 2] = 64
        with TraceWriter(path, TraceMeta(model, list(range(26)))) as w:
            w.write(TraceChunk(np.zeros(26), np.zeros(26), np.arange(26), experts))
    return path


@pytest.mark.parametrize(
    "args, needle",
    [
        (["policy=nosuch"], "policy=nosuch: unknown policy"),
        (["cache.capacity=0"], "cache.capacity"),
        (["cache.capacity=65"], "cache.capacity: 65"),
        (["cache.scope=global", "cache.capacity=2000"], "cache.capacity: 2000"),
        (["hardware=nosuch"], "hardware=nosuch"),
        (["trace.path=BAD:truncated"], "truncated.parquet"),
        (["trace.path=BAD:not_parquet"], "not a readable Parquet trace"),
        (["trace.path=BAD:missing_column"], "column 'experts' is missing"),
        (["trace.path=BAD:id_out_of_range"], "field 'experts'"),
        (["hardware=BAD:negative_bandwidth"], "bandwidth_Bps"),
        (["trace.path=/nonexistent/t.parquet"], "no such trace file"),
        (["model.kind=mole"], "t.parquet has no 'token_id' column"),
        (["trace.path=BAD:empty"], "has 0 rows"),
        (["serve.max_batch=8"], "serve.max_batch: not a key of serve=none"),
        (["cache.capacty=8"], "did you mean cache.capacity?"),
        (["policy=lfu-aging", "policy.perod=3"], "not a key of policy=lfu-aging; did you mean policy.period?"),
        (["prefetch=eam", "prefetch.horizon=2"], "prefetch.horizon: not a key of prefetch=eam"),
        (["-m", "+sweep=prefetch", "prefetch.horizon=2"], "prefetch.horizon: not a key of prefetch=none"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, trace, args, needle):
    resolved = [f"trace.path={trace}"]
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            resolved.append(arg)
            continue
        if value.startswith("BAD:"):
            kind = value[4:]
            if kind == "negative_bandwidth":
                src = Path(__file__).parents[1] / "hardware_profiles" / "rtx4090_pcie4.yaml"
                bad = tmp_path / "neg.yaml"
                bad.write_text(src.read_text().replace("  bandwidth_Bps: 25.6e+9", "  bandwidth_Bps: -25.6e+9", 1))
                value = str(bad)
            else:
                value = str(write_bad_trace(tmp_path, kind))
        resolved.append(f"{key}={value}")
    result = moe_sim(*resolved, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0] and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))


def test_timeline_window_is_written_and_drawn(tmp_path, trace):
    from experiments.plot import timeline_gantt
    from experiments.report import load_runs

    result = moe_sim(f"trace.path={trace}", "replay.timeline=[2,4]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = pd.read_parquet(run_dir(tmp_path) / "timeline.parquet")
    assert set(events["resource"]) == {"gpu", "h2d"}
    assert (events["end_s"] >= events["start_s"]).all()
    assert (events[events["what"] == "non-expert"].shape[0]) == 2 * 26  # two tokens × 26 layer steps
    written = timeline_gantt(load_runs(tmp_path / "outputs"), tmp_path / "fig", sweep_dir=tmp_path / "outputs")
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in written)
