"""The run configuration, validated once at the edge; plain typed objects go inside.

Hydra composes the config; `RunConfig.from_hydra` checks it and turns every mistake into one `InputError` line.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simulator.errors import InputError, one_line

DEFAULT_TRACE = str(files("traces") / "data" / "default.parquet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraceConfig(_Strict):
    path: str | None = None


class ModelConfig(_Strict):
    preset: str | None = None
    """A preset name (simulator.presets) or a model file (a Hugging Face config.json, or a .yaml of MoEModel fields;
    `model=FILE` says the same) to use instead of the model described in the trace's metadata."""
    dtype: str | None = None
    """The routed experts' stored type (simulator.presets.DTYPE_BYTES); the non-expert weights keep theirs."""
    non_expert_dtype: str | None = None
    """The non-expert weights' stored type (attention, router, shared experts), where the checkpoint quantises them
    too (a GGUF Q4_K_M file, HQQ's 4-bit attention)."""
    kind: Literal["moe", "mole"] | None = None
    """`mole` replays the same routing as a Mixture of Lookup Experts (rows fetched, no expert compute)."""


class HardwareConfig(_Strict):
    profile: str


class CacheConfig(_Strict):
    capacity: int | str
    """Slots per layer (scope layer) or in all (global); `auto`: what the GPU's memory leaves after the non-expert
    weights and the KV reserve (simulator.gpu_memory), per layer or in all."""
    scope: Literal["global", "layer"] = "layer"
    reset_per_sequence: bool = False
    sizing: Literal["uniform", "adapmoe"] = "uniform"
    """`uniform`: every layer `capacity` slots. `adapmoe`: a budget of slots shared among the layers by AdapMoE's
    dynamic programming over per-layer LRU miss curves (policies.layer_sizing); scope `layer` only."""
    budget: int | None = Field(default=None, ge=1)
    """Total slots for `sizing=adapmoe`; None: capacity × MoE layers (the uniform cache's total)."""
    sizing_trace: str | None = None
    """The trace whose miss curves size the layers; None: the replayed trace itself (an offline allocation)."""

    @field_validator("capacity")
    @classmethod
    def _slots_or_auto(cls, value):
        if value != "auto" and (isinstance(value, str) or value < 1):
            raise ValueError("must be an integer ≥ 1 or 'auto'")
        return value


class MemoryConfig(_Strict):
    home: Literal["dram", "nvme"] = "dram"
    """Where every expert lives: CPU DRAM, or NVMe (needs the profile's `nvme` section)."""
    path: Literal["staged", "gds"] = "staged"
    """NVMe to GPU through DRAM, or by GPUDirect Storage (needs the profile's `gds` section)."""
    dram_capacity: int | None = Field(default=None, ge=1)
    """Experts the DRAM tier keeps of those read from NVMe; None: DRAM caches none."""
    dram_policy: str = "lru"
    pinned: bool = True
    """Host buffers pinned; False uses the link's `pageable_bandwidth_Bps` where the profile gives it."""


class RuntimeConfig(_Strict):
    """What the serving framework adds to the machine (simulator.compute.Runtime); zeros: the roofline alone."""

    layer_overhead_s: float = Field(default=0.0, ge=0)
    cpu_step_overhead_s: float = Field(default=0.0, ge=0)
    cpu_sockets: int = Field(default=1, ge=1)


class ReplayConfig(_Strict):
    timed: bool = True
    timeline: tuple[int, int] | None = None
    """[first, last) token indices whose GPU and link activity is written to timeline.parquet (timed runs)."""
    batch_rows: int = Field(default=65536, ge=1)
    progress: bool = True
    compiled: bool = True
    """Judge a plain cache through its policy's compiled twin (same figures, faster); false: the Python classes."""
    curves: bool = True
    """In a sweep (`moe-sim -m`), hit-rate-only LRU and Belady jobs read their figures from one one-pass curve per
    trace, policy and scope, kept in the sweep folder's `.curves/` (same figures); false: each job replays."""


class ServeConfig(_Strict):
    """`serve=none`: token by token, sequences back to back. `serve=continuous`: batched serving (simulator.serving)."""

    mode: Literal["none", "continuous"] = "none"
    max_batch: int = Field(default=1, ge=1)
    max_batched_tokens: int = Field(default=2048, ge=1)
    prompt_tokens: int = Field(default=0, ge=0)
    """A request's prompt length where the trace has no phase column."""
    arrival: Literal["offline", "poisson", "file"] = "offline"
    rate_rps: float = Field(default=1.0, gt=0)
    arrival_file: str | None = None
    kv: Literal["static", "dynamic"] = "static"


class RunConfig(_Strict):
    trace: TraceConfig
    model: ModelConfig
    hardware: HardwareConfig
    policy: dict
    prefetch: dict = {"_target_": None}
    miss: dict = {"_target_": None}
    placement: dict = {"_target_": None}
    routing: dict = {"_target_": None}
    memory: MemoryConfig = MemoryConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    serve: ServeConfig = ServeConfig()
    scheduler: dict = {"_target_": "policies.schedulers.FCFSScheduler"}
    cache: CacheConfig
    replay: ReplayConfig
    seed: int = 0

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> "RunConfig":
        try:
            data = OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:  # an interpolation that does not resolve
            raise InputError(f"config: {str(err).splitlines()[0]}") from None
        try:
            run = cls(**data)
        except ValidationError as err:
            raise InputError(f"config: {one_line(err)}") from None
        if "_target_" not in run.policy:
            raise InputError(f"config: policy: needs a '_target_' naming a CachePolicy class (got {run.policy!r})")
        return run

    @property
    def trace_path(self) -> str:
        return self.trace.path or DEFAULT_TRACE
