"""A Hugging Face `config.json`, parsed, as an `MoEModel`: what the keys of the common MoE families mean.

Read and checked against the published configs: `mixtral`, `phimoe`, `deepseek_v2`, `deepseek_v3`, `qwen2_moe`,
`qwen3_moe`, `olmoe`, `gpt_oss`. Any other `model_type` is read by the same keys when it has them (GLM-4.5's
`glm4_moe` and Kimi-K2's `kimi_k2` use DeepSeek's); what these keys do not describe (DeepSeek-V3.2's indexer,
Qwen3-Next's linear attention, sliding windows) is counted as ordinary attention or not at all. A missing key, or
keys that contradict each other, end in one `InputError` line naming the source and the key.

Keys read:
- MoE layers: `num_hidden_layers`; layer i is MoE unless `i < first_k_dense_replace`, `i % moe_layer_freq != 0`
  (DeepSeek), `(i + 1) % decoder_sparse_step != 0` or `i in mlp_only_layers` (Qwen); otherwise every layer (Mixtral).
- routed experts `num_local_experts` / `n_routed_experts` / `num_experts`; top-k `num_experts_per_tok` /
  `experts_per_token` / `moe_topk`; `hidden_size`; expert width `moe_intermediate_size`, else `intermediate_size`
  (which is the dense layers' width when both are given).
- shared experts: `n_shared_experts` of the expert width (DeepSeek), or one of `shared_expert_intermediate_size` (Qwen).
- attention: `num_attention_heads`, `num_key_value_heads` (default: the query heads), `head_dim` (default
  hidden_size / heads); MLA where `kv_lora_rank` is given, with `q_lora_rank` (none: a full query projection),
  `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`.
- stored expert weights: `quantization_config` (fp8, mxfp4, bitsandbytes, gptq, awq), else `torch_dtype` / `dtype`,
  else fp16 (as the presets).

`non_expert_params_per_layer` is the presets' arithmetic: attention projections + router (hidden · experts) + shared
experts, plus each dense layer (its attention and its FFN of `intermediate_size`) spread over the MoE layers; norms,
biases, Qwen's one-output shared-expert gate and multi-token-prediction layers are left out.
"""

from __future__ import annotations

from simulator.errors import InputError
from simulator.model import MoEModel
from simulator.presets import DTYPE_BYTES, with_dtype

READ_MODEL_TYPES = ("mixtral", "phimoe", "deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss")

UNREAD_LAYOUTS = ("interleave_moe_layer_step", "expert_layer_period", "moe_layer_start_index", "mlp_layer_types")
"""Keys of other families that place MoE layers in ways not read here: refused rather than misread."""

TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}

_REQUIRED = object()


def model_from_hf_config(config: dict, source: str, name: str, dtype: str | None = None) -> MoEModel:
    """The MoE shape `config` (a parsed config.json) describes, called `name`; `dtype`, if given, is the stored type
    of the expert weights instead of the config's. Errors name `source` and the key."""
    if not isinstance(config, dict):
        raise InputError(f"{source}: expected a JSON object of config keys, got {type(config).__name__}")
    c = _Keys(config, source)
    for key in UNREAD_LAYOUTS:
        if c.has(key):
            c.fail(key, "this placement of MoE layers is not read; describe the model in a YAML of MoEModel fields")
    layers = c.int("num_hidden_layers")
    moe_ids = _moe_layers(c, layers)
    experts_keys = ("num_local_experts", "n_routed_experts", "num_experts")
    top_k_keys = ("num_experts_per_tok", "experts_per_token", "moe_topk")
    experts, top_k = c.int(*experts_keys), c.int(*top_k_keys)
    if top_k > experts:
        c.fail(c.given(*top_k_keys), f"{top_k} exceeds the {experts} routed experts ({c.given(*experts_keys)})")
    hidden = c.int("hidden_size")
    width = c.int("moe_intermediate_size" if c.has("moe_intermediate_size") else "intermediate_size")
    n_shared = c.int("n_shared_experts", default=0, least=0)
    shared_width = c.int("shared_expert_intermediate_size", default=0, least=0)
    if n_shared and shared_width:
        c.fail("shared_expert_intermediate_size", f"given with n_shared_experts={n_shared}; a config gives one of them")
    attention, kv = _attention(c, hidden)
    per_layer = attention + hidden * experts + 3 * hidden * (n_shared * width + shared_width)
    dense = layers - len(moe_ids)
    if dense:
        dense_ffn = 3 * hidden * c.int("intermediate_size", why=f"the FFN width of the {dense} dense layer(s)")
        per_layer += dense * (attention + dense_ffn) // len(moe_ids)
    model = MoEModel(name, len(moe_ids), experts, top_k, n_shared or (1 if shared_width else 0), hidden, width,
                     DTYPE_BYTES["fp16"], per_layer, attention_layers=layers, **kv)
    return with_dtype(model, dtype or _stored_dtype(c))


