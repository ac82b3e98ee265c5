"""Importers of the formats serving and training stacks record routing in: vLLM and SGLang routed experts (JSONL of
responses), per-request .npz/.npy arrays, Megatron-core router traces, and the long format's `--columns` (FLAME-MoE's
per-layer Parquet files). Inputs are built here to the documented shapes; each import must give back exactly the
arrays written, with the right sequences and phases, and each malformation one line and status 2."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simulator.errors import InputError
from simulator.presets import get_preset
from tests.helpers import toy_model
from traces.cli import main
from traces.format import PHASES, TraceFile
from traces.importers import long_format, megatron_routing, routed_npy, sglang_routed, vllm_routed

TOY = toy_model(layers=2, experts=8, top_k=2)
MIXTRAL = get_preset("mixtral-8x7b")  # 32 MoE layers, 8 experts, top-2: the model of the command-line cases
PREFILL, DECODE = PHASES.index("prefill"), PHASES.index("decode")


def routing(tokens: int, layers: int = 2, experts: int = 8, k: int = 2, seed: int = 0, dtype=np.int16) -> np.ndarray:
    """[tokens, layers, k] distinct expert ids per (token, layer)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((tokens, layers, experts)), axis=2)[..., :k].astype(dtype)


def npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def int32_b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<i4").tobytes()).decode()


def write_jsonl(path, *objects) -> str:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return str(path)


def trace_rows(path):
    trace = TraceFile(path)
    chunks = list(trace.chunks(extras=True))
    rows = {n: np.concatenate([getattr(c, n) for c in chunks]) for n in ("sequence", "token", "layer", "experts")}
    rows["phase"] = np.concatenate([c.phase for c in chunks]) if trace.has_phase else None
    return trace, rows


def as_rows(array: np.ndarray) -> list:
    """[tokens, L, k] as the trace's experts column: one row per (token, layer)."""
    return array.reshape(-1, array.shape[2]).tolist()


def phases(prompt: int, tokens: int, layers: int = 2) -> list[int]:
    return np.repeat([PREFILL] * prompt + [DECODE] * (tokens - prompt), layers).tolist()


