"""Importers: hand-written files in both public formats, their defects and malformations, and the real shared files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.helpers import toy_model
from simulator.errors import InputError
from traces.format import PHASES, TraceFile
from traces.importers import expand_inputs, moe_beyond, vllm_jsonl

TOY = toy_model(layers=2, experts=8, top_k=2)

# Two MoE layers (file ids 1 and 2), three tokens; the second token's text is a quoted comma.
TRAINING_CSV = """Layer ID,Batch Number,Token,Activated Expert IDs
1,0,Hello,"[3, 1]"
1,0,",","[0, 2]"
1,0,world,"[7, 6]"
2,0,Hello,"[5, 4]"
2,0,",","[1, 0]"
2,0,world,"[2, 3]"
"""
PREDICTED_CSV = """Layer ID,Token,Activated Expert IDs,Predicted Expert IDs
1,0,"[1, 3]","[1, 3]"
1,1,"[0, 2]","[0, 5]"
2,0,"[4, 5]","[4, 6]"
2,1,"[0, 1]","[0, 1]"
"""


def read_all(path, predictions=()):
    """All rows of a trace as one chunk-like dict of arrays (validated by TraceFile on the way)."""
    trace = TraceFile(path)
    chunks = list(trace.chunks(predictions=list(predictions), extras=True))
    out = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in ("sequence", "token", "layer", "experts")}
    for name in ("weights", "token_id", "phase"):
        if getattr(chunks[0], name) is not None:
            out[name] = np.concatenate([getattr(c, name) for c in chunks])
    for name in predictions:
        out[name] = [ids for c in chunks for ids in c.predictions[name]]
    return trace, out


def write(path, text):
    path.write_text(text)
    return path


# --- MoE-Beyond CSV ---------------------------------------------------------------------------------------------

def test_moe_beyond_rows_regrouped_to_token_then_layer(tmp_path):
    src = write(tmp_path / "prompt_1_data.csv", TRAINING_CSV)
    summary = moe_beyond.import_files([src], tmp_path / "t.parquet", TOY)
    trace, rows = read_all(tmp_path / "t.parquet")
    assert (summary.rows, summary.sequences, summary.tokens) == (6, 1, 3)
    assert rows["token"].tolist() == [0, 0, 1, 1, 2, 2]
    assert rows["layer"].tolist() == [0, 1, 0, 1, 0, 1]
    assert rows["experts"].tolist() == [[3, 1], [5, 4], [0, 2], [1, 0], [7, 6], [2, 3]]
    assert trace.meta.moe_layer_ids == [1, 2]
    prov = trace.meta.provenance
    assert prov["source_format"] == "moe-beyond-csv" and prov["files"] == ["prompt_1_data.csv"]
    assert prov["importer_version"] == moe_beyond.IMPORTER_VERSION
    assert rows["token_id"].tolist() == [0, 0, 1, 1, 2, 2]  # Hello , world


def test_moe_beyond_token_ids_number_texts_by_first_appearance_across_files(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    write(folder / "prompt_1_data.csv", TRAINING_CSV)
    write(folder / "prompt_2_data.csv", TRAINING_CSV.replace("Hello", "again").replace("world", "Hello"))
    moe_beyond.import_files([folder], tmp_path / "t.parquet", TOY)
    trace, rows = read_all(tmp_path / "t.parquet")
    assert trace.has_token_id and "token_id" in trace.meta.provenance
    assert rows["token_id"][::2].tolist() == [0, 1, 2, 3, 1, 0]  # Hello , world | again , Hello


def test_moe_beyond_predicted_layout_keeps_predictions(tmp_path):
    src = write(tmp_path / "p.csv", PREDICTED_CSV)
    moe_beyond.import_files([src], tmp_path / "t.parquet", TOY)
    trace, rows = read_all(tmp_path / "t.parquet", predictions=["moe_beyond"])
    assert trace.prediction_columns == ["moe_beyond"]
    assert rows["experts"].tolist() == [[1, 3], [4, 5], [0, 2], [0, 1]]
    assert rows["moe_beyond"] == [[1, 3], [4, 6], [0, 5], [0, 1]]
    assert trace.meta.provenance["source_format"] == "moe-beyond-predicted-csv"
    assert not trace.has_token_id and "token_id" not in rows  # its Token is a position, not a text


def test_folder_is_taken_in_numeric_name_order(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "prompt_10_data.csv", TRAINING_CSV)
    write(folder / "prompt_2_data.csv", TRAINING_CSV.replace("[3, 1]", "[6, 7]"))
    write(folder / "notes.txt", "not a trace")
    assert [p.name for p in expand_inputs([folder], ".csv")] == ["prompt_2_data.csv", "prompt_10_data.csv"]
    moe_beyond.import_files([folder], tmp_path / "t.parquet", TOY)
    trace, rows = read_all(tmp_path / "t.parquet")
    assert trace.meta.provenance["files"] == ["prompt_2_data.csv", "prompt_10_data.csv"]
    assert rows["experts"][0].tolist() == [6, 7] and rows["experts"][6].tolist() == [3, 1]
    assert rows["sequence"].tolist() == [0] * 6 + [1] * 6


@pytest.mark.parametrize(
    "old, new, field",
    [
        ('"[3, 1]"', '"[3, x]"', "Activated Expert IDs"),                 # not a list of integers
        ('"[3, 1]"', "\"__import__('os').system('true')\"", "Activated Expert IDs"),  # code is never evaluated
        ('"[3, 1]"', '"[3, 8]"', "Activated Expert IDs"),                 # id out of range (8 experts)
        ('"[3, 1]"', '"[3]"', "Activated Expert IDs"),                    # top-k mismatch
        ('"[3, 1]"', '"[3, 3]"', "Activated Expert IDs"),                 # repeated expert
        ("2,0,world", "3,0,world", "Layer ID"),                           # layer outside 1..2
        ("2,0,world", "1,0,world", "Layer ID"),                           # layers with unequal token counts
        ("2,0,world", "two,0,world", "Layer ID"),                         # not an integer
        ("2,0,world", "2,1,world", "Batch Number"),                       # a second batch
        ("2,0,world", "2,0,earth", "Token"),                              # another text at a position
        ("Layer ID,Batch", "Layer,Batch", "header"),                      # unknown layout
        ('2,0,world,"[2, 3]"', '2,0,world,"[2, 3]",extra', "csv"),       # malformed row
    ],
)
def test_moe_beyond_bad_input_names_file_and_field(tmp_path, old, new, field):
    assert old in TRAINING_CSV
    src = write(tmp_path / "bad.csv", TRAINING_CSV.replace(old, new, 1))
    with pytest.raises(InputError) as err:
        moe_beyond.import_files([src], tmp_path / "t.parquet", TOY)
    message = str(err.value)
    assert str(src) in message and field in message and "\n" not in message
    assert not (tmp_path / "t.parquet").exists(), "no partial output"


def test_mixed_layouts_and_missing_inputs_are_rejected(tmp_path):
    a = write(tmp_path / "a.csv", TRAINING_CSV)
    b = write(tmp_path / "b.csv", PREDICTED_CSV)
    with pytest.raises(InputError, match="b.csv: header"):
        moe_beyond.import_files([a, b], tmp_path / "t.parquet", TOY)
    with pytest.raises(InputError, match="nothing.csv: no such file"):
        moe_beyond.import_files([tmp_path / "nothing.csv"], tmp_path / "t.parquet", TOY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder has no"):
        moe_beyond.import_files([tmp_path / "empty"], tmp_path / "t.parquet", TOY)


# --- vLLM JSON lines --------------------------------------------------------------------------------------------

MODEL3 = toy_model(layers=3, experts=4, top_k=2)


def vllm_log(prefill_tokens, decode_steps, drop=()):
    """A log for MODEL3 in execution order, with its full (token, layer) -> experts grid; `drop` lists the
    (token, layer) entries the logger left out (tokens counted over prefill then decode)."""
    rng = np.random.default_rng(3)
    grid = {}
    lines = []
    order = [(t, l) for l in range(3) for t in range(prefill_tokens)]
    order += [(prefill_tokens + s, l) for s in range(decode_steps) for l in range(3)]
    for t, l in order:
        ids = rng.choice(4, 2, replace=False).tolist()
        grid[t, l] = ids
        if (t, l) not in drop:
            pos = t if t < prefill_tokens else 0
            lines.append(json.dumps({"dataset": "toy", "problem_id": 7, "layer": l, "token_pos": pos,
                                     "experts": ids, "gating_probs": [0.75, 0.25]}))
    return "\n".join(lines) + "\n", grid


def test_vllm_gaps_become_unrecorded_rows_in_place(tmp_path):
    # Dropped: a prefill entry, the last layer of decode step 0 together with the first of step 1 (the layer index
    # then goes 1 -> 1, still a new step), and a middle layer of step 2.
    drop = {(1, 2), (4, 2), (5, 0), (6, 1)}
    text, grid = vllm_log(prefill_tokens=4, decode_steps=3, drop=drop)
    src = write(tmp_path / "log.jsonl", text)
    summary = vllm_jsonl.import_files([src], tmp_path / "t.parquet", MODEL3)
    trace, rows = read_all(tmp_path / "t.parquet")
    assert (summary.rows, summary.sequences, summary.tokens) == (21, 1, 7)
    assert rows["token"].tolist() == np.repeat(np.arange(7), 3).tolist()
    for i, (t, l) in enumerate(zip(rows["token"].tolist(), rows["layer"].tolist())):
        expected = [-1, -1] if (t, l) in drop else grid[t, l]
        assert rows["experts"][i].tolist() == expected, (t, l)
        assert np.isnan(rows["weights"][i]).all() == ((t, l) in drop)
    assert rows["phase"].tolist() == [PHASES.index("prefill")] * 12 + [PHASES.index("decode")] * 9
    assert "missing (token, layer) entries" in summary.notes[0] and "prefill 1 of 12, decode 3 of 9" in summary.notes[0]
    seq = trace.meta.provenance["sequences"][0]
    assert (seq["prefill_tokens"], seq["decode_steps"], seq["missing_prefill"], seq["missing_decode"]) == (4, 3, 1, 3)
    assert trace.meta.provenance["missing_entries"] == 4


def test_vllm_sequences_are_dataset_and_problem(tmp_path):
    one, _ = vllm_log(2, 1)
    two, _ = vllm_log(3, 2)
    src = write(tmp_path / "log.jsonl", one + two.replace('"problem_id": 7', '"problem_id": 8'))
    summary = vllm_jsonl.import_files([src], tmp_path / "t.parquet", MODEL3)
    trace, rows = read_all(tmp_path / "t.parquet")
    assert summary.sequences == 2 and summary.tokens == 3 + 5
    assert [s["problem_id"] for s in trace.meta.provenance["sequences"]] == [7, 8]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda rows: rows[:1] + ["{not json"] + rows[1:], "line 2: json"),
        (lambda rows: [r.replace('"token_pos": 0, ', "") for r in rows], "field 'token_pos' is missing"),
        (lambda rows: [r.replace('"experts": [', '"experts": [9, ') for r in rows], "field 'experts'"),
        (lambda rows: [r.replace('"layer": 2', '"layer": 3') for r in rows], "field 'layer'"),
        (lambda rows: [r.replace("[0.75, 0.25]", "[0.75]") for r in rows], "field 'gating_probs'"),
        (lambda rows: rows[:-1] + [rows[-1].replace('"token_pos": 0', '"token_pos": 4')], "field 'token_pos'"),
    ],
)
def test_vllm_bad_input_names_file_and_field(tmp_path, mutate, field):
    text, _ = vllm_log(2, 2)
    src = write(tmp_path / "log.jsonl", "\n".join(mutate(text.splitlines())) + "\n")
    with pytest.raises(InputError) as err:
        vllm_jsonl.import_files([src], tmp_path / "t.parquet", MODEL3)
    assert str(src) in str(err.value) and field in str(err.value)


# --- the real shared traces -------------------------------------------------------------------------------------

def test_real_moe_beyond_longest_prompt(shared_traces, tmp_path):
    start = time.perf_counter()
    summary = moe_beyond.import_files([shared_traces / "deepseek_v2_lite_moebeyond_prompt_1351_data.csv"], tmp_path / "t.parquet")
    assert time.perf_counter() - start < 2.0
    trace = TraceFile(tmp_path / "t.parquet")
    assert (summary.rows, summary.sequences, summary.tokens) == (2781 * 26, 1, 2781)
    assert (trace.meta.model.name, trace.meta.model.top_k, trace.meta.moe_layer_ids) == ("deepseek-v2-lite", 6, list(range(1, 27)))
    first = next(trace.chunks(token_ids=True))
    assert first.experts[0].tolist() == [8, 26, 56, 57, 60, 43]  # the file's first row: layer 1, token 0
    ids = np.concatenate([c.token_id for c in trace.chunks(token_ids=True)])[::26]
    assert ids[0] == 0 and len(np.unique(ids)) == 478 and ids[4] == ids[16]  # " payment" at positions 4 and 16


def test_real_moe_beyond_predicted_folder(shared_traces, tmp_path):
    summary = moe_beyond.import_files([shared_traces / "moe-beyond-test-predicted"], tmp_path / "t.parquet")
    trace, rows = read_all(tmp_path / "t.parquet", predictions=["moe_beyond"])
    assert summary.sequences == 100 and summary.rows == 40118
    assert trace.meta.provenance["files"][:3] == [f"prompt_{i}_data_predicted.csv" for i in (1, 2, 3)]
    assert rows["moe_beyond"][0] == [8, 26, 43, 56, 57, 60] and rows["moe_beyond"][26] == [8, 22, 43, 46, 56, 63]


def test_real_mixtral_log_gaps(shared_traces, tmp_path):
    summary = vllm_jsonl.import_files([shared_traces / "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl"], tmp_path / "t.parquet")
    trace, rows = read_all(tmp_path / "t.parquet")
    seq = trace.meta.provenance["sequences"][0]
    assert (seq["prefill_tokens"], seq["decode_steps"]) == (135, 83)
    assert (seq["missing_prefill"], seq["missing_decode"]) == (122, 77)
    assert summary.rows == (135 + 83) * 32 and int((rows["experts"] < 0).all(axis=1).sum()) == 199
