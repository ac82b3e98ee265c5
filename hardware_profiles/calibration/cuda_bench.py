"""Measure a CUDA GPU with PyTorch: host<->device copies (pinned and pageable, 64 KiB ... 1 GiB), device memory
bandwidth, and the expert FFN at batch 1 and at a compute-bound batch.

A copy is timed as a runtime experiences it: wall clock from issuing `copy_` to `torch.cuda.synchronize()` returning,
so the fitted latency includes the launch and the synchronisation. Timing loops take a `copy(nbytes) -> seconds`
callable (`transfer_samples`), so the bookkeeping is tested on machines without a GPU; every measurement takes a
`device` (default "cuda"), so its code also runs on the CPU in tests (where its figures mean nothing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from hardware_profiles.calibration.fit import PathMeasurement

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TRANSFER_SIZES = tuple(64 * KiB * 4**i for i in range(8))  # 64 KiB, 256 KiB, ..., 1 GiB
QUICK_TRANSFER_SIZES = TRANSFER_SIZES[:5]  # up to 16 MiB


def cuda_available() -> bool:
    """True when PyTorch is installed and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def synchronize(device="cuda") -> None:
    """Wait for the device's work (a no-op on the CPU, whose torch calls return when done)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def transfer_samples(copy: Callable[[int], float], sizes: Sequence[int], repeats: int,
                     tick: Callable[[], None] | None = None) -> dict[int, list[float]]:
    """`repeats` timings of `copy(nbytes)` per size, after one untimed warm-up copy per size."""
    samples = {}
    for nbytes in sizes:
        copy(nbytes)
        samples[nbytes] = [copy(nbytes) for _ in range(repeats)]
        if tick:
            tick()
    return samples


def time_transfers(direction: str, pinned: bool, sizes: Sequence[int], repeats: int,
                   tick: Callable[[], None] | None = None, device="cuda") -> PathMeasurement:
    """Host-to-device (`direction="h2d"`) or device-to-host (`"d2h"`) copies from/to pinned or pageable memory."""
    import torch

    top = max(sizes)
    host = torch.empty(top, dtype=torch.uint8, pin_memory=pinned)
    host.fill_(1)
    on_device = torch.empty(top, dtype=torch.uint8, device=device)

    def copy(nbytes: int) -> float:
        src, dst = (host[:nbytes], on_device[:nbytes]) if direction == "h2d" else (on_device[:nbytes], host[:nbytes])
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=pinned)
        synchronize(device)
        return time.perf_counter() - t0

    samples = transfer_samples(copy, sizes, repeats, tick)
    host = on_device = None  # free both before the next measurement allocates its own
    _release(device)
    kind = "pinned" if pinned else "pageable"
    method = (f"torch copy_ {kind} host memory {'to' if direction == 'h2d' else 'from'} the GPU, wall clock to "
              f"torch.cuda.synchronize(), sizes {sizes[0] >> 10} KiB..{sizes[-1] >> 20} MiB, mean of {repeats}")
    return PathMeasurement.from_samples(f"{direction} {kind}", method, samples)


def _release(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def device_copy_Bps(nbytes: int, repeats: int, device="cuda") -> float:
    """Best-of-`repeats` device-to-device copy bandwidth, bytes read plus bytes written per second."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = 0.0
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = max(best, 2 * nbytes / (time.perf_counter() - t0))
    del src, dst
    _release(device)
    return best


def time_gpu_ffn(hidden: int, widths: Sequence[int], repeats: int, pool_bytes: int = 512 * MiB,
                 tick: Callable[[], None] | None = None, device="cuda") -> PathMeasurement:
    """Mean bf16 expert FFN time at batch 1 per width on the GPU, cold weights (a pool larger than the L2)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(1, hidden, dtype=torch.bfloat16, device=device)
    samples = {}
    for ffn in widths:
        nbytes = 3 * hidden * ffn * 2
        count = max(2, math.ceil(pool_bytes / nbytes))
        pool = [(torch.randn(hidden, ffn, dtype=torch.bfloat16, device=device) * hidden**-0.5,
                 torch.randn(hidden, ffn, dtype=torch.bfloat16, device=device) * hidden**-0.5,
                 torch.randn(ffn, hidden, dtype=torch.bfloat16, device=device) * ffn**-0.5) for _ in range(count)]
        for wg, wu, wd in pool[:2]:
            (F.silu(x @ wg) * (x @ wu)) @ wd
        times = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            for wg, wu, wd in pool:
                (F.silu(x @ wg) * (x @ wu)) @ wd
            synchronize(device)
            times.append((time.perf_counter() - t0) / count)
        samples[nbytes] = times
        del pool
        _release(device)
        if tick:
            tick()
    method = (f"torch bf16 gated FFN on {'the GPU' if torch.device(device).type == 'cuda' else device} (hidden {hidden}, widths {list(widths)}, batch 1), cold weights from a "
              f"{pool_bytes >> 20} MiB pool, mean of {repeats} passes")
    return PathMeasurement.from_samples("gpu expert FFN", method, samples)


def gpu_flops(hidden: int, ffn: int, tokens: int, repeats: int, device="cuda") -> float:
    """Best-of-`repeats` bf16 FLOP/s of one expert FFN on `tokens` tokens (compute-bound at a large batch)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device)
    wg, wu = (torch.randn(hidden, ffn, dtype=torch.bfloat16, device=device) for _ in range(2))
    wd = torch.randn(ffn, hidden, dtype=torch.bfloat16, device=device)
    (F.silu(x @ wg) * (x @ wu)) @ wd
    best = 0.0
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        (F.silu(x @ wg) * (x @ wu)) @ wd
        synchronize(device)
        best = max(best, 2.0 * 3 * hidden * ffn * tokens / (time.perf_counter() - t0))
    return best


def gpu_identity() -> tuple[str, int]:
    """(device name, total memory in bytes) of CUDA device 0."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return props.name, int(props.total_memory)
