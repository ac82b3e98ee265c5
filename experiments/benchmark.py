"""How many expert accesses per second the replay simulates, next to a naive SimPy model and libCacheSim.

Why: ARCHITECTURE.md ("Event economy") designs the replay so that a hit creates no event and a layer step yields at
most one timeout. This script measures what that buys, in one run on one seeded synthetic trace:

  replay timed / hit-rate only, per-layer and global LRU   the four code paths of `simulator.replay`
  naive SimPy                                              a process per access, a Resource request per transfer
  libCacheSim LRU                                          a C cache simulator on the same key stream
  batched serving, layer LRU, batch 1 / 8 / 32             `simulator.serving.serve` (FCFS, continuous batching,
                                                           offline arrivals), timed and hit-rate only, per-layer
                                                           LRU, compiled steps beside the Python/SimPy ones

It only measures and prints (no assertions on speed). Usage:
    python -m experiments.benchmark [--accesses N] [--naive-accesses N] [--repeats R] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import simpy

from policies.placements import CPUExperts, DynamicSplit, StaticLayers
from policies.registry import policy_class
from policies.schedulers import FCFSScheduler
from simulator.cache import ExpertCache
from simulator.compute import batch_costs, miss_costs, step_costs
from simulator.hardware import CPUSpec, GPUSpec, HardwareProfile, LinkSpec
from simulator.metrics import Metrics
from simulator.presets import get_preset
from simulator.replay import Timing, replay
from simulator.requests import requests_from_tokens
from simulator.scheduler import ServeLimits
from simulator.serving import serve
from simulator.stack_distance import HitCurve, hit_curve
from simulator.trace_rows import tokens
from traces.format import TraceChunk

MODEL = get_preset("deepseek-v2-lite")
# H100 SXM datasheet numbers (as in hardware_profiles/h100_pcie5.yaml), written here so that the benchmark depends on
# no profile file; the speed of the replay does not depend on them.
GPU = GPUSpec("h100-sxm", 80 * 2**30, memory_bandwidth_Bps=3.35e12, flops=989e12, kernel_overhead_s=15e-6)
H2D = LinkSpec(bandwidth_Bps=25e9, latency_s=15e-6)
TIMING = Timing(step_costs(MODEL, GPU), H2D)
# The batched replay's costs (functions of a step's tokens) on the same GPU and link; the CPU (a desktop's 100 GB/s,
# 1 TFLOP/s) computes the experts the placement rows put there.
HARDWARE = HardwareProfile("benchmark", GPU, H2D, H2D, CPUSpec("desktop", 1e11, 1e12))
SERVE_TIMING = Timing(TIMING.costs, H2D, batch_costs(MODEL, HARDWARE))
SERVE_BATCHES = (1, 8, 32)
SERVE_MAX_BATCHED_TOKENS = 2048
LAYER_CAPACITY = 16
GLOBAL_CAPACITY = LAYER_CAPACITY * MODEL.moe_layers
CHUNK_ROWS = 1 << 16
TOKENS_PER_SEQUENCE = 256


def synthetic_trace(accesses: int, seed: int = 0, zipf_s: float = 1.0) -> TraceChunk:
    """At least `accesses` accesses of whole tokens, DeepSeek-V2-Lite shaped, as one TraceChunk (rows in order).

    Each layer has its own Zipf(`zipf_s`) popularity over a shuffled expert order; a layer step draws top_k distinct
    experts from it (Gumbel top-k), in descending score as a router would list them. No temporal correlation.
    """
    layers, experts, k = MODEL.moe_layers, MODEL.experts_per_layer, MODEL.top_k
    rng = np.random.default_rng(seed)
    tokens = math.ceil(accesses / (layers * k))
    rows = tokens * layers
    popularity = 1.0 / np.arange(1, experts + 1) ** zipf_s
    log_p = np.log(np.stack([rng.permutation(popularity / popularity.sum()) for _ in range(layers)]))
    layer = np.tile(np.arange(layers, dtype=np.int16), tokens)
    routed = np.empty((rows, k), dtype=np.int16)
    for lo in range(0, rows, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, rows)
        scores = log_p[layer[lo:hi]] + rng.gumbel(size=(hi - lo, experts))
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        routed[lo:hi] = np.take_along_axis(top, order, axis=1)
    token_index = np.arange(rows) // layers
    return TraceChunk(
        sequence=(token_index // TOKENS_PER_SEQUENCE).astype(np.int32),
        token=(token_index % TOKENS_PER_SEQUENCE).astype(np.int32),
        layer=layer,
        experts=routed,
    )


def head(trace: TraceChunk, accesses: int) -> TraceChunk:
    """The rows that hold the first `accesses` accesses (rounded up to a whole layer step)."""
    rows = math.ceil(accesses / MODEL.top_k)
    return TraceChunk(trace.sequence[:rows], trace.token[:rows], trace.layer[:rows], trace.experts[:rows])


def chunks(trace: TraceChunk) -> Iterator[TraceChunk]:
    """The trace as the replay gets it from a file: views of CHUNK_ROWS rows."""
    for lo in range(0, len(trace), CHUNK_ROWS):
        hi = lo + CHUNK_ROWS
        yield TraceChunk(trace.sequence[lo:hi], trace.token[lo:hi], trace.layer[lo:hi], trace.experts[lo:hi])


def run_replay(trace: TraceChunk, scope: str, timed: bool, compiled: bool = True) -> Metrics:
    """Our replay with LRU: per-layer at LAYER_CAPACITY or global at GLOBAL_CAPACITY slots; through LRU's compiled
    twin, or through the Python class (`compiled=False`)."""
    capacity = LAYER_CAPACITY if scope == "layer" else GLOBAL_CAPACITY
    return run_replay_at(trace, scope, capacity, timed, compiled)


def run_replay_at(trace: TraceChunk, scope: str, capacity: int, timed: bool = False, compiled: bool = True) -> Metrics:
    cache = ExpertCache(policy_class("lru"), capacity, scope, MODEL)
    return replay(chunks(trace), cache, TIMING if timed else None, compiled=compiled)


def run_curve(trace: TraceChunk, scope: str) -> HitCurve:
    """LRU's exact hits at every size in one pass (simulator.stack_distance), read from chunks as the replay is."""
    return hit_curve(chunks(trace), MODEL, scope, "lru")


