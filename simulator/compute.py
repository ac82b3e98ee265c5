"""How long the processors compute: a roofline estimate per layer step, from the model preset and the profile.

At decode batch sizes an expert FFN is memory-bound: its time is the larger of reading its weights from memory and
doing its FLOPs, plus a fixed per-call overhead:

    expert_s     = kernel_overhead_s + max(2·expert_params·tokens / flops, bytes_per_expert / memory_bandwidth)
    non_expert_s = kernel_overhead_s + max(2·P_ne·tokens / flops, P_ne·param_bytes / memory_bandwidth)

where P_ne = `non_expert_params_per_layer` (attention, router, shared experts). KV-cache reads and activations are
not counted: small next to weights at short context and batch 1. The same model, with the CPU's DRAM bandwidth and
FLOP rate and no launch overhead, times an expert run on the CPU (Fiddler). Calibration grounds the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.hardware import CPUSpec, GPUSpec, HardwareProfile
from simulator.model import MoEModel

ACTIVATION_BYTES = 2  # fp16/bf16 hidden states crossing the link when an expert runs on the CPU


@dataclass(frozen=True)
class StepCosts:
    """What one layer step costs the GPU, in seconds: the compute inputs of the timed replay."""

    non_expert_s: float
    expert_s: float


@dataclass(frozen=True)
class MissCosts:
    """What the alternatives to waiting for a missed expert cost (inputs of a miss handler's choice)."""

    transfer_s: float
    """One expert over the host-to-device link, unqueued: latency + bytes / bandwidth."""
    cpu_expert_s: float
    """One expert computed on the CPU from DRAM."""
    activation_round_trip_s: float
    """The token's hidden state to the CPU and the expert's output back (latency-bound; not queued on the links)."""


def roofline_s(params: int, param_bytes: float, flops: float, memory_bandwidth_Bps: float, overhead_s: float = 0.0,
               tokens: int = 1) -> float:
    return overhead_s + max(2.0 * params * tokens / flops, params * param_bytes / memory_bandwidth_Bps)


def gpu_s(params: int, model: MoEModel, gpu: GPUSpec, tokens: int = 1) -> float:
    return roofline_s(params, model.param_bytes, gpu.flops, gpu.memory_bandwidth_Bps, gpu.kernel_overhead_s, tokens)


def cpu_s(params: int, model: MoEModel, cpu: CPUSpec, tokens: int = 1) -> float:
    return roofline_s(params, model.param_bytes, cpu.flops, cpu.memory_bandwidth_Bps, 0.0, tokens)


def step_costs(model: MoEModel, gpu: GPUSpec, tokens: int = 1) -> StepCosts:
    return StepCosts(
        non_expert_s=gpu_s(model.non_expert_params_per_layer, model, gpu, tokens),
        expert_s=gpu_s(model.expert_params, model, gpu, tokens),
    )


def miss_costs(model: MoEModel, hardware: HardwareProfile, tokens: int = 1) -> MissCosts:
    h2d, d2h = hardware.h2d, hardware.d2h
    activations = model.hidden_size * ACTIVATION_BYTES * tokens
    return MissCosts(
        transfer_s=h2d.latency_s + model.bytes_per_expert / h2d.bandwidth_Bps,
        cpu_expert_s=cpu_s(model.expert_params, model, hardware.cpu, tokens),
        activation_round_trip_s=d2h.latency_s + activations / d2h.bandwidth_Bps + h2d.latency_s + activations / h2d.bandwidth_Bps,
    )
