"""What a run asks of the GPU's memory: the non-expert weights, a KV-cache reserve and the expert cache.

A figure of ours means little if the machine it describes could not hold the configuration (four of Mixtral's
eight experts per layer at fp16 are ~45 GB, more than a 24 GB card has). So every run is checked:

    non_expert_bytes = non_expert_params_per_layer · moe_layers · WEIGHT_BYTES
    kv_reserve_bytes = requests · context_tokens · kv_bytes_per_token
    expert_cache     = cache slots · bytes_per_expert
    fits             = non_expert_bytes + kv_reserve_bytes + expert_cache ≤ GPU memory

The KV reserve is vLLM's static one: room for `requests` requests at the longest context (batch 1 today: one
request, the trace's longest sequence). KV bytes per token: per attention layer, 2 · kv_heads · head_dim values,
or MLA's compressed latent (`kv_latent_dim`), at KV_BYTES each. Not counted: embeddings and the output head (the
model shape carries no vocabulary size), activations, the CUDA context and allocator slack, so `fits` is optimistic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from simulator.model import MoEModel

WEIGHT_BYTES = 2
"""Bytes per non-expert parameter where the model does not give `non_expert_param_bytes`: attention, norms, router
and shared experts stay in bf16/fp16 (the model's `param_bytes` is the experts' stored type)."""
KV_BYTES = 2
"""Bytes per cached key/value element (an fp16/bf16 KV cache)."""


def kv_bytes_per_token(model: MoEModel) -> int | None:
    """KV-cache bytes one token adds over all attention layers; None where the model gives no attention shape."""
    layers = model.attention_layers or model.moe_layers
    if model.kv_latent_dim:
        return layers * model.kv_latent_dim * KV_BYTES
    if model.kv_heads and model.head_dim:
        return layers * 2 * model.kv_heads * model.head_dim * KV_BYTES
    return None


@dataclass(frozen=True)
class GpuMemory:
    """The GPU memory a run's configuration takes, in bytes (see the module docstring)."""

    memory_bytes: int
    non_expert_bytes: int
    kv_reserve_bytes: int
    expert_cache_bytes: int
    kv_bytes_per_token: int | None
    context_tokens: int

    @property
    def needed_bytes(self) -> int:
        return self.non_expert_bytes + self.kv_reserve_bytes + self.expert_cache_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.memory_bytes

    @property
    def free_for_experts_bytes(self) -> int:
        """What the weights and the KV reserve leave of the memory for an expert cache (negative: less than none)."""
        return self.memory_bytes - self.non_expert_bytes - self.kv_reserve_bytes

    def with_expert_cache(self, slots: int, bytes_per_expert: int) -> "GpuMemory":
        """The same machine and request, with an expert cache of `slots` experts."""
        return replace(self, expert_cache_bytes=slots * bytes_per_expert)

    def to_dict(self) -> dict:
        return {**asdict(self), "needed_bytes": self.needed_bytes, "fits_gpu_memory": self.fits}


def gpu_memory(model: MoEModel, memory_bytes: int, cache_slots: int, context_tokens: int,
               requests: int = 1) -> GpuMemory:
    """What `cache_slots` cached experts, the weights and a KV reserve for `requests` requests of `context_tokens`
    tokens take of a GPU with `memory_bytes`."""
    per_token = kv_bytes_per_token(model)
    return GpuMemory(
        memory_bytes=int(memory_bytes),
        non_expert_bytes=int(model.non_expert_params_per_layer * model.moe_layers * (model.non_expert_param_bytes or WEIGHT_BYTES)),
        kv_reserve_bytes=requests * context_tokens * (per_token or 0),
        expert_cache_bytes=cache_slots * model.bytes_per_expert,
        kv_bytes_per_token=per_token,
        context_tokens=context_tokens,
    )