def _moe_layers(c: _Keys, layers: int) -> list[int]:
    """The MoE layers, as DeepSeek's and Qwen's modelling code choose them (every layer where neither family's keys
    are given)."""
    first_dense = c.int("first_k_dense_replace", default=0, least=0)
    if first_dense > layers:
        c.fail("first_k_dense_replace", f"{first_dense} exceeds num_hidden_layers={layers}")
    freq = c.int("moe_layer_freq", default=1)
    step = c.int("decoder_sparse_step", default=1)
    dense_only = c.value("mlp_only_layers", default=[])
    if not isinstance(dense_only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense_only):
        c.fail("mlp_only_layers", f"expected a list of layer numbers, got {dense_only!r}")
    outside = [i for i in dense_only if not 0 <= i < layers]
    if outside:
        c.fail("mlp_only_layers", f"layer {outside[0]} is outside 0..{layers - 1} (num_hidden_layers={layers})")
    moe = [i for i in range(layers)
           if i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and i not in dense_only]
    if not moe:
        c.fail("num_hidden_layers", f"none of the {layers} layers is an MoE layer (first_k_dense_replace, "
                                    f"moe_layer_freq, decoder_sparse_step, mlp_only_layers)")
    return moe


def _attention(c: _Keys, hidden: int) -> tuple[int, dict]:
    """Parameters of one layer's attention projections, and its KV shape as `MoEModel` fields."""
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    if kv_heads > heads or heads % kv_heads:
        c.fail("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads={heads}")
    if c.has("kv_lora_rank"):  # MLA: queries (low-rank or full), the compressed KV and its up-projection, output
        latent, rope = c.int("kv_lora_rank"), c.int("qk_rope_head_dim")
        qk, v = c.int("qk_nope_head_dim") + rope, c.int("v_head_dim")
        q_rank = c.int("q_lora_rank") if c.has("q_lora_rank") else 0
        q = hidden * q_rank + q_rank * heads * qk if q_rank else hidden * heads * qk
        params = q + hidden * (latent + rope) + latent * heads * (qk - rope + v) + heads * v * hidden
        return params, dict(attention_heads=heads, kv_heads=kv_heads, head_dim=qk, kv_latent_dim=latent + rope)
    if c.has("head_dim"):
        head_dim = c.int("head_dim")
    elif hidden % heads:
        c.fail("head_dim", f"missing, and hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    else:
        head_dim = hidden // heads
    params = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    return params, dict(attention_heads=heads, kv_heads=kv_heads, head_dim=head_dim)


def _stored_dtype(c: _Keys) -> str:
    """The stored type of the expert weights: the quantization's where the config has one, else the checkpoint's."""
    quant = c.value("quantization_config", default=None)
    if quant is not None:
        if not isinstance(quant, dict):
            c.fail("quantization_config", f"expected a mapping, got {quant!r}")
        method, bits = quant.get("quant_method"), quant.get("bits")
        if method in ("fp8", "fbgemm_fp8", "mxfp4"):
            return "mxfp4" if method == "mxfp4" else "fp8"
        if method == "bitsandbytes" and (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
            return "int4" if quant.get("load_in_4bit") else "int8"
        if method in ("gptq", "awq") and bits in (4, 8):
            return f"int{bits}"
        c.fail("quantization_config.quant_method", f"{method!r} (bits {bits!r}) is not read (fp8, mxfp4, bitsandbytes, "
                                                   f"gptq and awq of 4 or 8 bits are); give the stored type as a dtype")
    stored = c.value("torch_dtype", "dtype", default="float16")
    if stored not in TORCH_DTYPES:
        c.fail(c.given("torch_dtype", "dtype"), f"{stored!r} is not one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[stored]


class _Keys:
    """Reads of one config's keys. Aliases (keys that mean the same in different families) must agree; a key whose
    value is null counts as absent."""

    def __init__(self, config: dict, source: str):
        self.config, self.source = config, source
        model_type = config.get("model_type")
        self.unread = "" if model_type in READ_MODEL_TYPES else (
            f" (model_type {model_type!r} is not one of {', '.join(READ_MODEL_TYPES)}; describe it in a YAML of "
            f"MoEModel fields if it names these parts otherwise)")

    def has(self, key: str) -> bool:
        return self.config.get(key) is not None

    def given(self, *aliases: str) -> str | None:
        return next((k for k in aliases if self.has(k)), None)

    def fail(self, key: str, problem: str):
        raise InputError(f"{self.source}: {key}: {problem}")

    def value(self, *aliases: str, default=_REQUIRED, why: str = ""):
        present = [k for k in aliases if self.has(k)]
        for other in present[1:]:
            if self.config[other] != self.config[present[0]]:
                self.fail(other, f"{self.config[other]!r} contradicts {present[0]}={self.config[present[0]]!r}")
        if present:
            return self.config[present[0]]
        if default is _REQUIRED:
            self.fail(" / ".join(aliases), f"missing{f' (needed for {why})' if why else ''}{self.unread}")
        return default

    def int(self, *aliases: str, default=_REQUIRED, least: int = 1, why: str = "") -> int:
        value = self.value(*aliases, default=default, why=why)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            self.fail(self.given(*aliases), f"expected a whole number of at least {least}, got {value!r}")
        return value