def curve_hits(curve: HitCurve, capacity: int) -> int:
    return int(curve.hits[:, capacity].sum())


PLACEMENTS = {"static-layers 8": lambda: StaticLayers(cpu_layers=8), "cpu-experts": CPUExperts,
              "dynamic-split": DynamicSplit}
"""The placements timed beside the plain cache (the CPU of HARDWARE computes what they place there)."""


def run_placed(trace: TraceChunk, placement: str) -> Metrics:
    """The timed per-layer LRU replay with a placement (policies.placements): experts on the CPU, by layer or per step."""
    cache = ExpertCache(policy_class("lru"), LAYER_CAPACITY, "layer", MODEL)
    return replay(chunks(trace), cache, TIMING, miss_costs=miss_costs(MODEL, HARDWARE), placement=PLACEMENTS[placement]())


def run_serve(trace: TraceChunk, max_batch: int, compiled: bool = True) -> Metrics:
    """The batched timed replay (`simulator.serving.serve`): every sequence a request arriving at t=0, FCFS,
    continuous batching of up to `max_batch` requests, per-layer LRU at LAYER_CAPACITY slots, its steps judged by
    LRU's compiled twin and timed by the compiled clock, or by the Python class and SimPy (`compiled=False`).
    Grouping the rows into tokens and requests is part of the run (as reading chunks is part of `run_replay`)."""
    cache = ExpertCache(policy_class("lru"), LAYER_CAPACITY, "layer", MODEL)
    requests = requests_from_tokens(tokens(chunks(trace)))
    return serve(requests, cache, SERVE_TIMING, scheduler=FCFSScheduler(),
                 limits=ServeLimits(max_batch, SERVE_MAX_BATCHED_TOKENS), compiled=compiled)


