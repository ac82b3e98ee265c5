"""The miniature offloading runtime on a GPU: the tier pair `OffloadRuntime` runs over where CUDA is present.

- Slow tier: every expert the trace needs as one pinned host tensor, [W_gate | W_up | W_down] in bf16
  (`HostExperts`), the experts' DRAM home of the simulator's default memory hierarchy.
- Fast tier: GPU slots (`SlotRing`), `capacity` per layer under the simulator's own `ExpertCache`.
- Link: a layer step's misses are copied host-to-device on one copy stream, one CUDA event per copy (`CopyStream`);
  waiting for a copy is synchronising on its event.
- Compute: the router matmul and each expert's gated FFN with torch on the GPU, each followed by a synchronisation
  of the compute stream, so that the host's clock sees the GPU's work as the CPU runtime's sees its own (launch and
  synchronisation overheads are part of the expert time the probes measure in the loop).

On the CPU (`device="cpu"`, float32) the same code runs with synchronous copies: that is for tests of the code path
only, its times mean nothing. torch is imported when a store is made, so the rest of the project does not need it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from experiments.validation.offload_runtime import BASE_BLOCKS
from hardware_profiles.calibration.cpu_bench import pool_samples
from simulator.model import MoEModel

FFN_POOL_BYTES = 256 << 20
"""Cold-weight pool of the FFN probe: several times a GPU's L2 (50 MiB on an H100/H200)."""


def torch_device(name: str):
    """The torch device for `name` ("cuda" or "cpu"), with a one-line error where CUDA is absent."""
    import torch

    from simulator.errors import InputError

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--runtime cuda: torch sees no CUDA device (torch.cuda.is_available() is false)")
    return torch.device(name)


def dtype_of(device):
    """bf16 on a GPU (what offloading runtimes move), float32 on the CPU (torch's CPU bf16 matmul is slow)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


def param_bytes(device) -> int:
    return 2 if device.type == "cuda" else 4


def _sync(device) -> None:
    """Wait for the compute stream only (not `torch.cuda.synchronize()`): copies in flight go on."""
    import torch

    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _views(flat, hidden: int, ffn: int):
    n = hidden * ffn
    return flat[:n].view(hidden, ffn), flat[n:2 * n].view(hidden, ffn), flat[2 * n:3 * n].view(ffn, hidden)


def _gated_ffn(x, w_gate, w_up, w_down):
    import torch.nn.functional as F

    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


class TorchCompute:
    """The GPU as the processor; every call returns once the GPU has finished it."""

    def __init__(self, model: MoEModel, device, seed: int = 0):
        import torch

        self.device, self.dtype = device, dtype_of(device)
        gen = torch.Generator().manual_seed(seed + 1)
        hidden = model.hidden_size
        self.hidden, self.ffn_width = hidden, model.expert_intermediate_size
        self.routers = [(torch.randn(hidden, model.experts_per_layer, generator=gen) * hidden**-0.5).to(device, self.dtype)
                        for _ in range(model.moe_layers)]
        self.x = torch.randn(1, hidden, generator=gen).to(device, self.dtype)

    def threads(self):
        return contextlib.nullcontext()

    def router(self, layer: int) -> None:
        self.x @ self.routers[layer]
        _sync(self.device)

    def views(self, slot):
        return _views(slot, self.hidden, self.ffn_width)

    def zeros(self):
        import torch

        return torch.zeros_like(self.x)

    def ffn(self, weights):
        y = _gated_ffn(self.x, *weights)
        _sync(self.device)
        return y


class CopyStream:
    """Host-to-device copies with `AsyncReader`'s interface: `submit` queues copies of (host tensor, GPU slot, bytes)
    on one copy stream and returns a CUDA event per copy; `wait(event)` returns once that copy has landed."""

    def __init__(self, device):
        import torch

        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def submit(self, copies: list) -> list:
        import torch

        if self.stream is None:
            for source, slot, _ in copies:
                slot.copy_(source)
            return [None] * len(copies)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # a reused slot is no longer being read
        events = []
        with torch.cuda.stream(self.stream):
            for source, slot, _ in copies:
                slot.copy_(source, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
                events.append(event)
        return events

    def wait(self, event) -> None:
        if event is not None:
            event.synchronize()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()


class SlotRing:
    """GPU slots of `nbytes` handed out first-in first-out, `BufferRing`'s interface on device memory."""

    def __init__(self, count: int, nbytes: int, device):
        import torch

        self.count, self.nbytes = count, nbytes
        dtype = dtype_of(device)
        values = nbytes // param_bytes(device)
        self._free = deque(torch.zeros(values, dtype=dtype, device=device) for _ in range(count))  # faulted in now

    def take(self):
        return self._free.popleft()

    def give(self, slot) -> None:
        self._free.append(slot)

    def __len__(self) -> int:
        return len(self._free)


