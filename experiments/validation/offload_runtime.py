"""A real expert-offloading runtime in miniature, on the CPU: what `moe-validate` times against the simulator.

- Slow tier: every expert is one file on disk (`ExpertStore`), float32 [W_gate | W_up | W_down], padded for O_DIRECT.
- Fast tier: per MoE layer, `capacity` experts in page-aligned DRAM buffers, managed by the simulator's own
  `ExpertCache` (the same policy code and scope the simulation replays), so hits and misses are the simulation's by
  construction and only time is being compared.
- A layer step's misses are read from disk with the page cache defeated, all handed to the kernel at once
  (`aio.AsyncReader`: O_DIRECT, Linux native AIO), so the device works while the CPU computes, as a GPU's copy
  engine does, with no helper thread that the loaded machine would have to schedule.
- Compute is real: per layer step a router matmul (hidden × experts, the step's non-expert work) and then one gated
  FFN (`expert_ffn.gated_ffn`) per routed expert on one token, with BLAS on one thread.

A layer step follows the simulator's timing model (README "Timing model"): the router runs, the misses are submitted
in router order, the resident experts are computed, then each missed expert once its read has completed. Time spent
polling for a read is the stall.

The loop (`OffloadRuntime`) runs over a *tier pair*: what it needs of the slow tier, the fast tier and the processor
is the small interface of `ExpertStore` (sources, a reader, `compute`). This module's store is the CPU machine
above; `experiments.validation.torch_runtime.HostExperts` is the same runtime on a GPU (experts in pinned host memory, GPU
slots, host-to-device copies), so both are timed by the same code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from hardware_profiles.calibration.expert_ffn import DTYPE, PARAM_BYTES, expert_views, gated_ffn, random_block
from hardware_profiles.calibration.aio import AsyncReader
from hardware_profiles.calibration.calibrate import cpu_name
from hardware_profiles.calibration.cpu_bench import CpuFfnProbe, cpu_flops
from hardware_profiles.calibration.storage_bench import burst_method as storage_burst_method
from hardware_profiles.calibration.uncached_read import BufferRing, padded, write_padded
from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.model import MoEModel

BASE_BLOCKS = 8
"""Distinct random weight blocks the store draws on; each expert is one of them times its own factor, so every file
holds different numbers without generating gigabytes of random values."""


@dataclass(frozen=True)
class Step:
    """One layer step of the trace: a MoE layer and its routed experts in router order."""

    layer: int
    experts: tuple[int, ...]


def synthetic_steps(model: MoEModel, tokens: int, seed: int = 0,
                    stored: Sequence[Sequence[int]] | None = None) -> list[Step]:
    """`tokens` tokens of uniformly random routing (top_k distinct experts per layer): calibration input that owes
    nothing to the trace being validated. `stored`: draw each layer's experts from `stored[layer]` only (those with a
    file to read; a layer with fewer than top_k routes them all, one with none is left out)."""
    rng = np.random.default_rng(seed)
    if stored is None:
        stored = [range(model.experts_per_layer)] * model.moe_layers
    return [Step(layer, tuple(int(e) for e in rng.choice(list(stored[layer]), min(model.top_k, len(stored[layer])),
                                                          replace=False)))
            for _ in range(tokens) for layer in range(model.moe_layers) if len(stored[layer])]


class NumpyCompute:
    """The CPU as the processor: float32 numpy FFNs on one BLAS thread (the code `moe-calibrate` times)."""

    def __init__(self, model: MoEModel, seed: int = 0):
        rng = np.random.default_rng(seed + 1)
        hidden = model.hidden_size
        self.hidden, self.ffn_width = hidden, model.expert_intermediate_size
        self.values = model.bytes_per_expert // PARAM_BYTES
        self.routers = [rng.standard_normal((hidden, model.experts_per_layer), dtype=DTYPE) * DTYPE(hidden**-0.5)
                        for _ in range(model.moe_layers)]
        self.x = rng.standard_normal((1, hidden), dtype=DTYPE)

    def threads(self):
        return threadpool_limits(limits=1, user_api="blas")

    def router(self, layer: int) -> None:
        self.x @ self.routers[layer]

    def views(self, buffer):
        return expert_views(np.frombuffer(buffer, DTYPE, self.values), self.hidden, self.ffn_width)

    def zeros(self):
        return np.zeros_like(self.x)

    def ffn(self, weights):
        return gated_ffn(self.x, *weights)


class ExpertStore:
    """The slow tier: one file per (layer, expert) in `directory`, written once and reused while the shape matches.

    What `OffloadRuntime` needs of a slow tier: `model`, `nbytes`, `sources()` (what a read names, by layer and
    expert), `open_reader()` (submit/wait/close) and `compute(seed)` (the processor that runs the experts)."""

    def __init__(self, directory: str | Path, model: MoEModel, seed: int = 0):
        self.directory = Path(directory)
        self.model = model
        self.seed = seed
        self.nbytes = model.bytes_per_expert

    def sources(self) -> list[list[str]]:
        return self.paths()

    def open_reader(self) -> AsyncReader:
        return AsyncReader()

    def compute(self, seed: int = 0) -> NumpyCompute:
        return NumpyCompute(self.model, seed)

    def ring(self, count: int) -> BufferRing:
        return BufferRing(count, self.nbytes)

    def ffn_probe(self, widths: Sequence[int]) -> CpuFfnProbe:
        return CpuFfnProbe(self.model.hidden_size, widths, threads=1)

    def flops(self, hidden: int, ffn: int, tokens: int, repeats: int) -> tuple[float, list[float]]:
        return cpu_flops(hidden, ffn, tokens, repeats, threads=1)

    read_method = "O_DIRECT, Linux native AIO"

    def burst_method(self, groups: Sequence[Sequence], bursts: Sequence[int], repeats: int) -> str:
        return storage_burst_method(groups, bursts, repeats)

    def roles(self) -> dict:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 1 << 30
        return {"gpu_name": f"{cpu_name()}, 1 BLAS thread", "memory_bytes": memory,
                "memory_text": "physical memory (sysconf); the runtime's slots use a small part",
                "description": f"{cpu_name()} computing experts from DRAM as the 'GPU'; expert reads from storage as the 'h2d' link.",
                "profile_name": "validate-cpu-as-gpu", "cpu_computes_experts": True}

    def path(self, layer: int, expert: int) -> Path:
        return self.directory / f"L{layer:03d}_E{expert:04d}.bin"

    def paths(self) -> list[list[str]]:
        """paths()[layer][expert] as strings, built once (a Path per load costs the runtime ~10 us)."""
        return [[str(self.path(l, e)) for e in range(self.model.experts_per_layer)] for l in range(self.model.moe_layers)]

    def ensure(self, needed: set[tuple[int, int]], progress: Callable[[int], None] | None = None) -> int:
        """Write every (layer, expert) of `needed` not already stored with this shape; returns how many were written."""
        manifest = self.directory / "manifest.json"
        shape = {"hidden": self.model.hidden_size, "ffn": self.model.expert_intermediate_size,
                 "dtype": "float32", "seed": self.seed, "layout": "gate|up|down"}
        self.directory.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file() or json.loads(manifest.read_text()) != shape:
            for old in self.directory.glob("L*_E*.bin"):
                old.unlink()
            manifest.write_text(json.dumps(shape))
        hidden, ffn = self.model.hidden_size, self.model.expert_intermediate_size
        rng = np.random.default_rng(self.seed)
        bases = None
        written = 0
        for layer, expert in sorted(needed):
            path = self.path(layer, expert)
            if path.is_file() and path.stat().st_size == padded(self.nbytes):
                continue
            if bases is None:
                bases = [random_block(hidden, ffn, rng) for _ in range(BASE_BLOCKS)]
            index = layer * self.model.experts_per_layer + expert
            write_padded(path, bases[index % BASE_BLOCKS] * DTYPE(1.0 + 1e-4 * index))
            written += 1
            if progress:
                progress(1)
        return written


@dataclass(frozen=True)
class RuntimeResult:
    total_s: float
    stall_s: float
    accesses: int
    hits: int
    loads: int


class OffloadRuntime:
    """Runs layer steps for real over a store, holding `capacity` experts per layer in DRAM under per-layer LRU.

    The DRAM buffers come from a `BufferRing` (at least capacity × layers of them, plus spares): a load takes the
    ring's oldest free buffer and an evicted expert's buffer goes to the back, which keeps reads off recently
    filled buffers (see `BufferRing`). Which experts are resident is the cache's decision alone.
    """

    def __init__(self, store: ExpertStore, capacity: int, ring: BufferRing, seed: int = 0):
        model = store.model
        if ring.count < capacity * model.moe_layers or ring.nbytes < store.nbytes:
            raise ValueError(f"the ring needs {capacity * model.moe_layers} buffers of {store.nbytes} bytes")
        self.store = store
        self.model = model
        self.capacity = capacity
        self.ring = ring
        self.compute = store.compute(seed)

    def run(self, steps: Sequence[Step], pause: Callable[[], None] | None = None, pause_every: int = 0,
            experts: bool = True, reads: bool = True, ffn_times: list | None = None,
            in_flight_times: list | None = None, fetched_times: list | None = None,
            last_fetched_times: list | None = None) -> RuntimeResult:
        """Run `steps` from an empty cache; returns wall-clock total and stall.

        `pause()`, if given, is called between steps every `pause_every` steps (no read is in flight then) with the
        clock stopped: the caller measures the machine there, so its measurements span the run's own time window.
        `experts=False` skips the expert FFNs and the reads: what is left is a layer step's non-expert work (the
        router, the cache and buffer bookkeeping), which calibration times on synthetic routing. Issuing the reads
        is not in it: the link's calibration times a read from its issue, as a GPU copy's latency includes its launch.
        `reads=False` computes every expert as if it were resident (the buffers hold whatever they held): the
        expert FFN as the runtime runs it, between its own bookkeeping, which calibration times the same way.
        `ffn_times`, if given (calibration only), gets the time of each resident expert's FFN call, so that the rest
        of a step (router, bookkeeping) is timed as it runs between expert FFNs, not back to back.
        `in_flight_times`, if given with `ffn_times`, gets instead the times of those computed while the step's reads
        are in flight (the profile's `gpu.transfer_slowdown`).
        `fetched_times`, if given, gets the time of each missed expert's FFN call, computed as its read lands (the
        profile's `gpu.fetched_slowdown`).
        `last_fetched_times`, if given with `fetched_times`, gets instead the time of each step's last missed expert,
        the last read of its burst (the profile's `gpu.last_fetch_slowdown`).
        """
        model = self.model
        cache = ExpertCache(LRUCache, self.capacity, "layer", model)
        cache.track_evictions = True
        per = model.experts_per_layer
        ring = self.ring
        compute = self.compute
        buffer_of = {}  # resident model-wide key -> its fast-tier buffer
        views = {}  # model-wide key -> (W_gate, W_up, W_down) over its buffer
        reader = self.store.open_reader()
        nbytes = self.store.nbytes
        sources = self.store.sources()
        stall = 0.0
        hits = loads = accesses = 0
        try:
            with compute.threads():
                paused = 0.0
                start = time.perf_counter()
                for index, step in enumerate(steps):
                    if pause is not None and pause_every and index and index % pause_every == 0:
                        t0 = time.perf_counter()
                        pause()
                        paused += time.perf_counter() - t0
                    layer = step.layer
                    base = layer * per
                    compute.router(layer)  # the step's non-expert work (routing itself comes from the trace)
                    misses = cache.access(layer, list(step.experts))
                    accesses += len(step.experts)
                    hits += len(step.experts) - len(misses)
                    loads += len(misses)
                    for key in cache.evicted:
                        ring.give(buffer_of.pop(key))
                        del views[key]
                    cache.evicted.clear()
                    keys, issued = [], []
                    for expert in misses:
                        key = base + expert
                        buffer_of[key] = buffer = ring.take()
                        views[key] = compute.views(buffer)
                        keys.append(key)
                        issued.append((sources[layer][expert], buffer, nbytes))
                    if not experts:
                        continue
                    in_flight = bool(issued) and reads
                    pending = list(zip(keys, reader.submit(issued))) if in_flight else []
                    y = compute.zeros()
                    missed = set(misses) if reads else set()
                    if ffn_times is None:
                        for expert in step.experts:
                            if expert not in missed:
                                y = y + compute.ffn(views[base + expert])
                    else:
                        times = in_flight_times if in_flight and in_flight_times is not None else ffn_times
                        for expert in step.experts:
                            if expert not in missed:
                                weights = views[base + expert]
                                t0 = time.perf_counter()
                                out = compute.ffn(weights)
                                times.append(time.perf_counter() - t0)
                                y = y + out
                    for position, (key, ticket) in enumerate(pending, 1):
                        t0 = time.perf_counter()
                        reader.wait(ticket)
                        t1 = time.perf_counter()
                        stall += t1 - t0
                        y = y + compute.ffn(views[key])
                        if fetched_times is not None:
                            last = last_fetched_times is not None and position == len(pending)
                            (last_fetched_times if last else fetched_times).append(time.perf_counter() - t1)
                total = time.perf_counter() - start - paused
        finally:
            reader.close()
            for buffer in buffer_of.values():
                ring.give(buffer)
        return RuntimeResult(total, stall, accesses, hits, loads)
