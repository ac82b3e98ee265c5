"""Models from files (issue 11): Hugging Face config.json files of the common MoE families read as the presets of the
same models, the arithmetic held against the parameters of transformers' own modules, the YAML form, both command
lines end to end, and one line with exit status 2 for every missing or contradictory key."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments.run import resolve_model, simulate
from simulator.errors import InputError
from simulator.hf_config import model_from_hf_config
from simulator.model import ATTENTION_FIELDS
from simulator.presets import DTYPE_BYTES, PRESETS
from tests.helpers import compose_run
from traces.cli import main
from traces.format import TraceChunk, TraceFile, TraceMeta, TraceWriter
from traces.model_file import load_model

MOE_SIM = [sys.executable, "-c", "from experiments.app import main; main()"]
SHAPE = ("moe_layers", "experts_per_layer", "top_k", "shared_experts", "hidden_size", "expert_intermediate_size", "gated")

# The published config.json files (Hugging Face hub, the model's own repository), the keys that bear on shape and
# bytes plus a few that do not; values as published.
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}
MIXTRAL_8X22B = {**MIXTRAL_8X7B, "hidden_size": 6144, "intermediate_size": 16384, "max_position_embeddings": 65536,
                 "num_attention_heads": 48, "num_hidden_layers": 56}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "first_k_dense_replace": 3,
    "hidden_size": 7168, "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
    "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
    "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                                    "quant_method": "fp8", "weight_block_size": [128, 128]},
    "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "topk_group": 4, "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280,
}
DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "first_k_dense_replace": 1,
    "hidden_size": 2048, "intermediate_size": 10944, "kv_lora_rank": 512, "moe_intermediate_size": 1408,
    "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": False,
    "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400,
}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "decoder_sparse_step": 1, "head_dim": 128,
    "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48,
    "mlp_only_layers": [], "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32,
    "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
    "rope_theta": 1000000.0, "sliding_window": None, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936,
}
QWEN3_235B_A22B = {**QWEN3_30B_A3B, "hidden_size": 4096, "intermediate_size": 12288, "max_window_layers": 94,
                   "moe_intermediate_size": 1536, "num_attention_heads": 64, "num_hidden_layers": 94}
QWEN15_MOE_A27B = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "decoder_sparse_step": 1, "hidden_size": 2048,
    "intermediate_size": 5632, "max_position_embeddings": 8192, "moe_intermediate_size": 1408, "norm_topk_prob": False,
    "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 16, "shared_expert_intermediate_size": 5632, "torch_dtype": "bfloat16", "vocab_size": 151936,
}
OLMOE_1B_7B = {
    "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "clip_qkv": None, "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 1024, "max_position_embeddings": 4096, "norm_topk_prob": False,
    "num_attention_heads": 16, "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 16,
    "num_key_value_heads": 16, "router_aux_loss_coef": 0.01, "tie_word_embeddings": False, "vocab_size": 50304,
}
PHI35_MOE = {
    "architectures": ["PhiMoEForCausalLM"], "model_type": "phimoe", "attention_bias": True, "hidden_size": 4096,
    "intermediate_size": 6400, "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 16, "torch_dtype": "bfloat16", "vocab_size": 32064,
}
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "experts_per_token": 4,
    "head_dim": 64, "hidden_size": 2880, "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    "sliding_window": 128, "swiglu_limit": 7.0, "vocab_size": 201088,
}
GPT_OSS_120B = {**GPT_OSS_20B, "layer_types": ["sliding_attention", "full_attention"] * 18, "num_hidden_layers": 36,
                "num_local_experts": 128}

CONFIGS = {
    "mixtral-8x7b": (MIXTRAL_8X7B, "bf16"),
    "mixtral-8x22b": (MIXTRAL_8X22B, "bf16"),
    "deepseek-v3": (DEEPSEEK_V3, "fp8"),
    "deepseek-v2-lite": (DEEPSEEK_V2_LITE, "bf16"),
    "qwen3-30b-a3b": (QWEN3_30B_A3B, "bf16"),
    "qwen3-235b-a22b": (QWEN3_235B_A22B, "bf16"),
    "qwen1.5-moe-a2.7b": (QWEN15_MOE_A27B, "bf16"),
    "olmoe-1b-7b": (OLMOE_1B_7B, "fp16"),  # its config gives no dtype here: the presets' fp16
    "phi-3.5-moe": (PHI35_MOE, "bf16"),
    "gpt-oss-20b": (GPT_OSS_20B, "mxfp4"),
    "gpt-oss-120b": (GPT_OSS_120B, "mxfp4"),
}


def write_config(folder: Path, config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def fields(model, names) -> dict:
    return {name: getattr(model, name) for name in names}


@pytest.mark.parametrize("preset", CONFIGS)
def test_a_config_json_reads_as_the_preset_of_its_model(tmp_path, preset):
    config, dtype = CONFIGS[preset]
    model = load_model(str(write_config(tmp_path / preset, config)))
    assert model.name == preset  # the folder the config.json lies in
    assert fields(model, SHAPE) == fields(PRESETS[preset], SHAPE)
    assert model.non_expert_params_per_layer == PRESETS[preset].non_expert_params_per_layer
    assert fields(model, ATTENTION_FIELDS) == fields(PRESETS[preset], ATTENTION_FIELDS)
    assert model.param_bytes == DTYPE_BYTES[dtype]


def test_the_dtype_given_replaces_the_files():
    assert model_from_hf_config(DEEPSEEK_V3, "c.json", "v3", dtype="int4").param_bytes == 0.5
    assert model_from_hf_config({**MIXTRAL_8X7B, "torch_dtype": "float32"}, "c.json", "m").param_bytes == 4.0
    gptq = {**QWEN3_30B_A3B, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    assert model_from_hf_config(gptq, "c.json", "q").param_bytes == 0.5
    bnb = {**MIXTRAL_8X7B, "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}
    assert model_from_hf_config(bnb, "c.json", "m").param_bytes == 1.0


def test_layer_keys_choose_the_moe_layers():
    every_other = model_from_hf_config({**QWEN3_30B_A3B, "decoder_sparse_step": 2}, "c.json", "q")
    assert every_other.moe_layers == 24 and every_other.attention_layers == 48
    some_dense = model_from_hf_config({**QWEN3_30B_A3B, "mlp_only_layers": [0, 47]}, "c.json", "q")
    assert some_dense.moe_layers == 46
    # two dense layers of attention 18.9M and FFN 3·2048·6144 = 37.7M spread over 46 MoE layers
    assert some_dense.non_expert_params_per_layer == 18_874_368 + 262_144 + 2 * (18_874_368 + 37_748_736) // 46
    freq = model_from_hf_config({**DEEPSEEK_V3, "moe_layer_freq": 2}, "c.json", "v3")
    assert freq.moe_layers == len(range(4, 61, 2))


TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, num_experts_per_tok=2, eos_token_id=None, bos_token_id=None, pad_token_id=None)
FAMILIES = {  # tiny configs, as tests/test_record.py builds them
    "mixtral": dict(num_local_experts=8),
    "phimoe": dict(num_local_experts=8),
    "qwen2_moe": dict(num_experts=8, moe_intermediate_size=32, shared_expert_intermediate_size=48, mlp_only_layers=[1]),
    "qwen3_moe": dict(num_experts=8, moe_intermediate_size=32, head_dim=16),
    "olmoe": dict(num_experts=8),
    "deepseek_v2": dict(n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                        q_lora_rank=None, num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=16),
    "deepseek_v3": dict(n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=2, first_k_dense_replace=1,
                        q_lora_rank=24, n_group=4, topk_group=2, num_key_value_heads=4, kv_lora_rank=16,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16),
    "gpt_oss": dict(num_local_experts=8, head_dim=16, layer_types=["sliding_attention", "full_attention"] * 2),
}
LEFT_OUT = ("norm", "embed_tokens", "lm_head", "shared_expert_gate", "sinks")
"""What the arithmetic leaves out besides biases: norms, embeddings, Qwen's shared-expert gate, GPT-OSS's sinks."""


@pytest.mark.parametrize("family", FAMILIES)
def test_the_arithmetic_counts_what_transformers_builds(family):
    """Independent witness: the parameters of transformers' own modules, routed experts apart from the rest."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    if family not in transformers.CONFIG_MAPPING:
        pytest.skip(f"transformers has no {family}")
    config = transformers.AutoConfig.for_model(family, **{**TINY, **FAMILIES[family]})
    params = [(n, p.numel()) for n, p in transformers.AutoModelForCausalLM.from_config(config).named_parameters()
              if not n.endswith("bias") and not any(part in n for part in LEFT_OUT)]
    model = model_from_hf_config(config.to_dict(), family, family)
    routed = sum(size for n, size in params if ".mlp.experts." in n)
    rest = sum(size for n, size in params if ".mlp.experts." not in n)
    assert routed == model.total_experts * model.expert_params
    assert 0 <= rest - model.moe_layers * model.non_expert_params_per_layer < model.moe_layers  # dense layers' remainder


