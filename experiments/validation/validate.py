"""`moe-validate`: run a trace for real on this machine (`offload_runtime`) and through the simulator, and compare.

The miniature machine: the "GPU" is this CPU computing from DRAM (one BLAS thread); its "host-to-device link" is
the storage read path (one file per expert, O_DIRECT, a layer step's misses submitted at once with Linux AIO). The
simulator gets only measurements, taken by short probes before, during (the runtime's clock paused) and after each
run, on the same shapes, files and memory the runtime uses (`MachineProbe`):

    gpu.memory_bandwidth_Bps, gpu.kernel_overhead_s   fit of the CPU expert FFN time (batch 1, cold weights)
    gpu.flops                                         the CPU expert FFN on 256 tokens
    h2d.bandwidth_Bps, h2d.latency_s                  fit of bursts of 1..top_k expert reads of one layer
    h2d.copy_engines = top_k                          all of a step's reads are in flight at once
    h2d.issue_s                                       the submitting call's time per read in those bursts (the CPU,
                                                      the "GPU" here, spends it before computing the step's experts)
    h2d.sharing                                       "shared" where the first read of a top_k burst is seen complete
                                                      nearer the burst's end than a serial wire would deliver it (on
                                                      the VM this was built on: all at once, at 100%), else "serial"
    model.non_expert_params_per_layer                 the runtime's non-expert step work (router matmul, cache and
                                                      buffer bookkeeping) timed on synthetic routing between expert
                                                      FFNs (the step less its timed FFN calls), in parameters

The model is the trace's, scaled to fit a disk budget: `expert_intermediate_size` divided by a power of two (the
factor is printed and written into each case), weights float32 (param_bytes 4); shared experts are run on neither
side. Nothing is fitted to the runtime's own totals. The profile averaged over the runs is written beside the JSON.

`--runtime cuda` runs the same loop and probes on a GPU (`experiments.validation.torch_runtime`): the experts in pinned host
memory (bf16), GPU slots as the fast tier, host-to-device copies on one stream as the link, torch FFNs on the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from experiments.config import DEFAULT_TRACE
from experiments.validation.offload_runtime import ExpertStore, OffloadRuntime, RuntimeResult, Step, synthetic_steps
from hardware_profiles.calibration.calibrate import cpu_name
from hardware_profiles.calibration.document import citation, profile_document, write_profile
from hardware_profiles.calibration.expert_ffn import PARAM_BYTES
from hardware_profiles.calibration.fit import MeasurementError, PathMeasurement
from hardware_profiles.calibration.storage_bench import burst_samples, nearer_wire
from hardware_profiles.calibration.uncached_read import padded
from hardware_profiles.schema import ProfileFile
from policies.lru import LRUCache
from simulator.atomic_file import atomic_write_bytes
from simulator.cache import ExpertCache
from simulator.compute import step_costs
from simulator.errors import InputError
from simulator.hardware import HardwareProfile
from simulator.metrics import Metrics
from simulator.model import MoEModel
from simulator.replay import Timing, replay
from traces.format import TraceChunk, TraceFile

CASE_KEYS = ("case", "measured_total_s", "simulated_total_s", "measured_stall_s", "simulated_stall_s")


@dataclass(frozen=True)
class Settings:
    tokens: int
    capacities: tuple[int, ...]
    repeats: int
    disk_budget_bytes: int
    storage_repeats: int
    ffn_repeats: int
    probe_every_tokens: int
    spare_buffers: int
    """DRAM buffers beyond what is live at once, so that reads rotate through rested buffers (`BufferRing`)."""

    @classmethod
    def of(cls, quick: bool, tokens: int | None, capacities: list[int] | None, repeats: int | None,
           disk_budget: int | None) -> "Settings":
        base = cls(2, (8,), 1, 256 << 20, 4, 1, 1, 64) if quick else cls(64, (8, 16, 32), 3, 2 << 30, 24, 2, 2, 1024)
        return replace(base, tokens=tokens or base.tokens, capacities=tuple(capacities or base.capacities),
                       repeats=repeats or base.repeats, disk_budget_bytes=disk_budget or base.disk_budget_bytes)


@dataclass
class TracePart:
    """The first `tokens` tokens of a trace, as one chunk (for the simulator) and as layer steps (for the runtime)."""

    name: str
    model: MoEModel
    chunk: TraceChunk
    steps: list[Step]
    tokens: int


def first_tokens(path: str, tokens: int) -> TracePart:
    """The rows of the first `tokens` tokens of the trace at `path` (expert ids of -1 dropped from the steps)."""
    trace = TraceFile(path)
    chunks = list(trace.chunks())
    seq = np.concatenate([c.sequence for c in chunks])
    tok = np.concatenate([c.token for c in chunks])
    new = np.ones(len(seq), dtype=bool)
    new[1:] = (seq[1:] != seq[:-1]) | (tok[1:] != tok[:-1])
    keep = np.cumsum(new) <= tokens
    chunk = TraceChunk(seq[keep], tok[keep], np.concatenate([c.layer for c in chunks])[keep],
                       np.concatenate([c.experts for c in chunks])[keep])
    steps = [Step(int(l), tuple(int(e) for e in row if e >= 0)) for l, row in zip(chunk.layer, chunk.experts)]
    return TracePart(Path(path).stem, trace.meta.model, chunk, steps, int(min(tokens, new.sum())))


def choose_scale(model: MoEModel, experts_stored: int, budget_bytes: int, param_bytes: int = PARAM_BYTES) -> int:
    """The smallest power of two dividing the expert FFN width such that `experts_stored` experts of `param_bytes`
    per weight fit `budget_bytes` in the slow tier."""
    scale = 1
    while experts_stored * padded(scaled_model(model, scale, param_bytes).bytes_per_expert) > budget_bytes:
        if model.expert_intermediate_size // (scale * 2) < 1:
            raise InputError(f"--disk-budget: {budget_bytes} bytes cannot hold {experts_stored} experts of hidden {model.hidden_size}")
        scale *= 2
    return scale


def scaled_model(model: MoEModel, scale: int, param_bytes: int = PARAM_BYTES) -> MoEModel:
    """`model` as the runtime runs it: FFN width / scale, float32 weights (bf16 on a GPU); non-expert work starts
    as the router's parameters (hidden × experts) and is replaced by the measured step work for each simulation."""
    kind = {4: "fp32", 2: "bf16"}[param_bytes]
    return replace(model, name=f"{model.name}/ffn÷{scale}/{kind}", expert_intermediate_size=max(1, model.expert_intermediate_size // scale),
                   param_bytes=float(param_bytes), shared_experts=0,
                   non_expert_params_per_layer=model.hidden_size * model.experts_per_layer)


@dataclass
class Calibration:
    """The miniature machine as measured: expert reads as the runtime issues them, and the 1-thread CPU expert FFN."""

    storage: PathMeasurement
    ffn: PathMeasurement
    non_expert_s: float
    """Mean time of a layer step's non-expert work (router, cache and buffer bookkeeping) on synthetic routing."""
    non_expert_spread: float
    """Its standard deviation over mean across probes."""
    expert_s: float
    """Mean time of one expert FFN as the runtime runs it (synthetic routing, every expert resident)."""
    expert_spread: float
    issue_s: float = 0.0
    """Mean time per read spent in the submitting call (io_submit and the iocb set-up) in the probe bursts."""
    issue_spread: float = 0.0
    first_arrival: float = 0.0
    """In the probe bursts of top_k reads: mean time until the first read is seen complete, over the time until
    the last. A serial wire gives about (latency + one read) / (latency + top_k reads), a shared one 1."""
    in_flight_expert_s: float = 0.0
    """Mean time of one expert FFN computed while its step's reads are in flight (the runtime's step code on
    synthetic routing over the stored experts, reads issued); 0: not measured."""
    fetched_expert_s: float = 0.0
    """Mean time of one expert FFN computed as its read lands (the same run), the step's last read's excepted;
    0: not measured."""
    last_fetched_expert_s: float = 0.0
    """Mean time of the FFN of a step's last read (the same run); 0: not measured."""

    def _slower_than_resident(self, seconds: float) -> float:
        """How much longer an expert FFN of `seconds` takes than the in-loop `expert_s` of a resident one (0 where
        not measured or not slower)."""
        return max(0.0, seconds / self.expert_s - 1.0) if seconds else 0.0

    @property
    def transfer_slowdown(self) -> float:
        """`gpu.transfer_slowdown`: an expert FFN with the step's reads in flight against one with none."""
        return self._slower_than_resident(self.in_flight_expert_s)

    @property
    def fetched_slowdown(self) -> float:
        """`gpu.fetched_slowdown`: an expert FFN computed as its read lands (not its step's last)."""
        return self._slower_than_resident(self.fetched_expert_s)

    @property
    def last_fetch_slowdown(self) -> float:
        """`gpu.last_fetch_slowdown`: the expert FFN of a step's last read."""
        return self._slower_than_resident(self.last_fetched_expert_s)

    def sharing(self, nbytes: int, top_k: int) -> tuple[str, float]:
        """The wire model nearer the measured first arrival, and a serial wire's (`storage_bench.nearer_wire`)."""
        return nearer_wire(self.storage.fit, nbytes, top_k, self.first_arrival)

    def kernel_overhead_s(self, nbytes: int) -> float:
        """The per-call overhead that makes the roofline's time for an expert of `nbytes` the in-loop `expert_s`
        (the slope stays the FFN fit's bandwidth)."""
        return max(0.0, self.expert_s - nbytes / self.ffn.fit.bandwidth_Bps)

    def non_expert_params(self, nbytes: int) -> int:
        """`non_expert_s` as the simulator's unit of non-expert work: the parameters whose roofline time (memory-bound,
        the per-call overhead included) it is at the measured FFN bandwidth."""
        net = self.non_expert_s - self.kernel_overhead_s(nbytes)
        return max(0, round(net * self.ffn.fit.bandwidth_Bps / PARAM_BYTES))


def pooled(path: str, method: str, probes: list[dict[int, list[float]]]) -> PathMeasurement:
    """One fitted measurement from the raw times of several probes of one path (all their repeats pooled per size)."""
    sizes = probes[0].keys()
    return PathMeasurement.from_samples(path, f"{method}; pooled over {len(probes)} probes",
                                        {s: [t for p in probes for t in p[s]] for s in sizes})


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """(mean, standard deviation over mean)."""
    mean = float(np.mean(values))
    return mean, float(np.std(values) / mean) if mean else 0.0


def averaged(measurements: list[PathMeasurement]) -> PathMeasurement:
    """The per-size mean of several fitted measurements of one path, refitted (its cv is their spread)."""
    first = measurements[0]
    samples = {size: [m.mean_s[i] for m in measurements] for i, size in enumerate(first.nbytes)}
    return PathMeasurement.from_samples(first.path, f"{first.method.split('; pooled')[0]}; averaged over {len(measurements)} runs", samples)


class MachineProbe:
    """Measures the miniature machine as the runtime uses it: bursts of 1..top_k reads of one layer's expert files
    submitted at once (`storage_bench.burst_samples`, the runtime's own read path and access pattern), and the
    1-thread CPU FFN at widths around the expert's (`cpu_bench.CpuFfnProbe`, the code `moe-calibrate` uses).

    Storage and CPU shared with other work drift by tens of percent within a minute, so the validation measures
    during each run (the runtime pauses its clock for it, `OffloadRuntime.run(pause=...)`) and simulates the run
    with those measurements pooled. Each probe takes ~0.1 s.
    """

    def __init__(self, store, files: list[list], settings: Settings, seed: int = 0,
                 stored: list[list[int]] | None = None):
        model = store.model
        self.store = store
        self.nbytes = model.bytes_per_expert
        self.settings = settings
        self.files = [group for group in files if len(group) >= model.top_k]
        self.bursts = sorted({1, 2, max(1, model.top_k // 2), model.top_k})
        self.reader = store.open_reader()
        self.rng = np.random.default_rng(seed)
        width = model.expert_intermediate_size
        self.ffn = store.ffn_probe(sorted({max(1, width // 2), width, 2 * width}))
        self.flops_tokens = 256
        self.flops, _ = store.flops(model.hidden_size, 2 * width, self.flops_tokens, 3)
        self.synthetic = synthetic_steps(model, tokens=4, seed=seed + 7)
        self.stored_steps = synthetic_steps(model, tokens=4, seed=seed + 11, stored=stored) if stored else []
        self.top_k = model.top_k
        self.taken: dict[str, list] = {"storage": [], "ffn": [], "non_expert": [], "expert": [], "issue": [], "first": [],
                                        "in_flight": [], "fetched": [], "last_fetched": []}

    def measure(self, runtime: OffloadRuntime, ffn: bool = True) -> None:
        """Take one probe of each path, reading into the runtime's free buffers as it does, and keep it (`take`).
        The expert and non-expert times come from one run of the runtime's own step code on synthetic routing with
        reads skipped (every expert computed as resident): the expert is the mean of its FFN calls, the non-expert
        work the rest of a step. (Timed with the experts skipped instead, the routers ran back to back with their
        weights cached: 55 us a step on the VM this was built on, where the runtime's own router and bookkeeping
        between expert FFNs took ~88 us a step on the shipped trace, and this probe gives ~120 us on its
        miss-heavy synthetic steps.)

        Each burst is issued right after what the runtime does before it issues a step's reads (`compute_before_issue`:
        the previous step's expert FFNs and this step's router), since the submitting call costs more after compute
        than in a loop of bursts (`storage_bench.burst_samples`). `ffn=False` leaves out the FFN pool probe (the one
        slow part, ~1.5 s where the last-level cache is large): its fit sets the profile's bandwidth and per-call
        overhead, which the in-loop expert time then pins (`Calibration.kernel_overhead_s`), so the simulated times do
        not depend on it; the run's first and last probes take it."""
        s = self.settings
        submits: list[tuple[int, float]] = []
        firsts: list[tuple[int, float, float]] = []
        with runtime.compute.threads():
            self.taken["storage"].append(burst_samples(self.reader, self.files, self.nbytes, runtime.ring, self.bursts,
                                                       s.storage_repeats, self.rng, submits, firsts,
                                                       before=lambda: self.compute_before_issue(runtime)))
        self.taken["issue"].append(sum(t for _, t in submits) / sum(k for k, _ in submits))
        self.taken["first"].extend(first / last for k, first, last in firsts if k == self.top_k)
        if ffn:
            self.taken["ffn"].append(self.ffn.samples(s.ffn_repeats))
            if self.stored_steps:  # with reads: the FFNs of resident experts computed while a step's reads are in flight
                calls, in_flight, fetched, last = [], [], [], []
                runtime.run(self.stored_steps, ffn_times=calls, in_flight_times=in_flight, fetched_times=fetched,
                            last_fetched_times=last)
                self.taken["in_flight"].extend(in_flight)
                self.taken["fetched"].extend(fetched)
                self.taken["last_fetched"].extend(last)
        steps = len(self.synthetic)
        calls: list[float] = []
        with_experts = runtime.run(self.synthetic, reads=False, ffn_times=calls).total_s / steps
        expert = float(np.mean(calls))
        self.taken["non_expert"].append(with_experts - len(calls) / steps * expert)
        self.taken["expert"].append(expert)

    def compute_before_issue(self, runtime: OffloadRuntime) -> None:
        """What the runtime's host thread runs before it submits a step's reads: top_k expert FFNs (over free buffers
        of the ring, as a step's missed experts are) and a router."""
        compute = runtime.compute
        buffers = [runtime.ring.take() for _ in range(self.top_k)]
        try:
            for buffer in buffers:
                compute.ffn(compute.views(buffer))
            compute.router(0)
        finally:
            for buffer in buffers:
                runtime.ring.give(buffer)

    def take(self) -> Calibration:
        """The probes taken since the last call, pooled and fitted."""
        s = self.settings
        cal = Calibration(
            pooled("expert reads", self.store.burst_method(self.files, self.bursts, s.storage_repeats), self.taken["storage"]),
            pooled("expert FFN", self.ffn.method(s.ffn_repeats), self.taken["ffn"]),
            *mean_and_spread(self.taken["non_expert"]),
            *mean_and_spread(self.taken["expert"]),
            *mean_and_spread(self.taken["issue"]),
            float(np.mean(self.taken["first"])),
            *(float(np.mean(self.taken[k])) if self.taken[k] else 0.0 for k in ("in_flight", "fetched", "last_fetched")),
        )
        self.taken = {k: [] for k in self.taken}
        return cal

    def close(self) -> None:
        self.reader.close()


def validation_document(cal: Calibration, nbytes: int, flops: float, flops_tokens: int, in_flight: int,
                        roles: dict) -> tuple[dict, list[str]]:
    """The calibration as a profile document (`document.profile_document`: the processor that computes the experts
    as the GPU, the slow tier's reads or copies as the link; `roles` names them, from the store), every number
    cited, and the comment lines that go above it."""
    cite = citation("moe-validate")
    storage, ffn = cal.storage, cal.ffn
    fit_ffn, fit_io = ffn.fit, storage.fit
    overhead_text = (f"{cite}, one expert FFN as the runtime runs it, {cal.expert_s * 1e6:.1f} us (the mean FFN call in its step "
                     f"code on synthetic routing, every expert resident), minus the weight bytes over the fitted bandwidth")
    ffn_text = f"{cite}, {ffn.method}; least-squares fit of latency + bytes/bandwidth, max fit error {fit_ffn.max_relative_error:.0%}"
    io_text = f"{cite}, {storage.method}; least-squares fit of latency + bytes/bandwidth, max fit error {fit_io.max_relative_error:.0%}"
    slowdown_text = (f"{cite}, one expert FFN computed while its step's reads are in flight (the runtime's step code on "
                     f"synthetic routing over the stored experts, at each run's ends), {cal.in_flight_expert_s * 1e6:.1f} us, "
                     f"against {cal.expert_s * 1e6:.1f} us with none in flight" if cal.in_flight_expert_s else
                     f"{cite}: not measured")
    fetched_text = (f"{cite}, one expert FFN computed as its read lands (the same runs; a step's last read excepted), "
                    f"{cal.fetched_expert_s * 1e6:.1f} us, against {cal.expert_s * 1e6:.1f} us for a resident one"
                    if cal.fetched_expert_s else f"{cite}: not measured")
    last_text = (f"{cite}, the FFN of a step's last read, the last buffer its burst filled (the same runs), "
                 f"{cal.last_fetched_expert_s * 1e6:.1f} us" if cal.last_fetched_expert_s else f"{cite}: not measured")
    flops_text = f"{cite}, one expert FFN on {flops_tokens} tokens ({ffn.method.split(' (')[0]}), best of 3"
    issue_text = (f"{cite}, time in the submitting call (iocb set-up and io_submit) of the same bursts, summed and "
                  f"divided by the reads submitted, {cal.issue_s * 1e6:.1f} us per read (spread over probes "
                  f"{cal.issue_spread:.0%}); the runtime's host thread spends it before computing a step's experts")
    sharing, serial_first = cal.sharing(nbytes, in_flight)
    sharing_text = (f"{cite}, the same bursts of {in_flight} reads, waited in submission order: the first was seen "
                    f"complete at {cal.first_arrival:.0%} of the burst's time (mean); a serial wire would give "
                    f"{serial_first:.0%} by the fit, a shared one 100%: {sharing} is nearer")
    link = {"bandwidth_Bps": fit_io.bandwidth_Bps, "latency_s": fit_io.latency_s, "copy_engines": in_flight,
            "issue_s": cal.issue_s, "sharing": sharing,
            "sources": {"bandwidth_Bps": io_text + " (inverse slope)", "latency_s": io_text + " (intercept)",
                        "copy_engines": "The runtime submits a layer step's reads (at most top_k) at once.",
                        "issue_s": issue_text, "sharing": sharing_text}}
    return profile_document(
        roles["profile_name"], roles["description"],
        gpu={"name": roles["gpu_name"], "memory_bytes": roles["memory_bytes"],
             "memory_bandwidth_Bps": fit_ffn.bandwidth_Bps, "flops": flops, "kernel_overhead_s": cal.kernel_overhead_s(nbytes),
             "transfer_slowdown": cal.transfer_slowdown, "fetched_slowdown": cal.fetched_slowdown,
             "last_fetch_slowdown": cal.last_fetch_slowdown,
             "sources": {"memory_bytes": f"{cite}, {roles['memory_text']}",
                         "memory_bandwidth_Bps": ffn_text + " (inverse slope)",
                         "flops": flops_text, "kernel_overhead_s": overhead_text, "transfer_slowdown": slowdown_text,
                         "fetched_slowdown": fetched_text, "last_fetch_slowdown": last_text}},
        h2d=link,
        d2h={**link, "sources": {k: "Unused by the validation (nothing goes back); a copy of h2d. " + v for k, v in link["sources"].items()}},
        cpu={"name": cpu_name(), "memory_bandwidth_Bps": fit_ffn.bandwidth_Bps, "flops": flops,
             "sources": {"memory_bandwidth_Bps": ffn_text + " (inverse slope)", "flops": flops_text}
             if roles["cpu_computes_experts"] else
             {k: "Unused by the validation (no expert runs on the CPU); the gpu section's. " + v
              for k, v in (("memory_bandwidth_Bps", ffn_text), ("flops", flops_text))}},
    )


def simulate(part: TracePart, model: MoEModel, hardware: HardwareProfile, capacity: int) -> Metrics:
    """The simulator's replay of the same rows: per-layer LRU, the calibrated profile, the scaled model."""
    cache = ExpertCache(LRUCache, capacity, "layer", model)
    return replay([part.chunk], cache, Timing(step_costs(model, hardware.gpu), hardware.h2d))


def _error(simulated: float, measured: float) -> float | None:
    return (simulated - measured) / measured if measured > 0 else None


RUNTIMES = ("cpu", "cuda", "torch-cpu")
"""cpu: the CPU machine (expert files, O_DIRECT AIO reads, numpy); cuda: the GPU machine (pinned host experts,
host-to-device copies, torch on the GPU); torch-cpu: the cuda runtime's code on the CPU, for tests (times mean nothing)."""


def make_store(runtime: str, base: MoEModel, needed_count: int, budget: int, store_root: Path, seed: int):
    """The slow tier of `runtime` for the trace's model scaled to `budget`; (store, scale)."""
    if runtime == "cpu":
        scale = choose_scale(base, needed_count, budget)
        model = scaled_model(base, scale)
        folder = store_root / f"{model.moe_layers}x{model.experts_per_layer}_h{model.hidden_size}_f{model.expert_intermediate_size}"
        return ExpertStore(folder, model, seed), scale
    from experiments.validation import torch_runtime

    device = torch_runtime.torch_device("cuda" if runtime == "cuda" else "cpu")
    size = torch_runtime.param_bytes(device)
    scale = choose_scale(base, needed_count, budget, size)
    return torch_runtime.HostExperts(scaled_model(base, scale, size), device, seed), scale


def run(traces: list[str], settings: Settings, store_root: Path, out_json: Path, seed: int = 0,
        runtime: str = "cpu") -> list[dict]:
    parts = [first_tokens(t, settings.tokens) for t in traces]
    shapes = {(p.model.moe_layers, p.model.experts_per_layer, p.model.hidden_size, p.model.expert_intermediate_size) for p in parts}
    if len(shapes) != 1:
        raise InputError(f"traces: give traces of one model shape (got {sorted(shapes)})")
    base = parts[0].model
    needed = {(s.layer, e) for p in parts for s in p.steps for e in s.experts}
    store, scale = make_store(runtime, base, len(needed), settings.disk_budget_bytes, store_root, seed)
    model = store.model
    where = "on disk" if runtime == "cpu" else "in host memory"
    print(f"moe-validate ({runtime}): {base.name}: expert FFN width {base.expert_intermediate_size} / {scale} = "
          f"{model.expert_intermediate_size}, {model.param_bytes:g}-byte weights: {model.bytes_per_expert / 1e6:.3f} MB per expert "
          f"(the {base.param_bytes:g}-byte original: {base.bytes_per_expert / 1e6:.2f} MB); {len(needed)} experts {where} "
          f"({len(needed) * padded(model.bytes_per_expert) / 1e9:.2f} GB); first {settings.tokens} tokens of each trace")
    with tqdm(total=len(needed), desc="experts", unit="expert", disable=None, leave=False) as bar:
        store.ensure(needed, bar.update)
    sources = store.sources()
    by_layer = [[sources[layer][e] for e in sorted(e for l, e in needed if l == layer)] for layer in range(model.moe_layers)]
    stored = [sorted(e for l, e in needed if l == layer) for layer in range(model.moe_layers)]
    probe = MachineProbe(store, by_layer, settings, seed, stored)
    # The run holds up to capacity × layers buffers, a probe inside it as many again (its synthetic run) plus top_k.
    ring = store.ring(2 * max(settings.capacities) * model.moe_layers + model.top_k + settings.spare_buffers)
    runtimes = {c: OffloadRuntime(store, c, ring, seed) for c in settings.capacities}
    cases = [(i, c) for i in range(len(parts)) for c in settings.capacities]
    runs: dict[tuple[int, int], list[tuple[RuntimeResult, Metrics, Calibration]]] = {case: [] for case in cases}
    every = settings.probe_every_tokens * model.moe_layers
    roles = store.roles()
    try:
        with tqdm(total=len(cases) * settings.repeats, desc="runtime", unit="run", disable=None, leave=False) as bar:
            for _ in range(settings.repeats):  # repeat-major: the machine's drift spreads over every case
                for i, c in cases:
                    offload = runtimes[c]
                    probe.measure(offload)
                    result = offload.run(parts[i].steps, pause=lambda: probe.measure(offload, ffn=False), pause_every=every)
                    probe.measure(offload)
                    cal = probe.take()
                    doc, _ = validation_document(cal, model.bytes_per_expert, probe.flops, probe.flops_tokens, model.top_k, roles)
                    simulated = replace(model, non_expert_params_per_layer=cal.non_expert_params(model.bytes_per_expert))
                    hardware = ProfileFile.model_validate(doc).to_profile()
                    runs[i, c].append((result, simulate(parts[i], simulated, hardware, c), cal))
                    bar.update()
    finally:
        probe.close()
    every_cal = [cal for case in cases for _, _, cal in runs[case]]
    overall = Calibration(averaged([c.storage for c in every_cal]), averaged([c.ffn for c in every_cal]),
                          *mean_and_spread([c.non_expert_s for c in every_cal]), *mean_and_spread([c.expert_s for c in every_cal]),
                          *mean_and_spread([c.issue_s for c in every_cal]), float(np.mean([c.first_arrival for c in every_cal])),
                          float(np.mean([c.in_flight_expert_s for c in every_cal])),
                          float(np.mean([c.fetched_expert_s for c in every_cal])),
                          float(np.mean([c.last_fetched_expert_s for c in every_cal])))
    doc, comments = validation_document(overall, model.bytes_per_expert, probe.flops, probe.flops_tokens, model.top_k, roles)
    write_profile(out_json.with_suffix(".profile.yaml"), doc,
                  [f"Written by moe-validate --runtime {runtime}: {roles['description']} Averaged over every run",
                   "(each run was simulated with the measurements taken during it).", *comments])
    print(calibration_line(overall, probe.flops))
    return [case_result(parts[i], c, runs[i, c], model, scale, runtime, store.read_method) for i, c in cases]


def calibration_line(cal: Calibration, flops: float) -> str:
    def fit(m: PathMeasurement, digits: int) -> str:
        return f"{m.fit.latency_s * 1e6:.1f} us + bytes / {m.fit.bandwidth_Bps / 1e9:.{digits}f} GB/s (spread of run means up to {max(m.cv):.0%})"
    return (f"calibration, mean over the runs: expert reads/copies in bursts {fit(cal.storage, 3)}; "
            f"expert FFN {fit(cal.ffn, 2)}; {flops / 1e9:.1f} GFLOP/s at 256 tokens; in the runtime's loop: an expert "
            f"{cal.expert_s * 1e6:.1f} us (spread of run means {cal.expert_spread:.0%}), non-expert work {cal.non_expert_s * 1e6:.1f} us "
            f"per layer step (spread {cal.non_expert_spread:.0%}); issuing a read {cal.issue_s * 1e6:.1f} us (spread {cal.issue_spread:.0%}); "
            f"first read of a burst seen complete at {cal.first_arrival:.0%} of the burst; an expert with the step's reads in "
            f"flight {cal.in_flight_expert_s * 1e6:.1f} us (transfer_slowdown {cal.transfer_slowdown:.3f}); an expert computed as "
            f"its read lands {cal.fetched_expert_s * 1e6:.1f} us (fetched_slowdown {cal.fetched_slowdown:.3f}), the step's "
            f"last read's {cal.last_fetched_expert_s * 1e6:.1f} us (last_fetch_slowdown {cal.last_fetch_slowdown:.3f})")


def case_result(part: TracePart, capacity: int, runs: list, model: MoEModel, scale: int, runtime: str, read_method: str) -> dict:
    """One case's JSON record: means over the repeats (each run simulated with its adjacent calibration)."""
    def stats(values) -> tuple[float, float]:
        a = np.array(values, dtype=float)
        return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0

    m_total, m_total_sd = stats([r.total_s for r, _, _ in runs])
    m_stall, m_stall_sd = stats([r.stall_s for r, _, _ in runs])
    s_total, s_total_sd = stats([s.total_time_s for _, s, _ in runs])
    s_stall, s_stall_sd = stats([s.stall_time_s for _, s, _ in runs])
    first_run, first_sim, _ = runs[0]
    cals = [c for _, _, c in runs]
    return {
        "case": f"{part.name} lru capacity={capacity}/layer tokens={part.tokens}",
        "measured_total_s": m_total,
        "simulated_total_s": s_total,
        "measured_stall_s": m_stall,
        "simulated_stall_s": s_stall,
        "error_total": _error(s_total, m_total),
        "error_stall": _error(s_stall, m_stall),
        "measured_total_std_s": m_total_sd,
        "measured_stall_std_s": m_stall_sd,
        "simulated_total_std_s": s_total_sd,
        "simulated_stall_std_s": s_stall_sd,
        "measured_totals_s": [r.total_s for r, _, _ in runs],
        "measured_stalls_s": [r.stall_s for r, _, _ in runs],
        "simulated_totals_s": [s.total_time_s for _, s, _ in runs],
        "simulated_stalls_s": [s.stall_time_s for _, s, _ in runs],
        "repeats": len(runs),
        "measured_hits": first_run.hits,
        "simulated_hits": first_sim.hits,
        "accesses": first_sim.accesses,
        "loads": first_run.loads,
        "storage_latency_s": [c.storage.fit.latency_s for c in cals],
        "storage_bandwidth_Bps": [c.storage.fit.bandwidth_Bps for c in cals],
        "ffn_overhead_s": [c.ffn.fit.latency_s for c in cals],
        "ffn_bandwidth_Bps": [c.ffn.fit.bandwidth_Bps for c in cals],
        "non_expert_step_s": [c.non_expert_s for c in cals],
        "non_expert_params_per_layer": [c.non_expert_params(model.bytes_per_expert) for c in cals],
        "expert_in_loop_s": [c.expert_s for c in cals],
        "first_arrival_fraction": [c.first_arrival for c in cals],
        "link_sharing": [c.sharing(model.bytes_per_expert, model.top_k)[0] for c in cals],
        "kernel_overhead_s": [c.kernel_overhead_s(model.bytes_per_expert) for c in cals],
        "trace": part.name,
        "capacity": capacity,
        "tokens": part.tokens,
        "layer_steps": len(part.steps),
        "scale": scale,
        "model": model.to_dict(),
        "runtime": runtime,
        "read_method": read_method,
    }


def table(results: list[dict]) -> str:
    head = (f"{'case':<58} {'hit':>6} {'total meas (s)':>17} {'sim':>8} {'err':>7} "
            f"{'stall meas (s)':>17} {'sim':>8} {'err':>7}")
    lines = [head]
    for r in results:
        e_t = f"{r['error_total']:+.1%}" if r["error_total"] is not None else "n/a"
        e_s = f"{r['error_stall']:+.1%}" if r["error_stall"] is not None else "n/a"
        lines.append(
            f"{r['case']:<58} {r['simulated_hits'] / r['accesses']:>6.3f} "
            f"{r['measured_total_s']:>8.3f} ±{r['measured_total_std_s']:<7.3f} {r['simulated_total_s']:>8.3f} {e_t:>7} "
            f"{r['measured_stall_s']:>8.3f} ±{r['measured_stall_std_s']:<7.3f} {r['simulated_stall_s']:>8.3f} {e_s:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moe-validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="write the cases here (a JSON list)")
    parser.add_argument("--quick", action="store_true", help="a tiny case: 2 tokens, capacity 8, one run")
    parser.add_argument("--trace", action="append", help="trace(s) to run, one model shape (default: the shipped synthetic trace)")
    parser.add_argument("--tokens", type=int, help="first N tokens of each trace (default 64; quick 2)")
    parser.add_argument("--capacity", type=int, action="append", help="experts per layer in DRAM (default 8, 16, 32)")
    parser.add_argument("--repeats", type=int, help="runtime runs per case (default 3; quick 1)")
    parser.add_argument("--disk-budget", type=int, help="bytes the slow tier may take: expert files, or pinned host memory "
                                                          "with --runtime cuda (default 2 GiB; quick 256 MiB)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="cpu",
                        help="cpu: expert files read into DRAM, numpy on the CPU (default); cuda: pinned host experts "
                             "copied to the GPU, torch on the GPU; torch-cpu: the cuda code on the CPU (tests only)")
    parser.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "moe-validate-store"),
                        help="folder for the expert files (the slow tier); kept and reused across runs")
    args = parser.parse_args(argv)
    settings = Settings.of(args.quick, args.tokens, args.capacity, args.repeats, args.disk_budget)
    out = Path(args.json)
    try:
        results = run(args.trace or [DEFAULT_TRACE], settings, Path(args.store), out, runtime=args.runtime)
    except (InputError, MeasurementError) as err:
        print(f"moe-validate: {err}", file=sys.stderr)
        sys.exit(2)
    atomic_write_bytes(out, json.dumps(results, indent=1).encode())
    print(table(results))
    print(f"wrote {out} ({platform.node()}, {len(results)} cases)")


if __name__ == "__main__":
    main()
