"""How long the GPU computes: a roofline estimate per layer step, from the model preset and the GPU profile.

At decode batch sizes an expert FFN is memory-bound: its time is the larger of reading its weights from device
memory and doing its FLOPs, plus a fixed per-call overhead:

    expert_s     = kernel_overhead_s + max(2·expert_params·tokens / flops, bytes_per_expert / memory_bandwidth)
    non_expert_s = kernel_overhead_s + max(2·P_ne·tokens / flops, P_ne·param_bytes / memory_bandwidth)

where P_ne = `non_expert_params_per_layer` (attention, router, shared experts). KV-cache reads and activations are
not counted: small next to weights at short context and batch 1. Calibration (`moe-calibrate`) grounds the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.hardware import GPUSpec
from simulator.model import MoEModel


@dataclass(frozen=True)
class StepCosts:
    """What one layer step costs the GPU, in seconds: the compute inputs of the timed replay."""

    non_expert_s: float
    expert_s: float


def roofline_s(params: int, param_bytes: float, gpu: GPUSpec, tokens: int = 1) -> float:
    flop_time = 2.0 * params * tokens / gpu.flops
    memory_time = params * param_bytes / gpu.memory_bandwidth_Bps
    return gpu.kernel_overhead_s + max(flop_time, memory_time)


def step_costs(model: MoEModel, gpu: GPUSpec, tokens: int = 1) -> StepCosts:
    return StepCosts(
        non_expert_s=roofline_s(model.non_expert_params_per_layer, model.param_bytes, gpu, tokens),
        expert_s=roofline_s(model.expert_params, model.param_bytes, gpu, tokens),
    )
