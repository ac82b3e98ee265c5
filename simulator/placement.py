"""The placement interface: where a layer step's routed experts are computed, the GPU or the CPU.

Offloading as the expert cache does it (`placement=gpu-cache`, no plug-in) computes every expert on the GPU and
brings a missed one over the link. Many systems compute experts on the CPU by design. A placement says which:

  `on_cpu(layer)`  the layer's routed experts live in DRAM and run on the CPU; they are never looked up in, nor
                   admitted to, the GPU cache (llama.cpp `--n-cpu-moe`, ktransformers)
  `split(...)`     of a step's experts that are not on the GPU (neither resident nor on their way), those to run on
                   the CPU rather than be loaded (HybriMoE's per-step split)

The engine (simulator.replay) times the CPU's share as it times a miss that Fiddler runs on the CPU: the rows'
hidden states cross to the host, the CPU computes its experts one after another from DRAM (the CPU profile's
roofline for the tokens each serves), and the outputs come back, while the GPU computes its own experts; the step
ends when both are done. Every access stays one hit or one miss: an expert computed on the CPU is a miss of the
GPU cache (counted in `cpu_executed`).

The prefill rule, `gpu_prefill_min_tokens` (0: never): an expert placed on the CPU that serves at least that many
tokens of a step is copied to the GPU for the step and computed there, and is not kept (llama.cpp offloads a
CPU-resident expert's matmul to the GPU when the batch reaches its threshold of 32 tokens, copying the weights).
The implementations live in `policies.placements`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from simulator.compute import MissCosts
from simulator.miss_handler import COPY, CPU
from simulator.model import MoEModel


@dataclass
class SplitView:
    """What a split may read at a step's router (timed replays only): the clocks, and each choice's costs for n
    tokens."""

    t_router: float
    gpu_ready_s: float
    """When the GPU is done with the step's resident experts (and has issued nothing yet)."""
    cpu_ready_s: float
    """When the CPU is done with the experts it was given earlier."""
    link_ready_s: float
    """When a demand fetch issued now would start on the host-to-device link: it arrives `transfer_s` later."""
    link_latency_s: float
    link_engines: int
    """The link's copy engines: with one, a load starts (its latency too) when the one before it has arrived; with
    more, its set-up overlaps the one before it."""
    gpu_expert_s: Callable[[int], float]
    """An expert's GPU compute time for n tokens."""
    miss_costs: Callable[[int], MissCosts]
    """The transfer, CPU and activation costs of an expert serving n tokens."""


class Placement:
    """Where routed experts are computed; the base class places everything on the GPU (the expert cache)."""

    name: ClassVar[str] = ""
    splits: ClassVar[bool] = False
    """True if `split` may send a non-resident expert to the CPU (it then decides for every miss)."""

    def __init__(self, gpu_prefill_min_tokens: int = 0):
        if gpu_prefill_min_tokens < 0:
            raise ValueError(f"gpu_prefill_min_tokens must be >= 0 (got {gpu_prefill_min_tokens})")
        self.gpu_prefill_min_tokens = gpu_prefill_min_tokens

    def bind(self, model: MoEModel) -> None:
        """Learn the model's shape before the replay (a layer list checked against its MoE layers)."""

    def on_cpu(self, layer: int) -> bool:
        """True if the routed experts of MoE layer `layer` live in DRAM and run on the CPU."""
        return False

    def split(self, layer: int, candidates: list[tuple[int, int]], view: SplitView) -> set[int]:
        """Of the step's experts not on the GPU, [(expert, tokens it serves)] in router order, those to run on the
        CPU instead of being loaded."""
        return set()

    def copies(self, tokens: int) -> bool:
        """The prefill rule: an expert placed on the CPU serving `tokens` tokens of a step is copied to the GPU."""
        return 0 < self.gpu_prefill_min_tokens <= tokens

    def cpu_action(self, tokens: int) -> str:
        """What the engine does with an expert this placement puts on the CPU: run it there, or copy it (`copies`)."""
        return COPY if self.copies(tokens) else CPU