def import_cli(capsys, fmt: str, *inputs, out, extra=()):
    code = main(["import", "--format", fmt, "--model", "mixtral-8x7b", *map(str, inputs), "-o", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code, err, out_path, *fragments):
    assert code == 2, err
    assert err.startswith("moe-trace: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out_path.exists()


# --- vLLM ------------------------------------------------------------------------------------------------------

def test_vllm_merged_npy_and_split_lists_round_trip(tmp_path):
    merged = routing(7, seed=1, dtype=np.uint16)  # prompt 4 + output 4 - 1: the last sampled token has no row
    prompt, first, second = routing(3, seed=2), routing(5, seed=3), routing(2, seed=4)
    prompt[0] = -1  # a prefix-cached prompt token: vLLM records no routing for it
    write_jsonl(tmp_path / "r.jsonl",
                {"id": "cmpl-a", "choices": [{"index": 0, "routed_experts": npy_b64(merged)}],
                 "usage": {"prompt_tokens": 4, "completion_tokens": 4}},
                {"id": "cmpl-b", "prompt_routed_experts": prompt.tolist(),
                 "choices": [{"routed_experts": first.tolist()}, {"routed_experts": npy_b64(second)}]})
    summary = vllm_routed.import_files([tmp_path / "r.jsonl"], tmp_path / "t.parquet", TOY)
    trace, rows = trace_rows(tmp_path / "t.parquet")
    expected = [merged, np.concatenate([prompt, first]), np.concatenate([prompt, second])]
    assert rows["experts"].tolist() == sum((as_rows(a) for a in expected), [])
    assert rows["sequence"].tolist() == np.repeat([0, 1, 2], [14, 16, 10]).tolist()
    assert rows["token"].tolist() == np.concatenate([np.repeat(np.arange(len(a)), 2) for a in expected]).tolist()
    assert rows["layer"].tolist() == [0, 1] * 20
    assert rows["phase"].tolist() == phases(4, 7) + phases(3, 8) + phases(3, 5)
    requests = trace.meta.provenance["requests"]
    assert [(r["id"], r.get("choice"), r["prompt_tokens"], r["decode_tokens"]) for r in requests] == [
        ("cmpl-a", 0, 4, 3), ("cmpl-b", 0, 3, 5), ("cmpl-b", 1, 3, 2)]
    assert trace.meta.provenance["source_format"] == "vllm-routed" and trace.meta.moe_layer_ids == [0, 1]
    assert trace.meta.provenance["files"] == ["r.jsonl"] and "last sampled token" in trace.meta.provenance["guesses"]
    assert "3 request(s): 10 prompt tokens (prefill), 10 decode tokens" in summary.notes[0]
    assert "4 (token, layer) rows hold -1 only" in summary.notes[0]  # 2 cached rows in each of the 2 choices


def test_vllm_prompt_length_from_prompt_token_ids(tmp_path):
    array = routing(5)
    write_jsonl(tmp_path / "r.jsonl", {"choices": [{"routed_experts": npy_b64(array), "prompt_token_ids": [1, 2]}],
                                       "usage": {"prompt_tokens": 99}})
    vllm_routed.import_files([tmp_path / "r.jsonl"], tmp_path / "t.parquet", TOY)
    assert trace_rows(tmp_path / "t.parquet")[1]["phase"].tolist() == phases(2, 5)


def vllm_line(array=None, **fields):
    line = {"choices": [{"routed_experts": npy_b64(routing(3, layers=32) if array is None else array)}],
            "usage": {"prompt_tokens": 2}}
    line.update(fields)
    return line


@pytest.mark.parametrize("line, fragments", [
    ("not json", ["line 1: json"]),
    ({"id": "x"}, ["line 1: field 'choices' is missing"]),
    ({"choices": [{"routed_experts": None}]}, ["field 'choices[0].routed_experts' is missing or null"]),
    ({"choices": [{"routed_experts": "@@@"}]}, ["field 'choices[0].routed_experts': base64"]),
    ({"choices": [{"routed_experts": base64.b64encode(b"nonsense").decode()}]}, ["routed_experts': npy"]),
    ({"choices": [{"routed_experts": npy_b64(np.array([[[0, 1]] * 32], dtype=object))}]}, ["routed_experts': npy"]),
    (vllm_line(routing(3, layers=32, k=3)), ["shape (3, 32, 3) has top_k 3", "mixtral-8x7b routes top_k=2"]),
    (vllm_line(routing(3, layers=30)), ["shape (3, 30, 2) has 30 layers", "32 MoE layers"]),
    (vllm_line(routing(3, layers=32).astype(np.float32)), ["dtype float32 is not an integer type"]),
    (vllm_line(np.full((3, 32, 2), 8, dtype=np.int16)), ["[token 0, layer 0, slot 0]: 8 is outside 0..7"]),
    (vllm_line(np.zeros((3, 32, 2), dtype=np.int16)), ["[token 0, layer 0]: repeats an expert: [0, 0]"]),
    (vllm_line(usage={}), ["field 'usage.prompt_tokens' is missing", "where the prompt ends is unknown"]),
    (vllm_line(usage={"prompt_tokens": "2"}), ["field 'usage.prompt_tokens': '2' is not a non-negative integer"]),
    (vllm_line(usage={"prompt_tokens": 9}), ["a prompt of 9 tokens does not fit in its 3 rows"]),
    ({"prompt_routed_experts": [[[0, 1]] * 32], "choices": [{"routed_experts": [[[0, 1]] * 31]}]},
     ["field 'choices[0].routed_experts': shape (1, 31, 2) does not continue 'prompt_routed_experts' (1, 32, 2)"]),
    ({"prompt_routed_experts": [[[0, 1]] * 32, [[0, 1]] * 31], "choices": [{"routed_experts": [[[0, 1]] * 32]}]},
     ["field 'prompt_routed_experts': ragged"]),
])
def test_vllm_refusals(tmp_path, capsys, line, fragments):
    (tmp_path / "bad.jsonl").write_text((line if isinstance(line, str) else json.dumps(line)) + "\n")
    code, _, err = import_cli(capsys, "vllm-routed", tmp_path / "bad.jsonl", out=tmp_path / "o.parquet")
    assert_refused(code, err, tmp_path / "o.parquet", "bad.jsonl", *fragments)


def test_vllm_empty_file_and_model_required(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    code, _, err = import_cli(capsys, "vllm-routed", tmp_path / "empty.jsonl", out=tmp_path / "o.parquet")
    assert_refused(code, err, tmp_path / "o.parquet", "empty.jsonl", "no responses")
    code = main(["import", "--format", "vllm-routed", str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "o.parquet")])
    assert code == 2 and "--model is required for --format vllm-routed" in capsys.readouterr().err


def test_vllm_cli_round_trip_and_console_script(tmp_path, capsys):
    array = routing(6, layers=32, seed=5)
    write_jsonl(tmp_path / "r.jsonl", vllm_line(array))
    code, out, err = import_cli(capsys, "vllm-routed", tmp_path / "r.jsonl", out=tmp_path / "t.parquet")
    assert code == 0 and "192 rows, 1 sequence(s), 6 tokens (mixtral-8x7b)" in out
    assert "note: 1 request(s): 2 prompt tokens (prefill), 4 decode tokens" in err
    assert trace_rows(tmp_path / "t.parquet")[1]["experts"].tolist() == as_rows(array)
    write_jsonl(tmp_path / "bad.jsonl", vllm_line(usage={}))
    done = subprocess.run([sys.executable, "-m", "traces.cli", "import", "--format", "vllm-routed", "--model", "mixtral-8x7b",
                           str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "o.parquet")], capture_output=True, text=True)
    assert_refused(done.returncode, done.stderr, tmp_path / "o.parquet", "bad.jsonl: line 1: field 'usage.prompt_tokens'")


# --- SGLang ----------------------------------------------------------------------------------------------------

def test_sglang_native_drops_dense_layers_and_openai_choice(tmp_path):
    moe = routing(6, seed=6)  # prompt 4 + completion 3 - 1
    full = np.zeros((6, 3, 2), dtype=np.int32)  # layer 0 is dense: SGLang's buffer keeps it all 0
    full[:, 1:] = moe
    other = np.zeros((4, 3, 2), dtype=np.int32)
    other[:, 1:] = routing(4, seed=7)
    write_jsonl(tmp_path / "s.jsonl",
                {"text": "…", "meta_info": {"id": "r1", "prompt_tokens": 4, "completion_tokens": 3,
                                            "routed_experts": int32_b64(full)}},
                {"id": "chat-1", "choices": [{"index": 0, "sgl_ext": {"routed_experts": int32_b64(other)}}],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    summary = sglang_routed.import_files([tmp_path / "s.jsonl"], tmp_path / "t.parquet", TOY)
    trace, rows = trace_rows(tmp_path / "t.parquet")
    assert trace.meta.moe_layer_ids == [1, 2]
    assert rows["experts"].tolist() == as_rows(moe) + as_rows(other[:, 1:])
    assert rows["phase"].tolist() == phases(4, 6) + phases(2, 4)
    assert rows["sequence"].tolist() == [0] * 12 + [1] * 8
    assert [r["id"] for r in trace.meta.provenance["requests"]] == ["r1", "chat-1"]
    assert summary.sequences == 2 and summary.tokens == 10


def test_sglang_several_choices_are_shaped_by_the_models_layers(tmp_path):
    a, b = routing(3, seed=8), routing(5, seed=9)
    write_jsonl(tmp_path / "s.jsonl", {"choices": [{"sgl_ext": {"routed_experts": int32_b64(a)}},
                                                   {"sgl_ext": {"routed_experts": int32_b64(b)}}],
                                       "usage": {"prompt_tokens": 2, "completion_tokens": 7}})
    sglang_routed.import_files([tmp_path / "s.jsonl"], tmp_path / "t.parquet", TOY)
    assert trace_rows(tmp_path / "t.parquet")[1]["experts"].tolist() == as_rows(a) + as_rows(b)


def sglang_line(ids=None, prompt=2, completion=2):
    ids = routing(prompt + completion - 1, layers=32) if ids is None else ids
    return {"meta_info": {"prompt_tokens": prompt, "completion_tokens": completion, "routed_experts": int32_b64(ids)}}


@pytest.mark.parametrize("line, fragments", [
    ({"text": "x"}, ["line 1: field 'meta_info' is missing, and so is 'choices'"]),
    ({"meta_info": {"prompt_tokens": 2, "completion_tokens": 2}}, ["field 'meta_info.routed_experts' is missing or null"]),
    ({"meta_info": {"completion_tokens": 2, "routed_experts": ""}}, ["field 'meta_info.prompt_tokens' is missing"]),
    ({"meta_info": {"prompt_tokens": 2, "completion_tokens": -1, "routed_experts": ""}},
     ["field 'meta_info.completion_tokens': -1 is not a non-negative integer"]),
    ({"meta_info": {"prompt_tokens": 2, "completion_tokens": 2, "routed_experts": base64.b64encode(b"abc").decode()}},
     ["3 bytes are not a whole number of int32 values"]),
    (sglang_line(routing(2, layers=32)), ["128 ids are not 3 rows (prompt 2 + completion 2 - 1)"]),
    (sglang_line(np.zeros((3, 34, 2), dtype=np.int32)),
     ["has 34 layers, mixtral-8x7b has 32 MoE layers, and 34 layers are all 0, not the 2 dense layers"]),
    ({"choices": [{"sgl_ext": {}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
     ["field 'choices[0].sgl_ext.routed_experts' is missing or null"]),
    ({"choices": [{"sgl_ext": {"routed_experts": int32_b64(routing(1, layers=32))}},
                  {"sgl_ext": {"routed_experts": int32_b64(np.zeros(6, dtype=np.int32))}}],
      "usage": {"prompt_tokens": 1}}, ["choices[1].sgl_ext.routed_experts': 6 ids are not whole rows of 32 MoE layers"]),
])
def test_sglang_refusals(tmp_path, capsys, line, fragments):
    write_jsonl(tmp_path / "bad.jsonl", line)
    code, _, err = import_cli(capsys, "sglang-routed", tmp_path / "bad.jsonl", out=tmp_path / "o.parquet")
    assert_refused(code, err, tmp_path / "o.parquet", "bad.jsonl", *fragments)


# --- per-request .npz / .npy -------------------------------------------------------------------------------------

def test_npz_split_and_merged_and_npy_folder(tmp_path):
    prompt, output, merged = routing(3, seed=10), routing(4, seed=11), routing(5, seed=12, dtype=np.uint8)
    folder = tmp_path / "requests"
    folder.mkdir()
    np.savez(folder / "req_10.npz", routed_experts=merged, prompt_tokens=np.int64(2))
    np.savez(folder / "req_2.npz", prompt_routed_experts=prompt, routed_experts=output, logprobs=np.zeros(4))
    routed_npy.import_files([folder], tmp_path / "t.parquet", TOY)
    trace, rows = trace_rows(tmp_path / "t.parquet")
    assert rows["experts"].tolist() == as_rows(np.concatenate([prompt, output])) + as_rows(merged)  # req_2 first
    assert rows["phase"].tolist() == phases(3, 7) + phases(2, 5)
    assert [r["file"] for r in trace.meta.provenance["requests"]] == ["req_2.npz", "req_10.npz"]

    np.save(tmp_path / "a.npy", merged)
    np.save(tmp_path / "b.npy", output)
    summary = routed_npy.import_files([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "n.parquet", TOY)
    trace, rows = trace_rows(tmp_path / "n.parquet")
    assert not trace.has_phase and rows["experts"].tolist() == as_rows(merged) + as_rows(output)
    assert "no prompt/output split: no phase column" in summary.notes[0]


NEVER = Path("/tmp/never-created-by-moe-offload-sim-serving")


class Boom:
    def __reduce__(self):
        return (open, (str(NEVER), "w"))


@pytest.mark.parametrize("make, fragments", [
    (lambda p: np.savez(p / "bad.npz", prompt_tokens=np.int64(1)), ["bad.npz: array 'routed_experts' is missing"]),
    (lambda p: np.savez(p / "bad.npz", routed_experts=routing(2, layers=32)),
     ["bad.npz: array 'prompt_tokens' is missing, and so is 'prompt_routed_experts'"]),
    (lambda p: np.savez(p / "bad.npz", routed_experts=routing(2, layers=32), prompt_tokens=np.array([1, 2])),
     ["bad.npz: array 'prompt_tokens': int64 (2,) is not one integer"]),
    (lambda p: np.savez(p / "bad.npz", routed_experts=routing(2, layers=32), prompt_routed_experts=routing(2, layers=31)),
     ["bad.npz: array 'routed_experts': shape (2, 32, 2) does not continue 'prompt_routed_experts' (2, 31, 2)"]),
    (lambda p: np.savez(p / "bad.npz", routed_experts=np.array([Boom()], dtype=object), prompt_tokens=np.int64(0)),
     ["bad.npz: npz", "allow_pickle"]),
    (lambda p: (p / "bad.npz").write_bytes(b"not a zip"), ["bad.npz: npz"]),
    (lambda p: np.save(p / "bad.npy", routing(2, layers=32, k=1)), ["bad.npy: array: shape (2, 32, 1) has top_k 1"]),
])
def test_npz_refusals(tmp_path, capsys, make, fragments):
    make(tmp_path)
    (bad,) = tmp_path.glob("bad.*")
    code, _, err = import_cli(capsys, "routed-npy", bad, out=tmp_path / "o.parquet")
    assert_refused(code, err, tmp_path / "o.parquet", *fragments)
    assert not NEVER.exists()  # nothing was unpickled


def test_npy_and_npz_do_not_mix(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", routed_experts=routing(2, layers=32), prompt_tokens=np.int64(1))
    np.save(tmp_path / "b.npy", routing(2, layers=32))
    code, _, err = import_cli(capsys, "routed-npy", tmp_path, out=tmp_path / "o.parquet")
    assert_refused(code, err, tmp_path / "o.parquet", "b.npy: array: no prompt/output split, unlike", "a.npz")


# --- Megatron-core -----------------------------------------------------------------------------------------------

def megatron_record(step, layer, indices, **fields):
    record = {"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": 0,
              "num_tokens": len(indices), "topk": 2, "top_indices": np.asarray(indices).tolist()}
    record.update(fields)
    return record


def test_megatron_passes_become_sequences(tmp_path):
    # Two training iterations of two micro-batches; decoder layers 1 and 3 (layers 0 and 2 dense); MTP records skipped.
    passes = {(s, mb): routing(3 + mb, seed=20 + 2 * s + mb) for s in range(2) for mb in range(2)}
    records = []
    for step in range(2):
        for mb in range(2):
            for i, layer in enumerate((1, 3)):
                records.append(megatron_record(step, layer, passes[step, mb][:, i]))
            records.append(megatron_record(step, 1, passes[step, mb][:, 0], block="mtp", mtp_idx=0))
    write_jsonl(tmp_path / "router_trace_rank0.jsonl", *records)
    summary = megatron_routing.import_files([tmp_path], tmp_path / "t.parquet", TOY)
    trace, rows = trace_rows(tmp_path / "t.parquet")
    assert trace.meta.moe_layer_ids == [1, 3] and rows["phase"] is None
    assert rows["experts"].tolist() == sum((as_rows(passes[key]) for key in sorted(passes)), [])
    assert rows["sequence"].tolist() == np.repeat([0, 1, 2, 3], [6, 8, 6, 8]).tolist()
    assert rows["token"].tolist()[:6] == [0, 0, 1, 1, 2, 2]
    entries = trace.meta.provenance["sequences"]
    assert [(e["step"], e["pass"], e["tokens"]) for e in entries] == [(0, 0, 3), (0, 1, 4), (1, 0, 3), (1, 1, 4)]
    assert trace.meta.provenance["mtp_records_skipped"] == 4 and "skipped 4 MTP record(s)" in summary.notes[0]
    assert "forward pass" in trace.meta.provenance["guesses"]


def megatron_file(path, *records):
    return write_jsonl(path / "router_trace_rank0.jsonl", *records)


def all_layers(step=0, tokens=2, **fields):
    return [megatron_record(step, layer, routing(tokens, layers=1, seed=layer)[:, 0], **fields) for layer in range(32)]


@pytest.mark.parametrize("records, fragments", [
    ([{"step": 0, "layer": 0, "num_tokens": 1, "topk": 2}], ["line 1: field 'top_indices' is missing"]),
    ([megatron_record(0, 0, [[0, 1]], topk=4)], ["line 1: field 'topk': 4, but mixtral-8x7b routes top_k=2"]),
    ([megatron_record("0", 0, [[0, 1]])], ["line 1: field 'step': '0' is not a non-negative integer"]),
    ([megatron_record(0, 0, [[0, 1]], block="encoder")], ["field 'block': 'encoder' is not one of decoder, mtp"]),
    ([megatron_record(0, 0, [[0, 1]], top_indices=[[0, 1], [2]], num_tokens=2)], ["field 'top_indices': ragged"]),
    ([megatron_record(0, 0, [[0, 1]], num_tokens=2)], ["field 'top_indices': shape (1, 2) is not [num_tokens, topk] = [2, 2]"]),
    ([megatron_record(0, 0, [[0, 9]])], ["field 'top_indices': [token 0, slot 1]: 9 is outside 0..7"]),
    ([megatron_record(0, 0, [[3, 3]])], ["field 'top_indices': [token 0]: repeats an expert: [3, 3]"]),
    ([megatron_record(0, 0, [[0, 1]])], ["field 'layer': step 0 holds 1 distinct decoder layers (0..0)", "32 MoE layers"]),
    (all_layers() + all_layers()[:5], ["field 'layer': step 0 has 2 record(s) of some layers but 1 of layer 5"]),
    (all_layers()[:31] + [megatron_record(0, 31, routing(3, layers=1)[:, 0])],
     ["line 32: field 'num_tokens': 3 in step 0 pass 0, where layer 0 routed 2 (line 1)"]),
    (all_layers(0) + all_layers(1) + all_layers(0), ["line 65: field 'step': 0 appears again after step 1"]),
    ([megatron_record(0, 0, [[0, 1]], block="mtp")], ["the file has no decoder records"]),
])
def test_megatron_refusals(tmp_path, capsys, records, fragments):
    megatron_file(tmp_path, *records)
    code, _, err = import_cli(capsys, "megatron-routing", tmp_path / "router_trace_rank0.jsonl", out=tmp_path / "o.parquet")
    assert_refused(code, err, tmp_path / "o.parquet", "router_trace_rank0.jsonl", *fragments)


# --- long format --columns (FLAME-MoE's per-layer Parquet files) -------------------------------------------------

def flame_files(folder, layers, tokens, k=2, experts=8, scores=True):
    """FLAME-MoE's actives layout: one file per MoE layer, a row per token, list columns `scores` (float16) and
    `indices` (int16)."""
    folder.mkdir()
    arrays = {}
    for i, layer in enumerate(layers):
        ids = routing(tokens, layers=1, experts=experts, k=k, seed=30 + i)[:, 0]
        arrays[layer] = ids
        columns = {"indices": pa.array(ids.tolist(), type=pa.list_(pa.int16()))}
        if scores:
            columns["scores"] = pa.array([[0.5] * k] * tokens, type=pa.list_(pa.float16()))
        pq.write_table(pa.table(columns), folder / f"layer_{layer:02d}.parquet")
    return arrays


FLAME_COLUMNS = "experts=indices,weights=scores,layer=@file,sequence=@row//3,token=@row%3"


def test_columns_import_flame_layout(tmp_path):
    arrays = flame_files(tmp_path / "iter_5473", (2, 3), tokens=6)
    long_format.import_files([tmp_path / "iter_5473"], tmp_path / "t.parquet", TOY, columns=FLAME_COLUMNS)
    trace, rows = trace_rows(tmp_path / "t.parquet")
    expected = np.stack([arrays[2], arrays[3]], axis=1)  # [token, layer, k]
    assert rows["experts"].tolist() == as_rows(expected)
    assert rows["sequence"].tolist() == [0] * 6 + [1] * 6 and rows["token"].tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert trace.meta.moe_layer_ids == [2, 3] and trace.meta.provenance["columns"]["layer"] == "@file"
    weights = np.concatenate([c.weights for c in trace.chunks(weights=True)])
    assert weights.tolist() == [[0.5, 0.5]] * 12


def test_columns_from_the_command_line(tmp_path, capsys):
    flame_files(tmp_path / "actives", range(1, 33), tokens=4, scores=False)
    code, out, _ = import_cli(capsys, "long", tmp_path / "actives", out=tmp_path / "t.parquet",
                              extra=["--columns", "experts=indices,layer=@file,sequence=0,token=@row"])
    assert code == 0 and "128 rows, 1 sequence(s), 4 tokens" in out
    assert TraceFile(tmp_path / "t.parquet").meta.moe_layer_ids == list(range(1, 33))


@pytest.mark.parametrize("columns, fragments", [
    ("experts", ["--columns: 'experts' is not FIELD=SOURCE"]),
    ("colour=indices", ["--columns: 'colour=indices' is not FIELD=SOURCE"]),
    ("layer=@file,layer=@row", ["--columns: layer is given twice"]),
    ("layer=@column", ["'@column' is not @file, @row, @row//N or @row%N"]),
    ("token=@row//0", ["'@row//0' is not @file, @row"]),
    ("experts=@file", ["experts=@file': expert must come from a column"]),
])
def test_columns_spec_refusals(tmp_path, capsys, columns, fragments):
    (tmp_path / "l.csv").write_text("sequence,token,layer,expert\n0,0,0,1\n")
    code, _, err = import_cli(capsys, "long", tmp_path / "l.csv", out=tmp_path / "o.parquet", extra=["--columns", columns])
    assert_refused(code, err, tmp_path / "o.parquet", *fragments)


def test_columns_data_refusals(tmp_path, capsys):
    flame = "experts=indices,weights=scores,layer=@file,sequence=0,token=@row"
    folder = tmp_path / "short"
    folder.mkdir()
    pq.write_table(pa.table({"indices": pa.array([[0, 1], [2]], type=pa.list_(pa.int16())),
                             "scores": pa.array([[0.5, 0.5], [1.0]])}), folder / "layer_01.parquet")
    code, _, err = import_cli(capsys, "long", folder, out=tmp_path / "o.parquet", extra=["--columns", flame])
    assert_refused(code, err, tmp_path / "o.parquet", "layer_01.parquet: row 2: field 'expert' (column 'indices'): [2] has 1 "
                   "values, not 2 experts, mixtral-8x7b routes top_k=2")

    pq.write_table(pa.table({"indices": pa.array([[0, 1]], type=pa.list_(pa.int16())), "scores": [0.5]}),
                   folder / "layer_01.parquet")
    code, _, err = import_cli(capsys, "long", folder, out=tmp_path / "o.parquet", extra=["--columns", flame])
    assert_refused(code, err, tmp_path / "o.parquet", "column 'scores'", "must hold lists per row, as column 'indices' does")

    pq.write_table(pa.table({"indices": pa.array([[0, 9]], type=pa.list_(pa.int16()))}), folder / "layer_01.parquet")
    code, _, err = import_cli(capsys, "long", folder, out=tmp_path / "o.parquet",
                              extra=["--columns", "experts=indices,layer=@file,sequence=0,token=@row"])
    assert_refused(code, err, tmp_path / "o.parquet", "layer_01.parquet: row 1: field 'expert' (column 'indices'): 9 is outside 0..7")

    (folder / "layer_01.parquet").rename(folder / "layer.parquet")
    code, _, err = import_cli(capsys, "long", folder, out=tmp_path / "o.parquet",
                              extra=["--columns", "experts=indices,layer=@file,sequence=0,token=@row"])
    assert_refused(code, err, tmp_path / "o.parquet", "layer.parquet: field 'layer' (@file): the file name has no number")

    code, _, err = import_cli(capsys, "long", folder, out=tmp_path / "o.parquet", extra=["--columns", "experts=ids"])
    assert_refused(code, err, tmp_path / "o.parquet", "layer.parquet: header: column 'sequence' is missing")


def test_columns_is_for_the_long_format_only(tmp_path, capsys):
    write_jsonl(tmp_path / "r.jsonl", vllm_line())
    code, _, err = import_cli(capsys, "vllm-routed", tmp_path / "r.jsonl", out=tmp_path / "o.parquet",
                              extra=["--columns", "layer=@file"])
    assert_refused(code, err, tmp_path / "o.parquet", "--columns applies to --format long only, not vllm-routed")


def test_input_error_is_the_exception_raised(tmp_path):
    write_jsonl(tmp_path / "r.jsonl", vllm_line(usage={}))
    with pytest.raises(InputError, match=r"r\.jsonl: line 1: field 'usage\.prompt_tokens' is missing"):
        vllm_routed.import_files([tmp_path / "r.jsonl"], tmp_path / "o.parquet", MIXTRAL)
