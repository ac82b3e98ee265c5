"""The batching sweep (`+sweep=batching`) composes and runs as a user runs it, and the serving figures of
experiments/plot.py draw from such a sweep (throughput and hit rate against batch size, TTFT/TPOT against request
rate, iterations in the timeline)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments import plot, report
from experiments.overrides import CONF_DIR
from experiments.results import METRICS_FILE, TIMELINE_FILE

MOE_SIM = [sys.executable, "-c", "from experiments.app import main; main()"]


def test_sweep_grid_is_the_documented_one():
    doc = yaml.safe_load((CONF_DIR / "sweep" / "batching.yaml").read_text())
    params = {k: str(v).split(",") for k, v in doc["hydra"]["sweeper"]["params"].items()}
    assert params["serve"] == ["continuous"]
    assert params["serve.max_batch"] == ["1", "2", "4", "8", "16", "32"]
    assert params["policy"] == ["lru", "lfu"] and params["serve.arrival"] == ["offline", "poisson"]
    assert len(params["cache.capacity"]) >= 2
    assert doc["serve"]["rate_rps"] > 0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two jobs of the batching sweep on the shipped trace, narrowed on the command line; a single-valued serve key
    (serve.arrival) must pass too, which needs serve=continuous composed before the sweep's jobs are formed."""
    cwd = tmp_path_factory.mktemp("batching")
    out = cwd / "sweep"
    result = subprocess.run([*MOE_SIM, "-m", "+sweep=batching", "serve.max_batch=1,4", "cache.capacity=8", "policy=lru",
                             "serve.arrival=offline", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={out}"],
                            cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_sweep_runs_batched_serving_jobs(sweep, tmp_path):
    docs = [json.loads(p.read_text()) for p in sorted(sweep.rglob(METRICS_FILE))]
    assert len(docs) == 2
    assert {d["config"]["serve"]["mode"] for d in docs} == {"continuous"}
    assert sorted(d["config"]["serve"]["max_batch"] for d in docs) == [1, 4]
    assert {d["config"]["serve"]["arrival"] for d in docs} == {"offline"}
    table = report.load_runs(sweep)
    for column in ("throughput_tok_s", "expert_hit_rate", "ttft_p99_s", "tpot_p50_s", "mean_batch_tokens"):
        assert column in table and table[column].notna().all(), column
    by_batch = table.set_index("serve.max_batch")
    assert by_batch.loc[4, "mean_batch_tokens"] > by_batch.loc[1, "mean_batch_tokens"] == 1.0
    drawn = plot.throughput_vs_batch(table, tmp_path)
    assert isinstance(drawn, list) and all(p.stat().st_size > 0 for p in drawn)
    assert plot.latency_vs_rate(table, tmp_path) == ("no timed batched-serving run with Poisson arrivals "
                                                     "(serve=continuous serve.arrival=poisson)")


def synthetic_runs(rates=(0.1, 0.5, 1.0)) -> pd.DataFrame:
    rows = []
    for policy in ("lru", "lfu"):
        for capacity in (8, 16):
            for batch in (1, 8):
                for rate in rates:
                    rows.append({"run": f"{policy}-{capacity}-{batch}-{rate}", "policy": policy, "hardware": "h",
                                 "trace": "t", "cache.scope": "layer", "cache.capacity": capacity,
                                 "serve.mode": "continuous", "serve.arrival": "poisson", "serve.max_batch": batch,
                                 "serve.rate_rps": rate, "throughput_tok_s": 10.0 * batch, "hit_rate": 0.5,
                                 "expert_hit_rate": 0.4, "ttft_p50_s": rate, "ttft_p99_s": 2 * rate,
                                 "tpot_p50_s": 0.01, "tpot_p99_s": 0.02})
    return pd.DataFrame(rows)


def test_latency_vs_rate_draws_a_row_per_batch_size(tmp_path, monkeypatch):
    lines = []
    original = plot.policy_capacity_lines
    monkeypatch.setattr(plot, "policy_capacity_lines",
                        lambda ax, sub, x, y, *a, **k: (lines.append((x, y, len(sub))), original(ax, sub, x, y, *a, **k)))
    drawn = plot.latency_vs_rate(synthetic_runs(), tmp_path)
    assert [p.name for p in drawn] == ["latency_vs_rate.png", "latency_vs_rate.pdf"]
    # 2 batch sizes (panel rows) × TTFT, TPOT × p50, p99; each over 2 policies × 2 capacities × 3 rates
    assert sorted(set(y for _, y, _ in lines)) == ["tpot_p50_s", "tpot_p99_s", "ttft_p50_s", "ttft_p99_s"]
    assert len(lines) == 8 and {(x, n) for x, _, n in lines} == {("serve.rate_rps", 12)}
    assert plot.latency_vs_rate(synthetic_runs(rates=(0.5,)), tmp_path) == "one request rate only (serve.rate_rps)"
    assert plot.throughput_vs_batch(synthetic_runs(), tmp_path).startswith("no run with offline arrivals")


def test_timeline_draws_iterations_as_a_row(tmp_path, monkeypatch):
    run = tmp_path / "job"
    run.mkdir()
    events = pd.DataFrame({
        "resource": ["iteration", "gpu", "h2d", "iteration", "gpu"],
        "start_s": [0.0, 0.0, 0.0, 0.01, 0.01],
        "end_s": [0.01, 0.002, 0.004, 0.02, 0.012],
        "id": [4, 0, 17, 3, 0],
        "what": ["4 requests", "non-expert", "demand", "3 requests", "non-expert"],
    })
    events.to_parquet(run / TIMELINE_FILE)
    seen = []
    original = plot.iteration_row
    monkeypatch.setattr(plot, "iteration_row", lambda ax, ev, origin, y, **k: (seen.append((len(ev), y)), original(ax, ev, origin, y, **k)))
    drawn = plot.timeline_gantt(pd.DataFrame({"run": ["job"]}), tmp_path / "figures", sweep_dir=tmp_path)
    assert isinstance(drawn, list) and drawn[0].exists()
    assert seen == [(2, 0)]  # both iterations, on the top row


def test_benchmark_batched_replay_at_batch_1_is_the_token_replay():
    from experiments import benchmark as bm

    trace = bm.synthetic_trace(90_000, seed=2)  # 3 sequences of up to 256 tokens
    replayed = bm.run_replay(trace, "layer", timed=True)
    one, eight = bm.run_serve(trace, 1), bm.run_serve(trace, 8)
    assert (one.accesses, one.hits) == (replayed.accesses, replayed.hits)
    assert len(one.iterations) == replayed.tokens
    assert eight.accesses == replayed.accesses and len(eight.iterations) == 256  # the longest request's tokens


def test_serving_figures_only_for_a_sweep_with_batched_runs(sweep, tmp_path):
    drawn = plot.plot_sweep(sweep, tmp_path)
    assert isinstance(drawn["throughput_vs_batch"], list)
    assert drawn["latency_vs_rate"].startswith("no timed batched-serving run with Poisson arrivals")
    token_by_token = sweep.parent / "none"
    for run in sweep.iterdir():
        if (run / METRICS_FILE).exists():
            doc = json.loads((run / METRICS_FILE).read_text())
            doc["config"]["serve"]["mode"] = "none"
            (token_by_token / run.name).mkdir(parents=True)
            (token_by_token / run.name / METRICS_FILE).write_text(json.dumps(doc))
    assert not set(plot.SERVING_FIGURES) & set(plot.plot_sweep(token_by_token, tmp_path / "none"))
