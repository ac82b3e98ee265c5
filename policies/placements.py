"""Placements: llama.cpp's CPU layers, ktransformers' CPU experts, HybriMoE's per-step split. The interface and the
engine's timing of the CPU's share are `simulator.placement`'s; `placement=gpu-cache` (no plug-in) is the expert
cache alone.
"""

from __future__ import annotations

import re

from simulator.errors import InputError
from simulator.placement import Placement
from simulator.registry import Registry


class StaticLayers(Placement):
    """llama.cpp's `--n-cpu-moe N` / `-ot`: the routed experts of chosen MoE layers stay in DRAM and run on the CPU;
    the other layers' experts go through the GPU cache as without a placement (a cache as big as a layer holds
    them all, as llama.cpp does).

    `cpu_layers`: N, the first N MoE layers, or a list of MoE layer indices. `pattern`: a regular expression searched
    in each MoE layer's expert tensor name `blk.{layer}.ffn_up_exps`, as `-ot 'blk\\.(1[0-9])\\.ffn_.*_exps=CPU'`
    names them (here `layer` counts MoE layers from 0; llama.cpp's `blk` index counts dense layers too, so a model
    with a leading dense layer is shifted by one). A layer is on the CPU if either names it.

    `gpu_prefill_min_tokens` defaults to llama.cpp's: its CUDA backend takes over an op whose batch is at least 32
    tokens (`min_batch_size = 32` in ggml-cuda.cu's `ggml_backend_cuda_device_offload_op`), copying the weights. It
    copies the layer's whole expert tensor; here each routed expert that serves 32 tokens is copied, which is the
    same bytes once a step routes to most experts.
    """

    name = "static-layers"

    def __init__(self, cpu_layers: int | list[int] = 0, pattern: str | None = None, gpu_prefill_min_tokens: int = 32):
        super().__init__(gpu_prefill_min_tokens)
        self.cpu_layers = cpu_layers
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as err:
            raise InputError(f"placement.pattern: {pattern!r} is not a regular expression ({err})") from None
        self._on_cpu: list[bool] = []

    def bind(self, model):
        layers = model.moe_layers
        chosen = self.cpu_layers
        if isinstance(chosen, bool) or not isinstance(chosen, (int, list, tuple)):
            raise InputError(f"placement.cpu_layers: {chosen!r} is neither a number of layers nor a list of layers")
        if isinstance(chosen, int):
            if not 0 <= chosen <= layers:
                raise InputError(f"placement.cpu_layers: {chosen} is not a number of MoE layers (0..{layers})")
            on_cpu = [layer < chosen for layer in range(layers)]
        else:
            bad = [layer for layer in chosen if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < layers]
            if bad:
                raise InputError(f"placement.cpu_layers: {bad[0]!r} is not a MoE layer (0..{layers - 1})")
            on_cpu = [layer in set(chosen) for layer in range(layers)]
        if self.pattern is not None:
            on_cpu = [cpu or bool(self.pattern.search(f"blk.{layer}.ffn_up_exps")) for layer, cpu in enumerate(on_cpu)]
        self._on_cpu = on_cpu

    def on_cpu(self, layer):
        return self._on_cpu[layer]


class CPUExperts(Placement):
    """ktransformers: every routed expert runs on the CPU from DRAM; attention, the router and the shared experts
    run on the GPU, and the hidden states cross the link both ways in every layer step."""

    name = "cpu-experts"

    def on_cpu(self, layer):
        return True


class DynamicSplit(Placement):
    """HybriMoE's intra-layer split: in each step, every expert not on the GPU is either loaded (and cached) or run on
    the CPU, whichever makes the step end sooner.

    Greedy, in router order, over the step's estimated clocks (`SplitView`): loading an expert ends its GPU work at
    max(GPU free, its arrival behind the loads chosen before it) + its compute; running it on the CPU ends at
    max(router + hidden state to the host, CPU free) + its CPU time + the output back (the step's first CPU expert
    also pays the runtime's fixed cost of a CPU step). The choice that gives the
    smaller finish of the step so far (the later of the two sides) wins; a tie loads it, since a loaded expert can
    hit later. HybriMoE also orders and prefetches by its own scores; the prefetch is a separate plug-in here.
    """

    name = "dynamic-split"
    splits = True

    def split(self, layer, candidates, view):
        gpu_end = view.gpu_ready_s
        link = view.link_ready_s
        cpu_free = view.cpu_ready_s
        cpu_end = view.t_router
        on_cpu: set[int] = set()
        for expert, tokens in candidates:
            costs = view.miss_costs(tokens)
            arrival = link + costs.transfer_s
            gpu_option = max(gpu_end, arrival) + view.gpu_expert_s(tokens)
            half_trip = costs.activation_round_trip_s / 2
            overhead_s = 0.0 if on_cpu else costs.cpu_step_overhead_s
            cpu_done = max(view.t_router + half_trip, cpu_free) + overhead_s + costs.cpu_expert_s
            if max(gpu_end, cpu_done + half_trip) < max(gpu_option, cpu_end):
                on_cpu.add(expert)
                cpu_free, cpu_end = cpu_done, cpu_done + half_trip
            else:
                gpu_end = gpu_option
                # the next load starts when this one has arrived (one engine), or sets up while its bytes cross
                link = arrival if view.link_engines == 1 else arrival - view.link_latency_s
        return on_cpu


PLACEMENTS = Registry("placement", {
    "gpu-cache": None,
    "static-layers": "policies.placements:StaticLayers",
    "cpu-experts": "policies.placements:CPUExperts",
    "dynamic-split": "policies.placements:DynamicSplit",
})