# --- YAML --------------------------------------------------------------------------------------------------------

def test_a_yaml_of_moemodel_fields_is_that_model(tmp_path):
    preset = PRESETS["qwen3-30b-a3b"]
    lines = [f"{k}: {v}" for k, v in preset.to_dict().items() if k != "name"]
    (tmp_path / "qwen3.yaml").write_text("\n".join(lines) + "\n")
    model = load_model(str(tmp_path / "qwen3.yaml"))
    assert model.to_dict() == {**preset.to_dict(), "name": "qwen3"}
    assert load_model(str(tmp_path / "qwen3.yaml"), "int4").param_bytes == 0.5


def test_a_minimal_yaml_takes_the_defaults(tmp_path):
    (tmp_path / "mine.yml").write_text("name: research-moe\nmoe_layers: 2\nexperts_per_layer: 4\ntop_k: 2\n"
                                       "shared_experts: 0\nhidden_size: 8\nexpert_intermediate_size: 16\n"
                                       "non_expert_params_per_layer: 0\n")
    model = load_model(str(tmp_path / "mine.yml"))
    assert (model.name, model.param_bytes, model.gated, model.kind, model.kv_heads) == ("research-moe", 2.0, True, "moe", 0)


# --- the command lines, end to end -------------------------------------------------------------------------------

