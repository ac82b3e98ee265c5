"""The acceptance command of the placement issue, as a user runs it: `moe-sim -m placement=static-layers
placement.cpu_layers=...` on the shipped DeepSeek-V2-Lite trace and the desktop profile gives time per token against
the CPU layers, and `moe-sim-plot` draws it (experiments/plot.py `time_vs_cpu_layers`)."""

import subprocess
import sys

import pandas as pd
import yaml

from experiments import plot, report
from experiments.overrides import CONF_DIR

MOE_SIM = [sys.executable, "-c", "from experiments.app import main; main()"]


def test_time_per_token_against_cpu_layers_and_its_figure(tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run([*MOE_SIM, "-m", "placement=static-layers", "placement.cpu_layers=0,8,26", "cache.capacity=64",
                             "replay.progress=false", f"hydra.sweep.dir={out}"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = report.load_runs(out).sort_values("placement.cpu_layers")
    assert list(runs["placement.cpu_layers"]) == [0, 8, 26]
    # A layer-sized cache holds every GPU layer's experts: each layer moved to the CPU costs its CPU time, so time
    # per token rises with the layers, and with all 26 on the CPU nothing hits.
    times = list(runs["time_per_token_s"])
    assert times[0] < times[1] < times[2]
    assert list(runs["hit_rate"])[-1] == 0.0 and list(runs["cpu_utilisation"])[0] == 0.0
    written = plot.time_vs_cpu_layers(runs, tmp_path / "figures")
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in written)


def test_the_shipped_sweep_is_the_documented_grid():
    doc = yaml.safe_load((CONF_DIR / "sweep" / "cpu_layers.yaml").read_text())
    params = {k: str(v).split(",") for k, v in doc["hydra"]["sweeper"]["params"].items()}
    assert params["placement"] == ["static-layers"] and params["cache.capacity"] == ["16", "64"]
    assert params["placement.cpu_layers"][0] == "0" and params["placement.cpu_layers"][-1] == "26"


def test_the_figure_is_skipped_without_static_layers_runs(tmp_path):
    assert "static-layers" in plot.time_vs_cpu_layers(pd.DataFrame({"run": []}), tmp_path)
