"""Sweeps as a user runs them: the joblib launcher through a sweep config, resuming, submitit's local executor, and
the report and figures of a sweep directory."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments import plot, report
from experiments.config import DEFAULT_TRACE
from experiments.results import METRICS_FILE
from experiments.sweep import input_digests, is_complete, job_dirname
from simulator.presets import get_preset
from traces.synth import SynthParams, write_synthetic

MOE_SIM = [sys.executable, "-c", "from experiments.app import main; main()"]


def moe_sim(*args, cwd):
    result = subprocess.run([*MOE_SIM, *args], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def metrics(sweep: Path) -> dict[str, bytes]:
    return {str(p.parent.relative_to(sweep)): p.read_bytes() for p in sweep.rglob(METRICS_FILE)}


# A 6-job hit-rate sweep of the shipped trace through the capacity_vs_policy sweep config (joblib launcher), with
# its grid narrowed on the command line.
GRID = ["-m", "+sweep=capacity_vs_policy", "policy=lru,lfu,belady", "cache.capacity=8,16", "replay.timed=false",
        "hydra.launcher.n_jobs=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("sweep")
    out = moe_sim(*GRID, f"hydra.sweep.dir={cwd / 'grid'}", cwd=cwd)
    assert "skip" not in out
    return cwd / "grid"


def test_sweep_has_one_complete_run_per_job(sweep):
    done = metrics(sweep)
    assert len(done) == 6
    assert "cache.capacity=8,policy=lru,replay.timed=False" in done  # named from the overrides, sorted
    table = report.load_runs(sweep)
    assert len(table) == 6 and not table.duplicated(["policy", "cache.capacity"]).any()
    assert set(table["policy"]) == {"lru", "lfu", "belady"}


def test_rerun_skips_finished_jobs_and_completes_a_missing_one(sweep):
    before = metrics(sweep)
    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob(METRICS_FILE)}
    lost = sweep / "cache.capacity=16,policy=belady,replay.timed=False" / METRICS_FILE
    lost.unlink()  # as if the job had been killed before writing it
    out = moe_sim(*GRID, f"hydra.sweep.dir={sweep}", cwd=sweep.parent)
    assert out.count("skip ") == 5
    assert metrics(sweep) == before  # the rerun job gives identical bytes
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items() if p != lost)  # the others untouched


def test_report_writes_parquet_and_csv_with_one_row_per_run(sweep, tmp_path, capsys):
    report.main([str(sweep), "--out", str(tmp_path / "table.parquet")])
    table = pd.read_parquet(tmp_path / "table.parquet")
    csv = pd.read_csv(tmp_path / "table.csv")
    assert len(table) == len(csv) == 6
    for column in ("run", "policy", "cache.capacity", "replay.timed", "model.bytes_per_expert", "cache_gb",
                   "hit_rate", "hits", "misses", "accesses", "bytes_h2d"):
        assert column in table
    assert (table["hits"] + table["misses"] == table["accesses"]).all()
    printed = capsys.readouterr().out
    assert "hit rate" in printed and "belady" in printed


def test_mole_vs_moe_sweep_reports_each_kind(tmp_path):
    # The shipped trace carries token ids; narrowed to 2 hit-rate-only jobs.
    moe_sim("-m", "+sweep=mole_vs_moe", "cache.capacity=8", "memory.home=dram", "replay.timed=false",
            f"hydra.sweep.dir={tmp_path / 'grid'}", cwd=tmp_path)
    table = report.load_runs(tmp_path / "grid")
    assert sorted(table["model.kind"]) == ["moe", "mole"]
    assert "model.kind" in report.varying(table)
    assert "mole" in report.summary(table)


def test_plots_of_a_hit_rate_sweep_skip_what_it_lacks(sweep, tmp_path, capsys):
    plot.main([str(sweep), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert (tmp_path / "hit_rate_vs_capacity.png").stat().st_size > 0
    assert (tmp_path / "hit_rate_vs_capacity.pdf").stat().st_size > 0
    assert (tmp_path / "per_layer_hit_rate.png").exists()
    assert "stall_and_time_vs_capacity: skipped (no timed run" in printed
    assert not (tmp_path / "hardware_time_per_token.png").exists()


def test_timed_sweep_over_traces_and_machines_draws_every_figure(tmp_path, capsys):
    model = get_preset("deepseek-v2-lite")
    traces = []
    for reuse in (0.0, 0.4):
        path = tmp_path / f"reuse{reuse}.parquet"
        write_synthetic(path, model, SynthParams(sequences=1, tokens_per_sequence=12, reuse=reuse))
        traces.append(str(path))
    moe_sim("-m", f"trace.path={','.join(traces)}", "hardware=rtx4090_pcie4,gh200_c2c", "policy=lru,belady",
            "cache.capacity=8,16", "replay.timeline=[2,4]", f"hydra.sweep.dir={tmp_path / 'grid'}",
            cwd=tmp_path)  # tiny jobs: in-process
    plot.main([str(tmp_path / "grid"), "--out", str(tmp_path / "fig")])
    assert "skipped" not in capsys.readouterr().out
    for name in plot.FIGURES:
        assert (tmp_path / "fig" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "fig" / f"{name}.pdf").stat().st_size > 0


def test_submitit_local_executor_runs_a_sweep(tmp_path):
    moe_sim("-m", "policy=lru,belady", "cache.capacity=8", "replay.timed=false", "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={tmp_path / 'grid'}", cwd=tmp_path)
    assert len(metrics(tmp_path / "grid")) == 2


def test_slurm_launcher_config_composes(tmp_path):
    out = moe_sim("+sweep=capacity_vs_policy", "hydra/launcher=slurm", "hydra.launcher.partition=cpu", "--cfg", "hydra",
                  cwd=tmp_path)
    assert "SlurmLauncher" in out and "partition: cpu" in out and "cpus_per_task: 1" in out


def test_job_dirname_is_order_free_and_safe():
    a = job_dirname(["+sweep=capacity_vs_policy", "policy=lru", "cache.capacity=8", "trace.path=/data/x/ds.parquet"])
    b = job_dirname(["trace.path=/data/x/ds.parquet", "cache.capacity=8", "policy=lru"])
    assert a == b and "/" not in a and a.startswith("cache.capacity=8,policy=lru,trace.path=ds-")
    assert job_dirname(["trace.path=/data/y/ds.parquet"]) != job_dirname(["trace.path=/data/x/ds.parquet"])
    assert job_dirname([]) == "defaults"


def test_is_complete_needs_metrics_with_the_same_config(tmp_path):
    config = {"cache": {"capacity": 8}, "replay": {"timed": True, "progress": True}}
    inputs = {"trace.path": "ab12"}
    assert not is_complete(tmp_path, config, inputs)
    (tmp_path / METRICS_FILE).write_text(json.dumps({"config": {**config, "replay": {"timed": True, "progress": False}},
                                                     "inputs": inputs}))
    assert is_complete(tmp_path, config, inputs)  # the progress bar does not change results
    assert not is_complete(tmp_path, {**config, "cache": {"capacity": 16}}, inputs)
    assert not is_complete(tmp_path, config, {"trace.path": "cd34"})  # same path, other contents
    (tmp_path / METRICS_FILE).write_text(json.dumps({"config": config}))  # written before inputs were recorded
    assert not is_complete(tmp_path, config, inputs)
    (tmp_path / METRICS_FILE).write_text('{"config": ')  # never happens (written atomically), but not complete
    assert not is_complete(tmp_path, config, inputs)


def test_input_digests_cover_every_file_the_config_names(tmp_path):
    trace, train = tmp_path / "t.parquet", tmp_path / "train.parquet"
    trace.write_bytes(b"rows")
    train.write_bytes(b"other rows")
    config = {"trace": {"path": str(trace)}, "hardware": {"profile": "rtx4090_pcie4"},
              "prefetch": {"_target_": "transition", "train_trace": str(train)}, "policy": {"_target_": "lru"}}
    digests = input_digests(config)
    assert sorted(digests) == ["hardware.profile", "prefetch.train_trace", "trace.path"]
    assert digests["trace.path"] == hashlib.sha256(b"rows").hexdigest()
    trace.write_bytes(b"rows, re-imported")
    assert input_digests(config)["trace.path"] != digests["trace.path"]
    assert input_digests({**config, "trace": {"path": None}})["trace.path"] == \
        hashlib.sha256(Path(DEFAULT_TRACE).read_bytes()).hexdigest()
    assert sorted(input_digests({**config, "policy": {"note": "x" * 5000}})) == sorted(digests)  # too long to be a file name: no error, no key


def test_a_rerun_after_the_trace_changed_is_not_skipped(tmp_path):
    trace = tmp_path / "t.parquet"
    model = get_preset("olmoe-1b-7b")
    write_synthetic(trace, model, SynthParams(sequences=1, tokens_per_sequence=8, seed=1))
    args = [f"trace.path={trace}", "replay.timed=false", "cache.capacity=8", f"hydra.run.dir={tmp_path / 'run'}"]
    moe_sim(*args, cwd=tmp_path)
    assert moe_sim(*args, cwd=tmp_path).startswith("skip ")
    write_synthetic(trace, model, SynthParams(sequences=1, tokens_per_sequence=8, seed=2))  # same path, new rows
    assert not moe_sim(*args, cwd=tmp_path).startswith("skip ")


@pytest.fixture(scope="module")
def plugin_sweep(tmp_path_factory) -> Path:
    """prefetch=none,oracle × miss=load,cpu × 2 capacities on a small Mixtral-shaped trace: axes that include the
    defaults, whose plug-in is absent (`none`, `load`)."""
    cwd = tmp_path_factory.mktemp("plugins")
    trace = cwd / "mixtral.parquet"
    write_synthetic(trace, get_preset("mixtral-8x7b"), SynthParams(sequences=2, tokens_per_sequence=12, seed=3))
    moe_sim("-m", f"trace.path={trace}", "prefetch=none,oracle", "miss=load,cpu", "cache.capacity=3,4",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={cwd / 'grid'}", cwd=cwd)
    return cwd / "grid"


def test_report_keeps_apart_runs_that_differ_in_a_plugin_with_a_default(plugin_sweep):
    table = report.load_runs(plugin_sweep)
    assert len(table) == 8
    assert set(table["prefetch"]) == {"none", "oracle"} and set(table["miss"]) == {"load", "cpu"}
    assert table[["prefetch", "miss"]].notna().all().all()
    assert {"prefetch", "miss"} <= set(report.varying(table))
    assert not any(c.endswith("._target_") for c in report.varying(table))
    text = report.summary(table)
    hit = report.pivot(table, "hit_rate", report.varying(table, {"hardware", "replay.timed"}))
    assert len(hit) == 4  # four distinct (prefetch, miss) rows, one value per capacity each, none averaged
    for (prefetch, miss, policy), row in hit.iterrows():
        for capacity, value in row.items():
            run = table[(table["prefetch"] == prefetch) & (table["miss"] == miss) & (table["cache.capacity"] == capacity)]
            assert len(run) == 1 and value == run["hit_rate"].iloc[0]
    assert hit.loc[("none", "cpu", "lru")].max() == 0.0 < hit.loc[("none", "load", "lru")].min()  # every miss runs on the CPU: nothing enters the cache
    assert "nan" not in text and "_target_" not in text and "Prefetcher" not in text


def test_figures_label_panels_with_the_registered_names(plugin_sweep, tmp_path):
    table = report.load_runs(plugin_sweep)
    titles = [title for title, _ in plot.panels(table, report.varying(table, {"hardware", "replay.timed"}))]
    assert len(titles) == 4 and all("nan" not in t and "_target_" not in t for t in titles)
    assert any("prefetch=oracle" in t and "miss=cpu" in t for t in titles)
    written = plot.plot_sweep(plugin_sweep, tmp_path / "fig")
    for figure in ("hit_rate_vs_capacity", "stall_and_time_vs_capacity", "per_layer_hit_rate"):
        assert isinstance(written[figure], list) and all(p.stat().st_size > 0 for p in written[figure]), written


def test_ctrl_c_in_a_multirun_is_one_line_and_rerunning_resumes(tmp_path):
    import os
    import signal
    import time

    args = [*MOE_SIM, "-m", "policy=lru,lfu,fifo", "cache.capacity=8,16,32", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'grid'}", "replay.progress=false"]
    run = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
    deadline = time.monotonic() + 120
    while not list((tmp_path / "grid").glob(f"*/{METRICS_FILE}")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    if run.returncode == 0:
        pytest.skip("the sweep finished before the interrupt reached it")
    lines = err.strip().splitlines()
    assert run.returncode == 130 and len(lines) == 1, err[-2000:]
    assert "interrupted;" in lines[0] and "finished in" in lines[0] and "run the same command again" in lines[0]
    done = len(list((tmp_path / "grid").glob(f"*/{METRICS_FILE}")))
    assert f"{done} run(s) finished" in lines[0] or f"{done - 1} run(s) finished" in lines[0]  # a job may end meanwhile
    out = moe_sim(*args[len(MOE_SIM):], cwd=tmp_path)
    assert out.count("skip ") >= done - 1 and len(list((tmp_path / "grid").glob(f"*/{METRICS_FILE}"))) == 9
