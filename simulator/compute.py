"""How long the processors compute: a roofline estimate per layer step, from the model preset and the profile.

At decode batch sizes an expert FFN is memory-bound: its time is the larger of reading its weights from memory and
doing its FLOPs, plus a fixed per-call overhead:

    expert_s     = kernel_overhead_s + max(2·expert_params·tokens / flops, bytes_per_expert / memory_bandwidth)
    non_expert_s = kernel_overhead_s + max(2·P_ne·tokens / flops, P_ne·non_expert_bytes / memory_bandwidth)

where P_ne = `non_expert_params_per_layer` (attention, router, shared experts), read at their own dtype
(`MoEModel.non_expert_bytes_per_param`: bf16 when only the experts are quantised). The token-by-token replay counts no
KV-cache reads (small next to weights at short context and batch 1), so its figures stay what they were. The
batched replay (simulator.serving) costs a step of n tokens with `BatchCosts`: one weight read serves all n tokens
of an expert, and attention reads each row's KV cache and does its FLOPs:

    attention_s  = Σ_rows context · (attention_layers / moe_layers) · max(4·heads·head_dim / flops,
                                                                          kv_bytes_per_token_and_layer / memory_bandwidth)

(a prefill chunk's rows have contexts p+1 .. p+k, so its FLOPs grow quadratically). The same model, with the CPU's
DRAM bandwidth and FLOP rate and no launch overhead, times an expert run on the CPU (Fiddler). Calibration grounds
the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simulator.gpu_memory import kv_bytes_per_token
from simulator.hardware import CPUSpec, GPUSpec, HardwareProfile
from simulator.model import MoEModel

ACTIVATION_BYTES = 2  # fp16/bf16 hidden states crossing the link when an expert runs on the CPU


@dataclass(frozen=True)
class StepCosts:
    """What one layer step costs the GPU, in seconds: the compute inputs of the timed replay."""

    non_expert_s: float
    expert_s: float
    transfer_slowdown: float = 0.0
    """`GPUSpec.transfer_slowdown`: expert compute runs (1 + it) times longer while the step's fetches are in flight."""
    fetched_slowdown: float = 0.0
    """`GPUSpec.fetched_slowdown`: a fetched expert's compute takes (1 + it) times a resident one's."""
    last_fetch_slowdown: float | None = None
    """`GPUSpec.last_fetch_slowdown`: the same for the step's last demand fetch; None: as `fetched_slowdown`."""

    @property
    def effective_last_fetch_slowdown(self) -> float:
        """The slowdown of the step's last demand fetch, resolved."""
        return self.fetched_slowdown if self.last_fetch_slowdown is None else self.last_fetch_slowdown


@dataclass(frozen=True)
class Runtime:
    """What the serving framework adds to the machine's costs (0 and 1: the roofline alone, as every shipped figure).

    These are software, not hardware: a framework's Python dispatch and synchronisation per layer, the fixed cost of
    handing a layer's experts to CPU threads, how many sockets its CPU kernels read from. A published anchor sets
    them from a measurement or another anchor of the same framework, never from its own figure."""

    layer_overhead_s: float = 0.0
    """Fixed GPU-stream time per layer step (Python dispatch, synchronisation), added to the non-expert work."""
    cpu_step_overhead_s: float = 0.0
    """Fixed time per layer step that runs experts on the CPU (a backend split's synchronisation, the thread pool's
    wake-up), paid once before the step's first CPU expert."""
    cpu_sockets: int = 1
    """Sockets whose memory the CPU experts are read from: a NUMA-aware runtime that copies the experts to each socket
    (ktransformers' USE_NUMA) reads at sockets × the profile's one-socket bandwidth and FLOP rate."""


@dataclass(frozen=True)
class MissCosts:
    """What the alternatives to waiting for a missed expert cost (inputs of a miss handler's choice)."""

    transfer_s: float
    """One expert over the host-to-device link, unqueued: latency + bytes / bandwidth."""
    cpu_expert_s: float
    """One expert computed on the CPU from DRAM."""
    activation_round_trip_s: float
    """The token's hidden state to the CPU and the expert's output back (latency-bound; not queued on the links)."""
    cpu_step_overhead_s: float = 0.0
    """Paid once per layer step that runs experts on the CPU (`Runtime.cpu_step_overhead_s`)."""
    activation_d2h_wire_s: float = 0.0
    """Of the trip to the CPU, the time the device-to-host wire carries the activations (bytes / bandwidth), at the
    end of the trip: while it does, a host-to-device link with a `duplex_bandwidth_Bps` runs slower."""


def roofline_s(params: int, param_bytes: float, flops: float, memory_bandwidth_Bps: float, overhead_s: float = 0.0,
               tokens: int = 1) -> float:
    return overhead_s + max(2.0 * params * tokens / flops, params * param_bytes / memory_bandwidth_Bps)


def gpu_s(params: int, model: MoEModel, gpu: GPUSpec, tokens: int = 1, param_bytes: float | None = None) -> float:
    return roofline_s(params, model.param_bytes if param_bytes is None else param_bytes, gpu.flops,
                      gpu.memory_bandwidth_Bps, gpu.kernel_overhead_s, tokens)