def long_csv(path: Path, layer_ids, experts: int, top_k: int, tokens: int = 3) -> Path:
    """The generic long format: one row per routed expert, the model's own layer numbers."""
    rows = ["sequence,token,layer,expert"]
    for t in range(tokens):
        for layer in layer_ids:
            rows += [f"0,{t},{layer},{(layer + t + j) % experts}" for j in range(top_k)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_moe_trace_import_takes_a_config_json(tmp_path, capsys):
    config = write_config(tmp_path / "DeepSeek-V2-Lite", DEEPSEEK_V2_LITE)
    csv = long_csv(tmp_path / "routing.csv", range(1, 27), 64, 6)
    assert main(["import", "--format", "long", "--model", str(config), str(csv), "-o", str(tmp_path / "t.parquet")]) == 0
    assert "(DeepSeek-V2-Lite)" in capsys.readouterr().out
    trace = TraceFile(tmp_path / "t.parquet")
    assert trace.meta.moe_layer_ids == list(range(1, 27))
    assert trace.meta.model == load_model(str(config))
    assert trace.meta.model.kv_latent_dim == 576


def test_moe_trace_synth_takes_a_yaml(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text("moe_layers: 3\nexperts_per_layer: 16\ntop_k: 2\nshared_experts: 0\n"
                                        "hidden_size: 64\nexpert_intermediate_size: 128\nnon_expert_params_per_layer: 0\n")
    out = tmp_path / "s.parquet"
    assert main(["synth", "--model", str(tmp_path / "tiny.yaml"), "--dtype", "fp8", "--sequences", "1", "--tokens",
                 "4", "-o", str(out)]) == 0
    assert "12 rows (tiny;" in capsys.readouterr().out
    assert TraceFile(out).meta.model.param_bytes == 1.0


def write_trace(path: Path, model, tokens: int = 20) -> Path:
    n = tokens * model.moe_layers
    experts = (np.arange(n)[:, None] * 7 + np.arange(model.top_k)[None, :]) % model.experts_per_layer
    t = np.arange(n) // model.moe_layers
    with TraceWriter(path, TraceMeta(model, list(range(model.moe_layers)), {"source": "test"})) as w:
        w.write(TraceChunk(np.zeros(n), t, np.arange(n) % model.moe_layers, experts))
    return path


def test_moe_sim_model_file_replaces_the_traces_model(tmp_path):
    """`model=FILE` shorthand of `model.preset=FILE`, in a subprocess as a user runs it; metrics.json holds the file's
    model."""
    config = write_config(tmp_path / "Qwen3-30B-A3B", QWEN3_30B_A3B)
    bare = load_model(str(config))
    trace = write_trace(tmp_path / "t.parquet", replace(bare, name="recorded", non_expert_params_per_layer=0))
    result = subprocess.run([*MOE_SIM, f"trace.path={trace}", f"model={config}", "cache.capacity=8",
                             "replay.progress=false", "hydra.run.dir=run"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["model"] == bare.to_dict() and doc["config"]["model"]["preset"] == str(config)
    assert doc["inputs"]["model.preset"]  # the file's digest: an edited file is a new job for a resumed sweep


def test_moe_sim_refuses_a_file_of_another_shape_in_one_line(tmp_path):
    trace = write_trace(tmp_path / "t.parquet", PRESETS["qwen3-30b-a3b"])
    config = write_config(tmp_path / "mixtral", MIXTRAL_8X7B)
    result = subprocess.run([*MOE_SIM, f"trace.path={trace}", f"model={config}", "replay.progress=false"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"moe-sim: model={config}: moe_layers=32 does not match the trace {trace} "
                                     f"(moe_layers=48)")


def test_model_preset_takes_a_path_in_process(tmp_path):
    (tmp_path / "ds.yaml").write_text("\n".join(f"{k}: {v}" for k, v in PRESETS["deepseek-v2-lite"].to_dict().items()
                                                if k not in ("name", "param_bytes")) + "\n")
    run = compose_run(f"model.preset={tmp_path / 'ds.yaml'}", "model.dtype=int4", "replay.timed=false",
                      "replay.progress=false")
    assert resolve_model(TraceFile(run.trace_path), run).param_bytes == 0.5
    assert simulate(run).metrics.summary()["hit_rate"] > 0


# --- one line, exit status 2 -------------------------------------------------------------------------------------

DS = DEEPSEEK_V3
BAD_CONFIGS = [
    ([1, 2], "expected a JSON object of config keys, got list"),
    ({**MIXTRAL_8X7B, "interleave_moe_layer_step": 2}, "interleave_moe_layer_step: this placement of MoE layers"),
    ({k: v for k, v in MIXTRAL_8X7B.items() if k != "num_hidden_layers"}, "num_hidden_layers: missing"),
    ({"model_type": "llama4_text", "num_hidden_layers": 4}, "num_local_experts / n_routed_experts / num_experts: "
                                                             "missing (model_type 'llama4_text' is not one of mixtral"),
    ({**GPT_OSS_20B, "experts_per_token": 2}, "experts_per_token: 2 contradicts num_experts_per_tok=4"),
    ({**MIXTRAL_8X7B, "num_experts_per_tok": 9},
     "num_experts_per_tok: 9 exceeds the 8 routed experts (num_local_experts)"),
    ({**DS, "first_k_dense_replace": 62}, "first_k_dense_replace: 62 exceeds num_hidden_layers=61"),
    ({**DS, "moe_layer_freq": 0}, "moe_layer_freq: expected a whole number of at least 1, got 0"),
    ({**QWEN3_30B_A3B, "mlp_only_layers": [3, 48]}, "mlp_only_layers: layer 48 is outside 0..47"),
    ({**QWEN3_30B_A3B, "mlp_only_layers": "all"}, "mlp_only_layers: expected a list of layer numbers"),
    ({**QWEN3_30B_A3B, "decoder_sparse_step": 49}, "num_hidden_layers: none of the 48 layers is an MoE layer"),
    ({**DS, "shared_expert_intermediate_size": 2048}, "shared_expert_intermediate_size: given with n_shared_experts=1"),
    ({**QWEN3_30B_A3B, "moe_intermediate_size": -768},
     "moe_intermediate_size: expected a whole number of at least 1, got -768"),
    ({**QWEN3_30B_A3B, "num_experts": 128.5}, "num_experts: expected a whole number of at least 1, got 128.5"),
    ({**MIXTRAL_8X7B, "num_key_value_heads": 12}, "num_key_value_heads: 12 does not divide num_attention_heads=32"),
    ({**MIXTRAL_8X7B, "num_attention_heads": 24}, "head_dim: missing, and hidden_size=4096 is not a multiple"),
    ({k: v for k, v in DS.items() if k != "intermediate_size"},
     "intermediate_size: missing (needed for the FFN width of the 3 dense layer(s))"),
    ({k: v for k, v in DS.items() if k != "qk_rope_head_dim"}, "qk_rope_head_dim: missing"),
    ({**MIXTRAL_8X7B, "quantization_config": "fp8"}, "quantization_config: expected a mapping"),
    ({**MIXTRAL_8X7B, "quantization_config": {"quant_method": "hqq", "nbits": 4}},
     "quantization_config.quant_method: 'hqq'"),
    ({**MIXTRAL_8X7B, "torch_dtype": "float64"}, "torch_dtype: 'float64' is not one of float32"),
    ({**MIXTRAL_8X7B, "dtype": "float16"}, "dtype: 'float16' contradicts torch_dtype='bfloat16'"),
]


def assert_one_line(code: int, err: str, needle: str):
    assert code == 2
    assert err.startswith("moe-trace: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err, err


@pytest.mark.parametrize(("config", "needle"), BAD_CONFIGS, ids=[n.split(":")[0] for _, n in BAD_CONFIGS])
def test_a_bad_config_json_is_one_line_naming_file_and_key(tmp_path, capsys, config, needle):
    path = write_config(tmp_path / "m", config)
    code = main(["synth", "--model", str(path), "--sequences", "1", "--tokens", "2", "-o", str(tmp_path / "s.parquet")])
    assert_one_line(code, capsys.readouterr().err, f"{path}: {needle}")
    assert not (tmp_path / "s.parquet").exists()


MINIMAL = "moe_layers: 2\nexperts_per_layer: 4\ntop_k: 2\nshared_experts: 0\nhidden_size: 8\nexpert_intermediate_size: 16\n" \
          "non_expert_params_per_layer: 0\n"
BAD_FILES = [
    ("m.yaml", MINIMAL + "experts: 4\n", "experts: Extra inputs are not permitted"),
    ("m.yaml", MINIMAL.replace("expert_intermediate_size: 16", "expert_intermediate_size: -16"),
     "expert_intermediate_size: Input should be greater than 0 (got -16)"),
    ("m.yaml", MINIMAL.replace("top_k: 2", "top_k: 5"), "top_k: exceeds experts_per_layer=4 (got 5)"),
    ("m.yaml", MINIMAL.replace("hidden_size: 8\n", ""), "hidden_size: Field required"),
    ("m.yaml", "- moe_layers: 2\n", "expected a mapping of MoEModel fields, got list"),
    ("m.yaml", "moe_layers: [2\n", "not valid YAML"),
    ("m.json", "{\"model_type\": \"mixtral\",", "not valid JSON"),
    ("m.txt", "", "a model file is a Hugging Face config.json (.json) or a .yaml of MoEModel fields"),
]


@pytest.mark.parametrize(("name", "text", "needle"), BAD_FILES, ids=[n for _, _, n in BAD_FILES])
def test_a_bad_model_file_is_one_line_naming_it(tmp_path, capsys, name, text, needle):
    (tmp_path / name).write_text(text)
    code = main(["import", "--format", "long", "--model", str(tmp_path / name), str(tmp_path / "none.csv"),
                 "-o", str(tmp_path / "t.parquet")])
    assert_one_line(code, capsys.readouterr().err, f"{tmp_path / name}: {needle}")


def test_a_missing_file_a_folder_and_an_unknown_preset(tmp_path, capsys):
    (tmp_path / "folder.json").mkdir()
    for spec, needle in [(str(tmp_path / "nosuch.json"), f"{tmp_path / 'nosuch.json'}: no such model file"),
                         (str(tmp_path / "folder.json"), "folder.json: is a folder; give the config.json inside it"),
                         ("mixtral-8x8b", "model: unknown preset 'mixtral-8x8b' (known: deepseek-v2-lite")]:
        assert_one_line(main(["synth", "--model", spec, "-o", str(tmp_path / "s.parquet")]), capsys.readouterr().err, needle)


def test_moe_sim_model_file_errors_are_refused_before_the_replay(tmp_path):
    (tmp_path / "m.yaml").write_text(MINIMAL + "gated: maybe\n")
    with pytest.raises(InputError, match=r"m.yaml: gated: Input should be a valid boolean"):
        simulate(compose_run(f"model={tmp_path / 'm.yaml'}", "replay.progress=false"))
