"""`moe-trace`: the three commands end to end, and the one-line, status-2 answer to every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulator.presets import get_preset
from traces.cli import main
from traces.format import TraceFile
from traces.info import summarize
from traces.synth import SynthParams, write_synthetic


def deepseek_csv(tokens: int = 3) -> str:
    """A MoE-Beyond training CSV in DeepSeek-V2-Lite's shape (layers 1..26, top-6)."""
    rows = ["Layer ID,Batch Number,Token,Activated Expert IDs"]
    for layer in range(1, 27):
        for t in range(tokens):
            ids = [(layer + t + 7 * j) % 64 for j in range(6)]
            rows.append(f'{layer},0,tok{t},"{ids}"')
    return "\n".join(rows) + "\n"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert err.startswith("moe-trace: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_synth_then_info(tmp_path, capsys):
    out_file = tmp_path / "s.parquet"
    code, out, _ = run(capsys, "synth", "-o", str(out_file), "--sequences", "2", "--tokens", "50", "--seed", "3",
                       "--skew", "1.2", "--reuse", "0.3", "--cross-layer", "0.2")
    assert code == 0 and "2,600 rows" in out
    assert TraceFile(out_file).meta.provenance["skew"] == 1.2

    code, out, _ = run(capsys, "info", str(out_file), "--json", str(tmp_path / "info.json"))
    assert code == 0
    assert "deepseek-v2-lite: 26 MoE layers" in out and "top-6" in out
    assert "sequences   2; tokens 100" in out and "rows        2,600" in out
    assert "overlap" in out and "entropy" in out and "predictions: none" in out
    summary = json.loads((tmp_path / "info.json").read_text())
    assert summary["rows"] == 2600 and len(summary["popularity"]["top_share"]) == 26
    assert 0 < summary["consecutive_overlap"]["mean"] < 1


def test_info_statistics_do_not_depend_on_chunking(tmp_path):
    path = tmp_path / "s.parquet"
    write_synthetic(path, get_preset("mixtral-8x7b"), SynthParams(sequences=3, tokens_per_sequence=100, reuse=0.4))
    whole = summarize(path)
    assert summarize(path, batch_rows=1000) == whole  # chunk edges fall inside sequences and tokens
    assert (whole["sequences"], whole["tokens"], whole["rows"]) == (3, 300, 9600)


def test_import_and_info(tmp_path, capsys):
    folder = tmp_path / "csvs"
    folder.mkdir()
    (folder / "prompt_2_data.csv").write_text(deepseek_csv(3))
    (folder / "prompt_10_data.csv").write_text(deepseek_csv(5))
    code, out, _ = run(capsys, "import", "--format", "moe-beyond", str(folder), "-o", str(tmp_path / "t.parquet"), "--dtype", "fp8")
    assert code == 0 and "2 sequence(s), 8 tokens" in out
    assert TraceFile(tmp_path / "t.parquet").meta.model.param_bytes == 1.0

    code, out, _ = run(capsys, "info", str(tmp_path / "t.parquet"))
    assert code == 0 and "model layers 1..26" in out and "per sequence min 3, median 4, max 5" in out


def test_vllm_import_reports_gaps_on_one_line(shared_traces, tmp_path, capsys):
    log = shared_traces / "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl"
    code, out, err = run(capsys, "import", "--format", "vllm-jsonl", str(log), "-o", str(tmp_path / "m.parquet"))
    assert code == 0 and "6,976 rows" in out
    assert err.count("\n") == 1 and "filled 199 missing" in err and "decode 77 of 2,656" in err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["import", "--format", "moe-beyond", "{tmp}/absent.csv", "-o", "{tmp}/o.parquet"], ["absent.csv", "no such file"]),
        (["import", "--format", "csv", "{tmp}/a.csv", "-o", "{tmp}/o.parquet"], ["--format", "invalid choice"]),
        (["import", "--format", "moe-beyond", "{tmp}/bad.csv", "-o", "{tmp}/o.parquet"], ["bad.csv", "Activated Expert IDs", "[1, 2, oops]"]),
        (["import", "--format", "moe-beyond", "--model", "gpt-5", "{tmp}/bad.csv", "-o", "{tmp}/o.parquet"], ["model", "gpt-5"]),
        (["import", "--format", "vllm-jsonl", "{tmp}/bad.csv", "-o", "{tmp}/o.parquet"], ["bad.csv", "line 1: json"]),
        (["synth", "-o", "{tmp}/o.parquet", "--reuse", "2"], ["reuse", "2.0"]),
        (["synth", "-o", "{tmp}/o.parquet", "--tokens", "many"], ["--tokens", "many"]),
        (["info", "{tmp}/bad.csv"], ["bad.csv", "Parquet"]),
        ([], ["required"]),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, argv, fragments):
    (tmp_path / "bad.csv").write_text("Layer ID,Batch Number,Token,Activated Expert IDs\n1,0,a,\"[1, 2, oops]\"\n")
    code, out, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "o.parquet").exists()


def test_console_script_prints_no_traceback(tmp_path):
    (tmp_path / "bad.csv").write_text("Layer ID,Batch Number,Token,Activated Expert IDs\n1,0,a,\"[1, 2\n")
    done = subprocess.run([sys.executable, "-m", "traces.cli", "import", "--format", "moe-beyond", str(tmp_path / "bad.csv"),
                           "-o", str(tmp_path / "o.parquet")], capture_output=True, text=True)
    assert_one_line_error(done.returncode, done.stderr, "bad.csv")