def cpu_s(params: int, model: MoEModel, cpu: CPUSpec, tokens: int = 1, sockets: int = 1) -> float:
    return roofline_s(params, model.param_bytes, cpu.flops * sockets, cpu.memory_bandwidth_Bps * sockets, 0.0, tokens)


def step_costs(model: MoEModel, gpu: GPUSpec, tokens: int = 1, runtime: Runtime = Runtime()) -> StepCosts:
    return StepCosts(
        non_expert_s=runtime.layer_overhead_s + gpu_s(model.non_expert_params_per_layer, model, gpu, tokens,
                                                      model.non_expert_bytes_per_param),
        expert_s=gpu_s(model.expert_params, model, gpu, tokens),
        transfer_slowdown=gpu.transfer_slowdown,
        fetched_slowdown=gpu.fetched_slowdown,
        last_fetch_slowdown=gpu.last_fetch_slowdown,
    )


def miss_costs(model: MoEModel, hardware: HardwareProfile, tokens: int = 1, runtime: Runtime = Runtime()) -> MissCosts:
    h2d, d2h = hardware.h2d, hardware.d2h
    activations = model.hidden_size * ACTIVATION_BYTES * tokens
    return MissCosts(
        transfer_s=h2d.latency_s + model.bytes_per_expert / h2d.bandwidth_Bps,
        cpu_expert_s=cpu_s(model.expert_params, model, hardware.cpu, tokens, runtime.cpu_sockets),
        activation_round_trip_s=d2h.latency_s + activations / d2h.bandwidth_Bps + h2d.latency_s + activations / h2d.bandwidth_Bps,
        cpu_step_overhead_s=runtime.cpu_step_overhead_s,
        activation_d2h_wire_s=activations / d2h.bandwidth_Bps,
    )


@dataclass(frozen=True)
class Roofline:
    """One kernel's time as a function of the tokens it serves: overhead + max(flop time, weight read time)."""

    overhead_s: float
    read_s: float
    """Reading the weights once, whatever the tokens."""
    flop_s: float
    """FLOP time per token."""

    def __call__(self, tokens: int) -> float:
        return self.overhead_s + max(self.flop_s * tokens, self.read_s)


def gpu_roofline(params: int, model: MoEModel, gpu: GPUSpec, param_bytes: float | None = None) -> Roofline:
    param_bytes = model.param_bytes if param_bytes is None else param_bytes
    return Roofline(gpu.kernel_overhead_s, params * param_bytes / gpu.memory_bandwidth_Bps, 2.0 * params / gpu.flops)


class BatchCosts:
    """What a layer step of the batched replay costs, as functions of its tokens: an expert serving n of them, the
    non-expert part of n tokens plus their attention, and the alternatives to a miss for n tokens (memoised: a run
    sees few distinct n)."""

    def __init__(self, expert: Roofline, non_expert: Roofline, attention_s_per_context: float = 0.0,
                 miss: "Callable[[int], MissCosts] | None" = None):
        self.expert = expert
        self.non_expert = non_expert
        self.attention_s_per_context = attention_s_per_context
        """Attention time per token of context a row attends to (KV read or FLOPs, whichever is slower)."""
        self._miss = miss
        self._expert_s: dict[int, float] = {}
        self._miss_costs: dict[int, MissCosts] = {}

    def expert_s(self, tokens: int) -> float:
        cost = self._expert_s.get(tokens)
        if cost is None:
            cost = self._expert_s[tokens] = self.expert(tokens)
        return cost

    def non_expert_s(self, tokens: int, context_tokens: int) -> float:
        """The step's non-expert work: `tokens` rows whose contexts add up to `context_tokens`."""
        return self.non_expert(tokens) + context_tokens * self.attention_s_per_context

    def miss(self, tokens: int) -> MissCosts | None:
        if self._miss is None:
            return None
        costs = self._miss_costs.get(tokens)
        if costs is None:
            costs = self._miss_costs[tokens] = self._miss(tokens)
        return costs


def attention_s_per_context(model: MoEModel, gpu: GPUSpec) -> float:
    """One MoE layer step's attention time per context token of one row (0 without the model's attention shape)."""
    per_token = kv_bytes_per_token(model)
    if per_token is None:
        return 0.0
    layers = model.attention_layers or model.moe_layers
    flops = 4.0 * model.attention_heads * model.head_dim
    per_layer = max(flops / gpu.flops, per_token / layers / gpu.memory_bandwidth_Bps)
    return per_layer * layers / model.moe_layers


def batch_costs(model: MoEModel, hardware: HardwareProfile, runtime: Runtime = Runtime()) -> BatchCosts:
    gpu = hardware.gpu
    non_expert = gpu_roofline(model.non_expert_params_per_layer, model, gpu, model.non_expert_bytes_per_param)
    non_expert = Roofline(non_expert.overhead_s + runtime.layer_overhead_s, non_expert.read_s, non_expert.flop_s)
    return BatchCosts(gpu_roofline(model.expert_params, model, gpu), non_expert, attention_s_per_context(model, gpu),
                      lambda tokens: miss_costs(model, hardware, tokens, runtime))
