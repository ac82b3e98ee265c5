"""What a sweep's jobs share within one process: a small trace read once, a profile parsed once, and Hydra's early
composition check done once per shape of job; each re-reads a file that changed."""

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.sweep import _shape
from hardware_profiles.schema import PROFILE_DIR, load_profile
from simulator.presets import get_preset
from traces.format import TraceFile
from traces.synth import SynthParams, write_synthetic


def rows(trace: TraceFile, **kw) -> list[tuple]:
    """Every row's (sequence, token, layer, experts, weights), whatever the batches."""
    out = []
    for c in trace.chunks(**kw):
        weights = [None] * len(c) if c.weights is None else c.weights.tolist()
        out += zip(c.sequence.tolist(), c.token.tolist(), c.layer.tolist(), c.experts.tolist(), weights)
    return out


def test_a_one_batch_trace_read_again_gives_the_same_rows_and_a_changed_file_is_read_anew(tmp_path):
    path = tmp_path / "t.parquet"
    model = get_preset("mixtral-8x7b")
    write_synthetic(path, model, SynthParams(sequences=2, tokens_per_sequence=8, seed=1))
    first = rows(TraceFile(path))
    assert rows(TraceFile(path)) == first
    assert rows(TraceFile(path), weights=True) != first  # other columns: another entry
    chunk = next(TraceFile(path).chunks())
    with pytest.raises(ValueError):
        chunk.experts[0, 0] = 0  # shared with the next job: read-only
    write_synthetic(path, model, SynthParams(sequences=2, tokens_per_sequence=8, seed=2))  # same path, new rows
    assert rows(TraceFile(path)) != first
    assert rows(TraceFile(path)) == rows(TraceFile(path), batch_rows=7)  # streamed in batches: the same rows


def test_a_trace_over_one_batch_streams(tmp_path):
    path = tmp_path / "t.parquet"
    write_synthetic(path, get_preset("mixtral-8x7b"), SynthParams(sequences=1, tokens_per_sequence=8))
    chunks = list(TraceFile(path).chunks(batch_rows=100))
    assert len(chunks) > 1
    assert np.concatenate([c.layer for c in chunks]).tolist() == next(TraceFile(path).chunks()).layer.tolist()


def test_a_profile_is_parsed_again_when_its_file_changes(tmp_path):
    path = tmp_path / "p.yaml"
    text = (PROFILE_DIR / "rtx4090_pcie4.yaml").read_text()
    path.write_text(text)
    assert load_profile(str(path)) is load_profile(str(path))
    path.write_text(text.replace("description:", "description: edited", 1))
    os.utime(path, ns=(1, 1))  # another mtime even on a coarse clock
    assert load_profile(str(path)).description.startswith("edited")


def test_jobs_that_differ_only_in_dotted_values_share_a_shape():
    assert _shape("cache.capacity=8") == _shape("cache.capacity=16") == "cache.capacity"
    for override in ("policy=lru", "seed=1", "hydra.launcher.n_jobs=2", "~cache.scope=layer", "hydra/launcher=joblib"):
        assert _shape(override) == override


def test_a_sweep_that_cannot_compose_fails_before_any_job_runs(tmp_path):
    result = subprocess.run([sys.executable, "-c", "from experiments.app import main; main()", "-m",
                             "+cache.capacity=8,16", "replay.timed=false", f"hydra.sweep.dir={tmp_path / 's'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert not [p for p in (tmp_path / "s").glob("*") if p.is_dir()]
