"""GPU memory: what a run's configuration takes (simulator.gpu_memory), by hand, and at the edge: a run that cannot
hold the weights is refused in one line, one whose expert cache does not fit runs with a warning and
`fits_gpu_memory: false`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from simulator.gpu_memory import gpu_memory, kv_bytes_per_token
from simulator.presets import get_preset
from tests.test_app import moe_sim, run_dir
from traces.format import TraceChunk, TraceMeta, TraceWriter

GIB = 1 << 30


def test_kv_bytes_per_token_by_hand():
    # Mixtral: 32 layers · (K and V) 2 · 8 KV heads · 128 · 2 bytes = 131,072 B per token.
    assert kv_bytes_per_token(get_preset("mixtral-8x7b")) == 32 * 2 * 8 * 128 * 2 == 131_072
    # DeepSeek-V2-Lite (MLA): 27 attention layers · (kv_lora_rank 512 + rope 64) · 2 bytes = 31,104 B per token.
    assert kv_bytes_per_token(get_preset("deepseek-v2-lite")) == 27 * 576 * 2 == 31_104
    assert kv_bytes_per_token(get_preset("switch-base-128")) is None  # no attention shape given


def test_mixtral_offloadings_four_of_eight_at_fp16_do_not_fit_24_gib():
    # 32 layers · 4 experts · 3·4096·14336·2 B = 45.10 GB of experts; non-expert 32 · 41,975,808 · 2 B = 2.69 GB;
    # KV for one 218-token request: 218 · 131,072 B = 28.6 MB.
    model = get_preset("mixtral-8x7b")
    use = gpu_memory(model, 24 * GIB, 32 * 4, 218)
    assert use.expert_cache_bytes == 128 * 3 * 4096 * 14336 * 2 == 45_097_156_608
    assert use.non_expert_bytes == 32 * 41_975_808 * 2
    assert use.kv_reserve_bytes == 218 * 131_072
    assert use.needed_bytes == use.expert_cache_bytes + use.non_expert_bytes + use.kv_reserve_bytes
    assert not use.fits and use.free_for_experts_bytes > 0
    at_int4 = gpu_memory(get_preset("mixtral-8x7b", "int4"), 24 * GIB, 32 * 4, 218)
    assert at_int4.fits and at_int4.expert_cache_bytes == use.expert_cache_bytes // 4
    assert gpu_memory(model, 24 * GIB, 32 * 4, 218, requests=8).kv_reserve_bytes == 8 * 218 * 131_072


def _trace(path, model, tokens=3):
    n = tokens * model.moe_layers
    experts = np.tile(np.arange(model.top_k), (n, 1))
    with TraceWriter(path, TraceMeta(model, list(range(model.moe_layers)), {"source": "test"})) as w:
        w.write(TraceChunk(np.zeros(n, dtype=np.int64), np.arange(n) // model.moe_layers, np.arange(n) % model.moe_layers,
                           experts))
    return path


def test_weights_that_leave_no_room_are_one_line(tmp_path):
    # DeepSeek-V3's non-expert weights at bf16 alone (58 · 262.8M params · 2 B ≈ 30.5 GB) exceed the RTX 4090's 24 GiB.
    trace = _trace(tmp_path / "v3.parquet", replace(get_preset("deepseek-v3"), non_expert_param_bytes=2.0))
    done = moe_sim(f"trace.path={trace}", "cache.capacity=8", "replay.timed=false", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "hardware=rtx4090_pcie4" in done.stderr and "non-expert weights" in done.stderr


def test_an_expert_cache_too_big_warns_and_records_it(tmp_path):
    trace = _trace(tmp_path / "mx.parquet", get_preset("mixtral-8x7b"))
    done = moe_sim(f"trace.path={trace}", "hardware=rtx3090_pcie4", "cache.capacity=4", "replay.timed=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "warning" in line][0].count("fits_gpu_memory=false") == 1
    doc = json.loads((run_dir(tmp_path) / "metrics.json").read_text())
    assert doc["metrics"]["fits_gpu_memory"] is False and doc["gpu_memory"]["context_tokens"] == 3
    assert doc["gpu_memory"]["expert_cache_bytes"] == 45_097_156_608


def test_auto_capacity_takes_what_the_memory_leaves(tmp_path):
    # Mixtral on an RTX 3090 (24 GiB = 25,769,803,776 B): minus non-expert 2,686,451,712 B and the KV of one 3-token
    # request (393,216 B) leaves 23,082,958,848 B = 65 experts of 352,321,536 B: 65 // 32 = 2 per layer, or 65 in
    # all. At int4 (88,080,384 B) 262 experts: 8 per layer, all of them.
    trace = _trace(tmp_path / "mx.parquet", get_preset("mixtral-8x7b"))
    for args, expected in ((("cache.scope=layer",), [2] * 32), (("cache.scope=global",), [65]),
                           (("model.dtype=int4",), [8] * 32)):
        out = tmp_path / "_".join(args).replace("=", "-").replace(".", "-")
        out.mkdir()
        done = moe_sim(f"trace.path={trace}", "hardware=rtx3090_pcie4", "cache.capacity=auto", "replay.timed=false",
                       *args, cwd=out)
        assert done.returncode == 0, done.stderr
        doc = json.loads((run_dir(out) / "metrics.json").read_text())
        assert doc["cache_capacities"] == expected, args
        assert doc["metrics"]["fits_gpu_memory"] is True


def test_auto_capacity_below_top_k_is_one_line(tmp_path):
    # Mixtral at fp32 (704.6 MB per expert) on 24 GiB: 2.69 GB of weights leave 32 experts, 1 per layer < top_k 2.
    trace = _trace(tmp_path / "mx.parquet", get_preset("mixtral-8x7b"))
    done = moe_sim(f"trace.path={trace}", "hardware=rtx3090_pcie4", "cache.capacity=auto", "model.dtype=fp32",
                   "replay.timed=false", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cache.capacity=auto" in done.stderr and "top_k=2" in done.stderr
