"""Prompt loading for the recorder, and `moe-trace record` without torch: neither needs torch or transformers."""

import sys

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import traces
from simulator.errors import InputError
from traces import cli
from traces.prompts import load_prompts


def test_text_file_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  \nsecond one\n")
    assert load_prompts(path) == ["first prompt", "second one"]
    assert load_prompts(path, limit=1) == ["first prompt"]


def test_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a\\nmulti-line prompt", "id": 1}\n\n{"text": "b"}\n')
    assert load_prompts(path) == ["a\nmulti-line prompt", "b"]
    path.write_text('{"prompt": "c"}\n')
    assert load_prompts(path, text_field="prompt") == ["c"]
    path.write_text('{"text": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(InputError, match=r"p.jsonl: line 2: field 'text' is missing"):
        load_prompts(path)
    path.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(InputError, match=r"line 2: not JSON"):
        load_prompts(path)


def test_tables_and_dataset_folders(tmp_path):
    table = pa.table({"text": ["one", "two"], "label": [0, 1]})
    pq.write_table(table, tmp_path / "p.parquet")
    assert load_prompts(tmp_path / "p.parquet") == ["one", "two"]
    (tmp_path / "p.csv").write_text("question,text\nq,three\n")
    assert load_prompts(tmp_path / "p.csv") == ["three"]
    assert load_prompts(tmp_path / "p.csv", text_field="question") == ["q"]
    with pytest.raises(InputError, match="column 'prompt' is missing"):
        load_prompts(tmp_path / "p.parquet", text_field="prompt")
    with pytest.raises(InputError, match="column 'label' has type int64"):
        load_prompts(tmp_path / "p.parquet", text_field="label")

    saved = tmp_path / "saved"  # the layout of datasets' save_to_disk: Arrow IPC streams in name order
    saved.mkdir()
    for i, texts in enumerate((["x1", "x2"], ["x3"])):
        with ipc.new_stream(saved / f"data-0000{i}-of-00002.arrow", table.schema) as writer:
            writer.write_table(pa.table({"text": texts, "label": [0] * len(texts)}))
    (saved / "state.json").write_text("{}")
    assert load_prompts(saved) == ["x1", "x2", "x3"]


def test_bad_sources_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="holds no prompts"):
        load_prompts(tmp_path / "empty.txt")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "dataset_dict.json").write_text("{}")
    with pytest.raises(InputError, match="give the folder of one split"):
        load_prompts(tmp_path / "splits")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable parquet table"):
        load_prompts(tmp_path / "bad.parquet")


def test_record_without_torch_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "traces.record", raising=False)
    monkeypatch.delattr(traces, "record", raising=False)
    (tmp_path / "p.txt").write_text("hello\n")
    rc = cli.main(["record", "--model", "m", "--prompts", str(tmp_path / "p.txt"), "-o", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "pip install -e '.[record]'" in err