def run_serve_hit_rate(trace: TraceChunk, max_batch: int, compiled: bool) -> Metrics:
    """`run_serve` without the clock: the batched hit-rate-only replay, its steps judged by LRU's compiled twin or
    by the Python class (`compiled=False`)."""
    cache = ExpertCache(policy_class("lru"), LAYER_CAPACITY, "layer", MODEL)
    requests = requests_from_tokens(tokens(chunks(trace)))
    return serve(requests, cache, None, scheduler=FCFSScheduler(),
                 limits=ServeLimits(max_batch, SERVE_MAX_BATCHED_TOKENS), compiled=compiled)


SWEEP_CAPACITIES = (6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64)
"""The capacity sweep's sizes (experiments/conf/sweep/capacity_vs_policy.yaml)."""


def run_capacity_replays(trace: TraceChunk) -> list[int]:
    """The capacity sweep's LRU figures as one compiled hit-rate-only replay per size: hits per size."""
    return [run_replay_at(trace, "layer", capacity).hits for capacity in SWEEP_CAPACITIES]


def run_capacity_curve(trace: TraceChunk) -> list[int]:
    """The same figures from one one-pass curve, as a sweep's jobs read them (`replay.curves`)."""
    curve = run_curve(trace, "layer")
    return [curve_hits(curve, capacity) for capacity in SWEEP_CAPACITIES]


@dataclass
class NaiveResult:
    accesses: int
    hits: int
    total_time_s: float


def run_naive_simpy(trace: TraceChunk) -> NaiveResult:
    """The model ARCHITECTURE.md warns against: one SimPy process per access, a simpy.Resource request per transfer.

    Its accounting is the timed replay's (per-layer OrderedDict LRU that never evicts an expert of the current step;
    misses cross the link in router order; the GPU computes the hits, then each miss as it arrives), so its hits
    and simulated time must equal the replay's: only the event machinery differs.
    """
    env = simpy.Environment()
    link = simpy.Resource(env, capacity=1)
    costs = TIMING.costs
    transfer_s = H2D.latency_s + MODEL.bytes_per_expert / H2D.bandwidth_Bps
    lrus = [OrderedDict() for _ in range(MODEL.moe_layers)]
    gpu_free = 0.0
    hits = accesses = 0

    def access(missed: bool):
        nonlocal gpu_free
        if missed:
            with link.request() as request:
                yield request
                yield env.timeout(transfer_s)
        gpu_free = max(env.now, gpu_free) + costs.expert_s  # the GPU computes one expert at a time
        yield env.timeout(gpu_free - env.now)

    def layer_steps():
        nonlocal hits, accesses
        for layer, experts in zip(trace.layer.tolist(), trace.experts.tolist()):
            yield env.timeout(costs.non_expert_s)
            lru = lrus[layer]
            processes = []
            for expert in experts:
                missed = expert not in lru
                if missed:
                    if len(lru) >= LAYER_CAPACITY:
                        del lru[next(e for e in lru if e not in experts)]
                    lru[expert] = None
                else:
                    lru.move_to_end(expert)
                    hits += 1
                processes.append(env.process(access(missed)))
            accesses += len(experts)
            yield env.all_of(processes)

    env.process(layer_steps())
    env.run()
    return NaiveResult(accesses, hits, env.now)


ORACLE_GENERAL = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")])


