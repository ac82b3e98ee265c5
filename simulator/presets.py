"""Model presets: the MoE shapes of REFERENCE.md §1, by name.

Routed-expert shapes (layers, experts, top-k, shared experts, hidden and expert-FFN width) are from each model's
published config, as tabulated in `../shared/REFERENCE.md` §1. `non_expert_params_per_layer` is our estimate of what
the GPU reads per MoE layer besides routed experts (attention projections from the config's head counts, router,
shared experts, and the decoder-only models' dense layers spread over the MoE layers as `MoEModel` says; norms and
biases left out); it only sets the non-expert compute time, and the arithmetic is in each entry's comment.
`simulator.hf_config` does the same arithmetic from a config.json; tests/test_model_file.py holds the two to each
other. The attention shape `kv` (layers, query heads, key/value heads, head width, MLA latent) is the config's, for
costing the KV cache.
"""

from __future__ import annotations

from dataclasses import replace

from simulator.errors import InputError
from simulator.model import MoEModel

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "mxfp4": 4.25 / 8,  # 4-bit values plus one 8-bit scale per 32 (OCP MX)
    # GGUF (llama.cpp ggml-common.h block structs): Q4_K 144 bytes per 256 weights, Q6_K 210 per 256, Q8_0 34 per 32.
    "q4_k": 144 / 256,
    "q6_k": 210 / 256,
    "q8_0": 34 / 32,
    # Q4_K_M (llama.cpp llama-quant.cpp): gate and up stay Q4_K, ffn_down becomes Q6_K in the layers `use_more_bits`
    # picks (i < n/8, i >= 7n/8, every third between: 24 of Qwen3-30B's 48, 16 of Mixtral's 32): an expert's mean
    # over the layers is (2 · Q4_K + (Q4_K + Q6_K) / 2) / 3.
    "q4_k_m": (2 * 144 / 256 + (144 / 256 + 210 / 256) / 2) / 3,
    # HQQ as mixtral-offloading quantises (its demo's BaseQuantizeConfig): experts 2-bit in groups of 16 with an 8-bit
    # scale and zero per group, the scales re-quantised in groups of 128 (fp16 scale and zero):
    # 2/8 + 2/16 + 4/(16·128); attention 4-bit in groups of 64, scales in groups of 256: 4/8 + 2/64 + 4/(64·256).
    "hqq2_g16": 2 / 8 + 2 / 16 + 4 / (16 * 128),
    "hqq4_g64": 4 / 8 + 2 / 64 + 4 / (64 * 256),
}


def _m(name, layers, experts, k, shared, hidden, ffn, non_expert, gated=True, kv=(0, 0, 0, 0, 0)) -> MoEModel:
    attention_layers, heads, kv_heads, head_dim, latent = kv
    return MoEModel(name, layers, experts, k, shared, hidden, ffn, DTYPE_BYTES["fp16"], non_expert, gated,
                    attention_layers=attention_layers, attention_heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                    kv_latent_dim=latent)


