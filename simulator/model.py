"""The MoE model as the simulator sees it: its routed-expert shape and the sizes that set transfer and compute cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass


ATTENTION_FIELDS = ("attention_layers", "attention_heads", "kv_heads", "head_dim", "kv_latent_dim")
OPTIONAL_FIELDS = (*ATTENTION_FIELDS, "non_expert_param_bytes")
"""Fields written only where given (0 means not given), so older traces and runs read and write as before."""


@dataclass(frozen=True)
class MoEModel:
    """Shape of a Mixture-of-Experts model, counted in MoE layers only.

    Dense layers carry no routed experts and are folded into `non_expert_params_per_layer` of the MoE layers
    (their cost per token is small next to a missed expert; presets say where they do this).
    Shared experts are always resident on the GPU: they are never accesses, and their parameters are part of
    `non_expert_params_per_layer`.

    The attention fields at the end describe the KV cache, for costing it; 0 means not given (traces written before
    they existed, encoder-decoder presets), so every older trace still loads.
    """

    name: str
    moe_layers: int
    experts_per_layer: int
    top_k: int
    shared_experts: int
    hidden_size: int
    expert_intermediate_size: int
    param_bytes: float
    """Bytes per parameter of the stored expert weights: 2 for fp16/bf16, 1 for fp8/int8, 0.5 for int4."""
    non_expert_params_per_layer: int
    """Parameters read by the GPU per MoE layer besides routed experts: attention, norms, router, shared experts."""
    gated: bool = True
    """SwiGLU-style experts have three matrices (gate, up, down); Switch/NLLB-style experts have two."""
    kind: str = "moe"
    """"moe": experts are FFN weights fetched on a miss and computed on the GPU. "mole": Mixture of Lookup Experts,
    experts re-parameterised as tables keyed by token id; a layer step fetches its routed experts' rows (one hidden
    vector each) from the experts' home and computes nothing."""
    attention_layers: int = 0
    """Layers whose attention keeps a KV cache: every decoder layer, the dense ones too."""
    attention_heads: int = 0
    """Query heads of one attention layer."""
    kv_heads: int = 0
    """Key/value heads of one attention layer (fewer than the query heads under GQA)."""
    head_dim: int = 0
    """Width of one query/key head (MLA: qk_nope_head_dim + qk_rope_head_dim)."""
    kv_latent_dim: int = 0
    """MLA (DeepSeek): the values one token caches per layer, its compressed latent plus the shared RoPE key
    (kv_lora_rank + qk_rope_head_dim). 0: keys and values are cached, 2 · kv_heads · head_dim per token and layer."""
    non_expert_param_bytes: float = 0.0
    """Bytes per non-expert parameter where they differ from the experts' (a model whose experts are quantised and
    whose attention stays bf16: `model.dtype=int4` sets it to the preset's 2). 0: the same as `param_bytes`."""

    @property
    def non_expert_bytes_per_param(self) -> float:
        return self.non_expert_param_bytes or self.param_bytes

    @property
    def expert_params(self) -> int:
        return (3 if self.gated else 2) * self.hidden_size * self.expert_intermediate_size

    @property
    def bytes_per_expert(self) -> int:
        return int(round(self.expert_params * self.param_bytes))

    @property
    def lut_row_bytes(self) -> int:
        """One lookup-table row of a MoLE expert: the expert's output vector for one token id."""
        return int(round(self.hidden_size * self.param_bytes))

    @property
    def total_experts(self) -> int:
        return self.moe_layers * self.experts_per_layer

    def key(self, layer: int, expert: int) -> int:
        """The model-wide key of an expert, layer · experts_per_layer + expert: a global cache's keys, the prefetch
        bookkeeping's and the links' labels."""
        return layer * self.experts_per_layer + expert

    def expert_of(self, key: int) -> tuple[int, int]:
        """(layer, expert) of a model-wide key."""
        return divmod(key, self.experts_per_layer)

    def to_dict(self) -> dict:
        """The fields, the optional ones only where given: a model without them is written as before they existed (the
        shipped trace regenerates to the same bytes, older runs' metrics.json read the same)."""
        return {k: v for k, v in asdict(self).items() if v or k not in OPTIONAL_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> "MoEModel":
        return cls(**data)