def write_oracle_general(trace: TraceChunk, path: str) -> None:
    """libCacheSim's oracleGeneral binary trace of the keys layer·experts_per_layer + expert, one request per access.

    time is the layer-step index; next_access_vtime is the request index of the key's next access, -1 if none.
    """
    keys = (trace.layer.astype(np.int64)[:, None] * MODEL.experts_per_layer + trace.experts).ravel()
    n = len(keys)
    following = np.full(n, -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    following[order[:-1][same]] = order[1:][same]
    records = np.empty(n, dtype=ORACLE_GENERAL)
    records["time"] = np.arange(n) // MODEL.top_k
    records["obj_id"] = keys
    records["obj_size"] = 1
    records["next_access_vtime"] = following
    records.tofile(path)


def run_libcachesim_lru(path: str, capacity: int = GLOBAL_CAPACITY) -> tuple[int, int]:
    """(requests, hits) of libCacheSim's LRU over an oracleGeneral file; size-1 objects, so capacity is in slots.

    libCacheSim has one cache over all keys, so this compares with our global scope. Its LRU may evict a key of the
    current layer step that is still to come in router order; ours protects it, so hit counts can differ slightly.
    """
    import libcachesim as lcs

    reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    # A hash table sized for the key space, as our dicts are: the default 2^24 buckets take ~30 ms to set up.
    hashpower = MODEL.total_experts.bit_length() + 1
    miss_ratio, _ = lcs.LRU(capacity, hashpower=hashpower).process_trace(reader)
    requests = reader.get_num_of_req()
    return requests, round(requests * (1.0 - miss_ratio))


LARGE_PIECE_ACCESSES = 10_000_000
"""The large-trace check writes one synthetic piece of this many accesses again and again (sequence ids moved on)."""

STREAMED_REPLAY = r"""
import json, resource, sys, time
from policies.registry import policy_class
from simulator.cache import ExpertCache
from simulator.replay import replay
from traces.format import TraceFile
trace = TraceFile(sys.argv[1])
cache = ExpertCache(policy_class("lru"), int(sys.argv[2]), sys.argv[3], trace.meta.model)
start = time.perf_counter()
metrics = replay(trace.chunks(batch_rows=1 << 16), cache, None)
wall = time.perf_counter() - start
print(json.dumps({"accesses": metrics.accesses, "hits": metrics.hits, "wall_s": wall,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_large_trace(path: str, accesses: int, seed: int) -> int:
    """A Parquet trace of at least `accesses` accesses for the streamed replay; returns its accesses."""
    from traces.format import TraceMeta, TraceWriter

    piece = synthetic_trace(min(accesses, LARGE_PIECE_ACCESSES), seed)
    sequences = int(piece.sequence[-1]) + 1
    written = 0
    meta = TraceMeta(MODEL, list(range(MODEL.moe_layers)), {"source": "experiments.benchmark synthetic, repeated"})
    with TraceWriter(path, meta) as writer:
        repeat = 0
        while written < accesses:
            writer.write(TraceChunk(piece.sequence + repeat * sequences, piece.token, piece.layer, piece.experts))
            written += piece.experts.size
            repeat += 1
    return written


def run_streamed(path: str, scope: str) -> dict:
    """The hit-rate-only replay of a trace file in a fresh process, chunk by chunk: its wall time and peak RSS."""
    import subprocess
    import sys

    capacity = LAYER_CAPACITY if scope == "layer" else GLOBAL_CAPACITY
    done = subprocess.run([sys.executable, "-c", STREAMED_REPLAY, path, str(capacity), scope],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@dataclass
class Row:
    case: str
    accesses: int
    runs: int
    wall_s: float
    """Best of `runs`."""
    accesses_per_s: float
    traced_peak_mib: float
    """tracemalloc peak of one extra, untimed run: Python allocations live at once, the trace itself excluded."""
    hit_rate: float
    note: str = ""


def measure(
    case: str, fn: Callable[[], object], accesses: int, hits: Callable[[object], int], runs: int, note: str = ""
) -> tuple[Row, object]:
    """Time `fn` best of `runs` with perf_counter, then once more under tracemalloc (slow, so never timed)."""
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row = Row(case, accesses, runs, best, accesses / best, peak / 2**20, hits(result) / accesses, note)
    return row, result


def hits_of(result: Metrics | NaiveResult) -> int:
    return result.hits


def run_sweep(tmp: str) -> float:
    """Wall time of the README's 126-job hit-rate-only capacity sweep, as a user runs it (a fresh process)."""
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from experiments.app import main; main()", "-m", "+sweep=capacity_vs_policy",
                    "replay.timed=false", f"hydra.sweep.dir={tmp}/sweep"], capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def benchmark(accesses: int, naive_accesses: int, runs: int, seed: int, log=print, large_accesses: int = 0,
              sweep: bool = False) -> dict:
    """Run every case on one trace; returns rows, the like-for-like checks and the setting, for the table and JSON."""
    trace = synthetic_trace(accesses, seed)
    n = int((trace.experts >= 0).sum())
    log(f"trace: {n:,} accesses ({len(trace):,} layer steps, {MODEL.name} shape, Zipf 1.0 per layer, seed {seed})")
    rows, checks, replay_hits = [], {}, {}
    run_replay(head(trace, 10_000), "layer", True)  # numba loads (or, on a fresh machine, compiles) the loops once
    for scope in ("layer", "global"):
        capacity = LAYER_CAPACITY if scope == "layer" else GLOBAL_CAPACITY
        for timed in (True, False):
            for compiled in (True, False):
                name = f"replay {'timed' if timed else 'hit-rate only'}, {scope} LRU {capacity}, {'compiled' if compiled else 'python'}"
                run = functools.partial(run_replay, trace, scope, timed, compiled)
                row, metrics = measure(name, run, n, hits_of, runs)
                rows.append(row)
                log(f"  {name}: {row.wall_s:.2f} s")
                if (scope, timed) in replay_hits and replay_hits[scope, timed] != metrics.hits:
                    raise AssertionError(f"{name}: the compiled and Python replays disagree")
                replay_hits[scope, timed] = metrics.hits

    for scope in ("layer", "global"):
        name = f"one-pass LRU curve, {scope}, every size"
        capacity = LAYER_CAPACITY if scope == "layer" else GLOBAL_CAPACITY
        row, curve = measure(name, functools.partial(run_curve, trace, scope), n,
                             functools.partial(curve_hits, capacity=capacity), runs)
        row.note = f"{len(curve.capacities)} sizes ({curve.capacities[0]}..{curve.capacities[-1]})"
        rows.append(row)
        log(f"  {name}: {row.wall_s:.2f} s")
        if curve_hits(curve, capacity) != replay_hits[scope, False]:
            raise AssertionError(f"{name}: the curve disagrees with the replay at {capacity} slots")

    name = f"{len(SWEEP_CAPACITIES)} capacities, a compiled replay each"
    row, per_size = measure(name, functools.partial(run_capacity_replays, trace), n * len(SWEEP_CAPACITIES), sum,
                            runs, "layer LRU, hit-rate only")
    rows.append(row)
    log(f"  {name}: {row.wall_s:.2f} s")
    name = f"{len(SWEEP_CAPACITIES)} capacities, one curve"
    row, from_curve = measure(name, functools.partial(run_capacity_curve, trace), n * len(SWEEP_CAPACITIES), sum,
                              runs, "what a sweep's jobs read (replay.curves)")
    rows.append(row)
    log(f"  {name}: {row.wall_s:.2f} s")
    if from_curve != per_size:
        raise AssertionError("the curve disagrees with the per-size replays")

    for placement in PLACEMENTS:
        name = f"replay timed, layer LRU {LAYER_CAPACITY}, placement {placement}"
        row, _ = measure(name, functools.partial(run_placed, trace, placement), n, hits_of, runs)
        rows.append(row)
        log(f"  {name}: {row.wall_s:.2f} s")

    sequences = int(trace.sequence[-1]) + 1
    checks["serve"] = {}
    for batch in SERVE_BATCHES:
        note = f"FCFS, {sequences} request{'s' if sequences > 1 else ''} at t=0" + (f": batches stop at {sequences}" if batch > sequences else "")
        figures = set()
        for compiled in (True, False):
            name = f"serve timed, layer LRU {LAYER_CAPACITY}, batch {batch}, {'compiled' if compiled else 'python'}"
            row, metrics = measure(name, functools.partial(run_serve, trace, batch, compiled), n, hits_of, runs, note)
            rows.append(row)
            log(f"  {name}: {row.wall_s:.2f} s")
            figures.add((metrics.hits, metrics.total_time_s, metrics.stall_time_s))
        if len(figures) != 1:
            raise AssertionError(f"serve timed batch {batch}: the compiled and Python steps disagree: {figures}")
        checks["serve"][batch] = {
            "accesses": metrics.accesses,
            "hits": metrics.hits,
            "iterations": len(metrics.iterations),
            "mean_batch_requests": sum(it[2] for it in metrics.iterations) / len(metrics.iterations),
            "simulated_time_s": metrics.total_time_s,
        }
    for batch in SERVE_BATCHES:
        hits = set()
        for compiled in (True, False):
            name = f"serve hit-rate only, layer LRU {LAYER_CAPACITY}, batch {batch}, {'compiled' if compiled else 'python'}"
            row, metrics = measure(name, functools.partial(run_serve_hit_rate, trace, batch, compiled), n, hits_of, runs)
            rows.append(row)
            log(f"  {name}: {row.wall_s:.2f} s")
            hits.add(metrics.hits)
        if len(hits) != 1:
            raise AssertionError(f"serve batch {batch}: the compiled and Python steps disagree")
    if 1 in checks["serve"]:
        one = checks["serve"][1]
        checks["serve_batch1_vs_replay"] = {"serve_hits": one["hits"], "replay_hits": replay_hits["layer", True],
                                            "hits_equal": one["hits"] == replay_hits["layer", True]}

    prefix = head(trace, naive_accesses)
    reference = run_replay(prefix, "layer", timed=True)
    name = f"naive SimPy, layer LRU {LAYER_CAPACITY} (prefix)"
    note = f"first {reference.accesses:,} accesses"
    row, naive = measure(name, functools.partial(run_naive_simpy, prefix), reference.accesses, hits_of, 1, note)
    rows.append(row)
    checks["naive_vs_replay"] = {
        "accesses": naive.accesses,
        "naive_hits": naive.hits,
        "replay_hits": reference.hits,
        "hits_equal": naive.hits == reference.hits,
        "naive_time_s": naive.total_time_s,
        "replay_time_s": reference.total_time_s,
        "time_equal": math.isclose(naive.total_time_s, reference.total_time_s, rel_tol=1e-9),
    }
    log(f"  naive SimPy: {row.wall_s:.2f} s")

    try:
        import libcachesim  # noqa: F401
    except ImportError as err:
        checks["libcachesim"] = {"skipped": f"libcachesim not importable ({err})"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "keys.oracleGeneral.bin")
            start = time.perf_counter()
            write_oracle_general(trace, path)
            write_s = time.perf_counter() - start
            name = f"libCacheSim LRU {GLOBAL_CAPACITY} (global)"
            lru = functools.partial(run_libcachesim_lru, path)
            note = f"C heap not traced; +{write_s:.2f} s to write the file"
            row, (requests, hits) = measure(name, lru, n, lambda r: r[1], runs, note)
        rows.append(row)
        checks["libcachesim"] = {
            "requests": requests,
            "libcachesim_hits": hits,
            "replay_global_hits": replay_hits["global", False],
            "libcachesim_hit_rate": hits / requests,
            "replay_global_hit_rate": replay_hits["global", False] / n,
        }
    if large_accesses:
        with tempfile.TemporaryDirectory() as tmp:
            checks["streamed"] = []
            for size in sorted({min(large_accesses, LARGE_PIECE_ACCESSES), large_accesses}):
                path = os.path.join(tmp, f"large_{size}.parquet")
                written = write_large_trace(path, size, seed)
                for scope in ("layer", "global"):
                    result = run_streamed(path, scope)
                    checks["streamed"].append({"scope": scope, **result})
                    name = f"streamed from Parquet, hit-rate only, {scope} LRU"
                    rows.append(Row(name, result["accesses"], 1, result["wall_s"], result["accesses"] / result["wall_s"],
                                    math.nan, result["hits"] / result["accesses"],
                                    f"fresh process, peak RSS {result['peak_rss_mib']:.0f} MiB"))
                    log(f"  {name}, {written:,} accesses: {result['wall_s']:.2f} s, RSS {result['peak_rss_mib']:.0f} MiB")
    if sweep:
        with tempfile.TemporaryDirectory() as tmp:
            checks["sweep_126_jobs_s"] = run_sweep(tmp)
        log(f"  126-job capacity sweep: {checks['sweep_126_jobs_s']:.1f} s")
    return {
        "rows": [asdict(r) for r in rows],
        "checks": checks,
        "setting": {
            "accesses": n,
            "seed": seed,
            "model": MODEL.name,
            "gpu": asdict(GPU),
            "h2d": asdict(H2D),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    }


def goal_lines(result: dict) -> list[str]:
    """Each speed goal's figure from this run's rows, beside the goal (a goal this run did not measure is said so)."""
    rate = {r["case"]: r["accesses_per_s"] for r in result["rows"]}
    wall = {r["case"]: r["wall_s"] for r in result["rows"]}
    lcs = rate.get(f"libCacheSim LRU {GLOBAL_CAPACITY} (global)")
    lines = []
    for scope, capacity in (("layer", LAYER_CAPACITY), ("global", GLOBAL_CAPACITY)):
        ours = rate[f"replay hit-rate only, {scope} LRU {capacity}, compiled"]
        versus = f"{ours / lcs:.2f}x libCacheSim's LRU" if lcs else "libCacheSim not run"
        lines.append(f"  hit-rate only, {scope}: {ours / 1e6:.1f}M accesses/s = {versus} (goal >= 1.0x)")
    timed = rate[f"replay timed, layer LRU {LAYER_CAPACITY}, compiled"]
    lines.append(f"  timed, batch 1: {timed / 1e6:.1f}M accesses/s (goal >= 2M)")
    served = {b: rate.get(f"serve timed, layer LRU {LAYER_CAPACITY}, batch {b}, compiled") for b in (1, 8)}
    if served[8]:
        lines.append(f"  timed, batch 8 (serve): {served[8] / 1e6:.2f}M accesses/s against {served[1] / 1e6:.2f}M at batch 1 "
                     f"of the same batched replay and {timed / 1e6:.1f}M of the compiled batch-1 replay (goal: higher "
                     f"than batch 1)")
    hit_served = {b: rate.get(f"serve hit-rate only, layer LRU {LAYER_CAPACITY}, batch {b}, compiled") for b in (1, 8)}
    if hit_served[8]:
        lines.append(f"  hit-rate only, batch 8 (serve, compiled steps): {hit_served[8] / 1e6:.2f}M accesses/s against "
                     f"{hit_served[1] / 1e6:.2f}M at batch 1 of the same batched replay")
    for scope, capacity in (("layer", LAYER_CAPACITY), ("global", GLOBAL_CAPACITY)):
        ratio = wall[f"one-pass LRU curve, {scope}, every size"] / wall[f"replay hit-rate only, {scope} LRU {capacity}, compiled"]
        lines.append(f"  one-pass curve, {scope}: {ratio:.1f}x the time of one hit-rate-only replay (goal <= 2x)")
    sizes = len(SWEEP_CAPACITIES)
    replays, curve = wall[f"{sizes} capacities, a compiled replay each"], wall[f"{sizes} capacities, one curve"]
    lines.append(f"  {sizes} capacities from one curve: {curve:.3f} s against {replays:.3f} s for a replay each "
                 f"({replays / curve:.1f}x)")
    streamed = result["checks"].get("streamed")
    if streamed:
        layer = [s for s in streamed if s["scope"] == "layer"]
        small, large = layer[0], layer[-1]
        slope = ((large["peak_rss_mib"] - small["peak_rss_mib"]) * 2**20 / (large["accesses"] - small["accesses"])
                 if large["accesses"] > small["accesses"] else math.nan)
        at_1b = large["peak_rss_mib"] + slope * (1e9 - large["accesses"]) / 2**20
        lines.append(f"  streamed replay: peak RSS {small['peak_rss_mib']:.0f} MiB at {small['accesses']:,} accesses, "
                     f"{large['peak_rss_mib']:.0f} MiB at {large['accesses']:,} ({slope:.3g} bytes per access more), "
                     f"so about {at_1b:.0f} MiB at 1B (goal < 2 GB)")
    else:
        lines.append("  streamed replay: not run (--large-accesses 0)")
    sweep = result["checks"].get("sweep_126_jobs_s")
    lines.append(f"  126-job capacity sweep, hit-rate only: {sweep:.1f} s (goal <= 15 s)" if sweep else
                 "  126-job capacity sweep: not run (--no-sweep)")
    return lines


def format_report(result: dict) -> str:
    width = max(40, *(len(r["case"]) for r in result["rows"]))
    header = (
        f"{'case':<{width}} {'accesses':>10} {'runs':>4} {'wall s':>8} {'accesses/s':>12} {'x naive':>8} "
        f"{'traced MiB':>10} {'hit rate':>8}  note"
    )
    lines = [header, "-" * len(header)]
    naive_rate = next(r["accesses_per_s"] for r in result["rows"] if r["case"].startswith("naive"))
    for r in result["rows"]:
        lines.append(
            f"{r['case']:<{width}} {r['accesses']:>10,} {r['runs']:>4} {r['wall_s']:>8.3f} {r['accesses_per_s']:>12,.0f} "
            f"{r['accesses_per_s'] / naive_rate:>8.1f} {r['traced_peak_mib']:>10.1f} {r['hit_rate']:>8.4f}  {r['note']}"
        )
    c = result["checks"]["naive_vs_replay"]
    lines.append("")
    lines.append(
        f"naive SimPy vs replay on the same {c['accesses']:,} accesses: hits {c['naive_hits']:,} vs "
        f"{c['replay_hits']:,} ({'equal' if c['hits_equal'] else 'DIFFERENT'}), "
        f"simulated time {c['naive_time_s']:.6f} s vs {c['replay_time_s']:.6f} s "
        f"({'equal' if c['time_equal'] else 'DIFFERENT'})"
    )
    for batch, c in result["checks"].get("serve", {}).items():
        lines.append(
            f"serve batch {batch}: {c['iterations']:,} iterations of {c['mean_batch_requests']:.1f} requests on average, "
            f"simulated time {c['simulated_time_s']:.3f} s"
        )
    same = result["checks"].get("serve_batch1_vs_replay")
    if same:
        lines.append(
            f"serve batch 1 vs timed layer replay: hits {same['serve_hits']:,} vs {same['replay_hits']:,} "
            f"({'equal' if same['hits_equal'] else 'DIFFERENT'})"
        )
    lcs = result["checks"]["libcachesim"]
    if "skipped" in lcs:
        lines.append(f"libCacheSim: skipped, {lcs['skipped']}")
    else:
        lines.append(
            f"global LRU {GLOBAL_CAPACITY} slots on keys layer*{MODEL.experts_per_layer}+expert: libCacheSim hit rate "
            f"{lcs['libcachesim_hit_rate']:.6f}, our replay {lcs['replay_global_hit_rate']:.6f} (ours never evicts an "
            f"expert of the current layer step; libCacheSim's LRU may)"
        )
    lines += ["", "issue 12's goals:"] + goal_lines(result)
    s = result["setting"]
    lines.append(
        f"wall s: best of runs (perf_counter); traced MiB: tracemalloc peak (Python heap) of one extra untimed run; "
        f"process peak RSS {s['peak_rss_mib']:.0f} MiB; Python {s['python']}, {s['cpus']} CPUs"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accesses", type=int, default=1_000_000, help="accesses in the synthetic trace (default 1M)")
    parser.add_argument("--naive-accesses", type=int, default=100_000, help="prefix the naive SimPy model runs on")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per fast case; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large-accesses", type=int, default=100_000_000,
                        help="accesses of the trace file replayed streamed in a fresh process, for its peak RSS "
                             "(also one of up to 10M, for the slope; 0: skip)")
    parser.add_argument("--no-sweep", action="store_true", help="skip timing the 126-job capacity sweep")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    result = benchmark(args.accesses, args.naive_accesses, args.repeats, args.seed,
                       large_accesses=args.large_accesses, sweep=not args.no_sweep)
    print()
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