PRESETS: dict[str, MoEModel] = {  # fp16 unless the model was released in another type (said where so)
    # GQA 32 q / 8 kv heads × 128: 2·4096² + 2·4096·1024 = 41.9M; router 4096·8.
    "mixtral-8x7b": _m("mixtral-8x7b", 32, 8, 2, 0, 4096, 14336, 41_943_040 + 32_768, kv=(32, 32, 8, 128, 0)),
    # GQA 48 q / 8 kv heads × 128: 2·6144² + 2·6144·1024 = 88.1M; router 6144·8. Shape weakly sourced.
    "mixtral-8x22b": _m("mixtral-8x22b", 56, 8, 2, 0, 6144, 16384, 88_080_384 + 49_152, kv=(56, 48, 8, 128, 0)),
    # MLA (q 2048·3072, kv_a 2048·576, kv_b 512·4096, o 2048·2048) ≈ 13.8M; 2 shared experts 17.3M; router 0.13M;
    # dense layer 0 (MLA 13.8M + FFN 3·2048·10944 = 67.2M) over 26 MoE layers 3.1M.
    "deepseek-v2-lite": _m("deepseek-v2-lite", 26, 64, 6, 2, 2048, 1408,
                           13_762_560 + 17_301_504 + 131_072 + 3_115_480, kv=(27, 16, 16, 192, 576)),
    # MLA (q_a 11.0M, q_b 37.7M, kv_a 4.1M, kv_b 16.8M, o 117.4M) = 187.1M; 1 shared expert 44.0M; router 1.8M;
    # dense layers 0-2 (MLA 187.1M + FFN 3·7168·18432 = 396.4M each) over 58 MoE layers 30.2M. Stored as released:
    # fp8 (e4m3, 128x128 blocks with an fp32 scale, 1.0002 B/param) for the experts and the attention projections.
    "deepseek-v3": replace(_m("deepseek-v3", 58, 256, 8, 1, 7168, 2048,
                              187_105_280 + 44_040_192 + 1_835_008 + 30_179_328, kv=(61, 128, 128, 192, 576)),
                           param_bytes=1.0),
    # MHA 16 heads: 4·2048² = 16.8M; shared expert (width 5632) 34.6M; router 2048·60.
    "qwen1.5-moe-a2.7b": _m("qwen1.5-moe-a2.7b", 24, 60, 4, 1, 2048, 1408, 16_777_216 + 34_603_008 + 122_880,
                            kv=(24, 16, 16, 128, 0)),
    # GQA 32 q / 4 kv heads × 128: 2·2048·4096 + 2·2048·512 = 18.9M; router 2048·128.
    "qwen3-30b-a3b": _m("qwen3-30b-a3b", 48, 128, 8, 0, 2048, 768, 18_874_368 + 262_144, kv=(48, 32, 4, 128, 0)),
    # GQA 64 q / 4 kv heads × 128: 2·4096·8192 + 2·4096·512 = 71.3M; router 4096·128.
    "qwen3-235b-a22b": _m("qwen3-235b-a22b", 94, 128, 8, 0, 4096, 1536, 71_303_168 + 524_288, kv=(94, 64, 4, 128, 0)),
    # MHA 16 heads: 4·2048² = 16.8M; router 2048·64.
    "olmoe-1b-7b": _m("olmoe-1b-7b", 16, 64, 8, 0, 2048, 1024, 16_777_216 + 131_072, kv=(16, 16, 16, 128, 0)),
    # GQA 32 q / 8 kv heads × 128: 41.9M; router 4096·16.
    "phi-3.5-moe": _m("phi-3.5-moe", 32, 16, 2, 0, 4096, 6400, 41_943_040 + 65_536, kv=(32, 32, 8, 128, 0)),
    # GQA 64 q / 8 kv heads × 64: 2·2880·4096 + 2·2880·512 = 26.5M; router 2880·128.
    "gpt-oss-120b": _m("gpt-oss-120b", 36, 128, 4, 0, 2880, 2880, 26_542_080 + 368_640, kv=(36, 64, 8, 64, 0)),
    "gpt-oss-20b": _m("gpt-oss-20b", 24, 32, 4, 0, 2880, 2880, 26_542_080 + 92_160, kv=(24, 64, 8, 64, 0)),
    # 6 encoder + 6 decoder MoE layers; self-attention 4·768² = 2.4M (decoder cross-attention not counted).
    "switch-base-128": _m("switch-base-128", 12, 128, 1, 0, 768, 3072, 2_359_296 + 98_304, gated=False),
    # Every 4th of 24+24 layers is MoE: 12 MoE layers; attention 4·2048² = 16.8M.
    "nllb-moe-54b": _m("nllb-moe-54b", 12, 128, 2, 0, 2048, 8192, 16_777_216 + 262_144, gated=False),
}


def get_preset(name: str, dtype: str | None = None) -> MoEModel:
    """The preset called `name`, its expert weights stored as `dtype` (fp16 unless given)."""
    if name not in PRESETS:
        raise InputError(f"model: unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    return PRESETS[name] if dtype is None else with_dtype(PRESETS[name], dtype)


def with_non_expert_dtype(model: MoEModel, dtype: str) -> MoEModel:
    """`model` with its non-expert weights (attention, router, shared experts) stored as `dtype`."""
    if dtype not in DTYPE_BYTES:
        raise InputError(f"model.non_expert_dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    return replace(model, non_expert_param_bytes=DTYPE_BYTES[dtype])


def with_dtype(model: MoEModel, dtype: str) -> MoEModel:
    """`model` with its expert weights stored as `dtype`; the non-expert weights (attention, router, shared experts)
    keep the bytes they had, as quantised checkpoints keep them (GPT-OSS's are bf16 beside mxfp4 experts)."""
    if dtype not in DTYPE_BYTES:
        raise InputError(f"model.dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    return replace(model, param_bytes=DTYPE_BYTES[dtype], non_expert_param_bytes=model.non_expert_bytes_per_param)