class TorchFfnProbe:
    """The expert FFN at several widths on cold weights (a pool of `FFN_POOL_BYTES` per width), timed call by call
    with the synchronisation the runtime does: `cpu_bench.CpuFfnProbe`'s interface on the GPU."""

    def __init__(self, hidden: int, widths: Sequence[int], device, seed: int = 0):
        import torch

        self.hidden, self.widths, self.device = hidden, list(widths), device
        dtype, size = dtype_of(device), param_bytes(device)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(1, hidden, generator=gen).to(device, dtype)
        self.pools = {}
        for ffn in self.widths:
            values = 3 * hidden * ffn
            count = max(2, math.ceil(FFN_POOL_BYTES / (values * size)))
            base = (torch.randn(values, generator=gen) * hidden**-0.5).to(device, dtype)
            self.pools[values * size] = [_views(base * (1 + 1e-3 * i), hidden, ffn) for i in range(count)]

    def samples(self, repeats: int, tick: Callable[[], None] | None = None) -> dict[int, list[float]]:
        def call(w) -> None:
            _gated_ffn(self.x, *w)
            _sync(self.device)

        return pool_samples(self.pools, call, repeats, tick)

    def method(self, repeats: int) -> str:
        return (f"torch {str(dtype_of(self.device)).removeprefix('torch.')} gated FFN on {self.device} (hidden {self.hidden}, "
                f"widths {self.widths}, 1 token), each call synchronised, cold weights from a {FFN_POOL_BYTES >> 20} MiB "
                f"pool per width, mean of {repeats} passes")


def torch_flops(hidden: int, ffn: int, tokens: int, repeats: int, device, seed: int = 0) -> tuple[float, list[float]]:
    """Best-of-`repeats` FLOP/s of one expert FFN on `tokens` tokens (compute-bound); (best, every repeat's)."""
    import torch

    dtype = dtype_of(device)
    gen = torch.Generator().manual_seed(seed)
    w = tuple(t.to(device, dtype) for t in (torch.randn(hidden, ffn, generator=gen), torch.randn(hidden, ffn, generator=gen),
                                            torch.randn(ffn, hidden, generator=gen)))
    x = torch.randn(tokens, hidden, generator=gen).to(device, dtype) * hidden**-0.5
    _gated_ffn(x, *w)
    _sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _gated_ffn(x, *w)
        _sync(device)
        rates.append(2.0 * 3 * hidden * ffn * tokens / (time.perf_counter() - t0))
    return max(rates), rates


class HostExperts:
    """The slow tier of the GPU machine: each expert the trace needs as a pinned host tensor (made by `ensure`).
    What `OffloadRuntime` and `moe-validate` need of a store, as `offload_runtime.ExpertStore`."""

    def __init__(self, model: MoEModel, device, seed: int = 0):
        self.model, self.device, self.seed = model, device, seed
        self.nbytes = model.bytes_per_expert
        self._tensors: list[list] = [[None] * model.experts_per_layer for _ in range(model.moe_layers)]

    def ensure(self, needed: set[tuple[int, int]], progress: Callable[[int], None] | None = None) -> int:
        """Make every (layer, expert) of `needed` not yet held; returns how many were made."""
        import torch

        dtype = dtype_of(self.device)
        values = self.nbytes // param_bytes(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        hidden = self.model.hidden_size
        bases = [(torch.randn(values, generator=gen) * hidden**-0.5).to(dtype) for _ in range(BASE_BLOCKS)]
        pin = self.device.type == "cuda"
        made = 0
        for layer, expert in sorted(needed):
            if self._tensors[layer][expert] is not None:
                continue
            index = layer * self.model.experts_per_layer + expert
            tensor = torch.empty(values, dtype=dtype, pin_memory=pin)
            torch.mul(bases[index % BASE_BLOCKS], 1.0 + 1e-4 * index, out=tensor)
            self._tensors[layer][expert] = tensor
            made += 1
            if progress:
                progress(1)
        return made

    def sources(self) -> list[list]:
        return self._tensors

    def open_reader(self) -> CopyStream:
        return CopyStream(self.device)

    def compute(self, seed: int = 0) -> TorchCompute:
        return TorchCompute(self.model, self.device, seed)

    def ring(self, count: int) -> SlotRing:
        return SlotRing(count, self.nbytes, self.device)

    def ffn_probe(self, widths: Sequence[int]) -> TorchFfnProbe:
        return TorchFfnProbe(self.model.hidden_size, widths, self.device)

    def flops(self, hidden: int, ffn: int, tokens: int, repeats: int) -> tuple[float, list[float]]:
        return torch_flops(hidden, ffn, tokens, repeats, self.device)

    @property
    def read_method(self) -> str:
        return ("pinned host tensors copied to GPU slots with non_blocking copy_ on one CUDA stream, an event per copy"
                if self.device.type == "cuda" else "synchronous torch copies on the CPU (code-path test only)")

    def burst_method(self, groups: Sequence[Sequence], bursts: Sequence[int], repeats: int) -> str:
        return (f"bursts of {list(bursts)} expert copies ({self.read_method}) issued at once, waited in order until the last "
                f"has landed (timed from the issuing call), the experts of a burst drawn from one of {len(groups)} layers, "
                f"mean of {repeats}")

    def roles(self) -> dict:
        import torch

        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            memory = torch.cuda.get_device_properties(self.device).total_memory
        else:
            name, memory = "CPU (torch, code-path test)", 1 << 30
        what = "torch.cuda.get_device_properties(0).total_memory" if self.device.type == "cuda" else "a placeholder (code-path test)"
        return {"gpu_name": name, "memory_bytes": int(memory), "memory_text": what,
                "description": f"{name} computing experts (torch); copies of the host-memory experts as the 'h2d' link.",
                "profile_name": "validate-gpu", "cpu_computes_experts": False}
