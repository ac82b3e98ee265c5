"""One simulation run from a validated `RunConfig`: open the trace, build model, machine and cache, replay."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from experiments.config import RunConfig
from experiments.curve_store import CurveStore
from hardware_profiles.schema import load_profile
from policies.layer_sizing import layer_capacities, lru_miss_curves
from policies.miss_handling import MISS_HANDLERS
from policies.placements import PLACEMENTS
from policies.prefetchers import PREFETCHERS
from policies.registry import POLICIES
from policies.routing import ROUTING
from policies.schedulers import SCHEDULERS
from simulator.cache import ExpertCache
from simulator.cache_policy import CachePolicy
from simulator.compute import Runtime, batch_costs, miss_costs, step_costs
from simulator.errors import InputError
from simulator.gpu_memory import GpuMemory, gpu_memory
from simulator.hardware import HardwareProfile
from simulator.link import Link
from simulator.memory import MemoryHierarchy
from simulator.metrics import Metrics
from simulator.miss_handler import MissHandler
from simulator.placement import Placement
from simulator.model import MoEModel
from simulator.prefetcher import Prefetcher
from simulator.presets import with_dtype, with_non_expert_dtype
from simulator.registry import Registry
from simulator.replay import Timing, replay
from simulator.routing import RoutingPolicy
from simulator.requests import Request, requests_from_tokens
from simulator.scheduler import Scheduler, ServeLimits
from simulator.serving import KvMemory, poisson_arrivals, serve
from simulator.trace_rows import tokens as group_tokens
from traces.arrivals import read_arrivals
from traces.format import TraceFile
from traces.model_file import load_model


@dataclass
class RunResult:
    metrics: Metrics
    model: MoEModel
    hardware: HardwareProfile
    trace: TraceFile
    capacities: list[int]
    """Slots per policy instance (one per MoE layer, or one for a global cache)."""
    gpu_memory: GpuMemory


def resolve_model(trace: TraceFile, run: RunConfig) -> MoEModel:
    """The trace's own model, or a preset or model file whose routed shape must match the trace's; `model.kind`
    last."""
    model = _shape(trace, run)
    if run.model.non_expert_dtype is not None:
        model = with_non_expert_dtype(model, run.model.non_expert_dtype)
    return model if run.model.kind is None else replace(model, kind=run.model.kind)


def _shape(trace: TraceFile, run: RunConfig) -> MoEModel:
    if run.model.preset is None:
        model = trace.meta.model
        return model if run.model.dtype is None else with_dtype(model, run.model.dtype)
    model = load_model(run.model.preset, run.model.dtype)
    mine = trace.meta.model
    for field in ("moe_layers", "experts_per_layer", "top_k"):
        if getattr(model, field) != getattr(mine, field):
            raise InputError(
                f"model={run.model.preset}: {field}={getattr(model, field)} does not match the trace "
                f"{trace.path} ({field}={getattr(mine, field)})"
            )
    return model


def configured_class(spec: dict, base: type, registry: Registry, seed: int, skip=()) -> functools.partial:
    """`Class(**params)` minus its leading arguments, from a Hydra-style node {_target_: module.Class, **params}."""
    kind = registry.kind
    params = {k: v for k, v in spec.items() if k != "_target_" and k not in skip}
    cls = registry.load(spec["_target_"])
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise InputError(f"{kind}._target_: {spec['_target_']!r} is not a {base.__name__} subclass")
    accepted = inspect.signature(cls).parameters
    if "seed" in accepted and "seed" not in params:
        params["seed"] = seed
    unknown = [k for k in params if k not in accepted and not any(p.kind == p.VAR_KEYWORD for p in accepted.values())]
    if unknown:
        raise InputError(f"{kind}.{unknown[0]}: {cls.__name__} takes no parameter {unknown[0]!r}")
    return functools.partial(cls, **params)


def built(factory: Callable, registry: Registry, target: str, *args):
    """`factory(*args)`, a constructor's refusal of a parameter (TypeError, ValueError) as one line naming the
    plug-in: refused before the replay runs."""
    try:
        return factory(*args)
    except (TypeError, ValueError) as err:
        raise InputError(f"{registry.kind}={registry.name_of(target)}: {err}") from None


def policy_factory(spec: dict, seed: int, model: MoEModel) -> Callable[[int], CachePolicy]:
    """A `capacity -> CachePolicy` factory; a `top_k` parameter, if the class has one, comes from the model. One
    instance is built here, so that a bad parameter is refused before the replay."""
    factory = configured_class(spec, CachePolicy, POLICIES, seed)
    if "top_k" in inspect.signature(factory.func).parameters and "top_k" not in factory.keywords:
        factory = functools.partial(factory, top_k=model.top_k)
    built(factory, POLICIES, spec["_target_"], model.top_k)
    return factory


def make_miss_handler(spec: dict, trace: TraceFile, seed: int) -> MissHandler | None:
    """The configured miss handler; None for `miss=load` (wait for every missed expert)."""
    if spec.get("_target_") is None:
        return None
    handler = built(configured_class(spec, MissHandler, MISS_HANDLERS, seed), MISS_HANDLERS, spec["_target_"])
    if handler.needs_weights and not trace.has_weights:
        raise InputError(f"miss={handler.name}: {trace.path} has no 'weights' column (gate weights are needed)")
    return handler


def make_placement(spec: dict, model: MoEModel, seed: int) -> Placement | None:
    """The configured placement, bound to the model (its layer list checked); None for `placement=gpu-cache`."""
    if spec.get("_target_") is None:
        return None
    placement = built(configured_class(spec, Placement, PLACEMENTS, seed), PLACEMENTS, spec["_target_"])
    placement.bind(model)
    return placement


def make_routing(spec: dict, trace: TraceFile, seed: int) -> RoutingPolicy | None:
    """The configured routing policy; None for `routing=router` (the recorded experts). It needs the trace's
    candidates."""
    if spec.get("_target_") is None:
        return None
    routing = built(configured_class(spec, RoutingPolicy, ROUTING, seed), ROUTING, spec["_target_"])
    if not trace.candidates:
        raise InputError(f"routing={ROUTING.name_of(spec['_target_'])}: {trace.path} has no 'candidates' column (the "
                         "router's runners-up; record them with moe-trace record --candidates R)")
    return routing


def gpu_layer_mask(placement: Placement | None, model: MoEModel) -> list[bool]:
    """Per MoE layer, whether the GPU computes its experts (every layer without a placement)."""
    return [placement is None or not placement.on_cpu(layer) for layer in range(model.moe_layers)]


def expert_slots_on_gpu(capacities: list[int], on_gpu: list[bool]) -> int:
    """The expert slots that take GPU memory: a per-layer cache of a layer the placement keeps on the CPU takes none
    (a global cache's one capacity counts whole)."""
    if len(capacities) != len(on_gpu):
        return sum(capacities)
    return sum(c for c, gpu in zip(capacities, on_gpu) if gpu)


def make_prefetcher(spec: dict, model: MoEModel, trace: TraceFile, seed: int) -> Prefetcher | None:
    """The configured prefetcher, told the trace's prediction columns (`bind_trace`) and trained on
    `prefetch.train_trace` if given (`fit`, which learns nothing for most); None for `prefetch=none`."""
    if spec.get("_target_") is None:
        return None
    prefetcher = built(configured_class(spec, Prefetcher, PREFETCHERS, seed, skip=("train_trace",)), PREFETCHERS,
                       spec["_target_"], model)
    try:
        prefetcher.bind_trace(trace.prediction_columns)
    except InputError as err:
        raise InputError(f"{trace.path}: {err}") from None
    train = spec.get("train_trace")
    if train and type(prefetcher).fit is not Prefetcher.fit:  # one that learns nothing ignores it (a sweep may set it for all)
        training = TraceFile(train)
        if training.meta.model.experts_per_layer != model.experts_per_layer or training.meta.model.moe_layers != model.moe_layers:
            raise InputError(f"prefetch.train_trace: {train} has another model shape than {trace.path}")
        prefetcher.fit(training.chunks())
    return prefetcher


def cache_capacity(run: RunConfig, trace: TraceFile, model: MoEModel, memory: GpuMemory,
                   hardware: HardwareProfile, gpu_layers: int) -> int | list[int]:
    """`cache.capacity` (`auto`: what `memory` leaves for experts, shared by the `gpu_layers` whose experts the
    placement leaves on the GPU), or with `cache.sizing=adapmoe` each layer's share of the budget, chosen by AdapMoE's
    DP over the per-layer LRU miss curves of `cache.sizing_trace` (default: the replayed trace)."""
    c = run.cache
    capacity = auto_capacity(run.cache.scope, model, memory, hardware, gpu_layers) if c.capacity == "auto" else c.capacity
    if c.sizing == "uniform":
        if c.budget is not None or c.sizing_trace is not None:
            raise InputError("cache.budget / cache.sizing_trace: they size layers for cache.sizing=adapmoe, not uniform")
        return capacity
    if c.scope != "layer":
        raise InputError(f"cache.sizing=adapmoe: sizes each layer's cache; needs cache.scope=layer, not {c.scope}")
    budget = c.budget if c.budget is not None else capacity * model.moe_layers
    least, most = model.top_k * model.moe_layers, model.total_experts
    if not least <= budget <= most:
        raise InputError(f"cache.budget: {budget} is outside {least}..{most} (top_k={model.top_k} to all "
                         f"{model.experts_per_layer} experts in each of {model.moe_layers} layers)")
    source = TraceFile(c.sizing_trace) if c.sizing_trace else trace
    shape = source.meta.model
    if (shape.moe_layers, shape.experts_per_layer) != (model.moe_layers, model.experts_per_layer):
        raise InputError(f"cache.sizing_trace: {source.path} has another model shape than {trace.path}")
    chunks = list(source.chunks())
    layers = np.concatenate([ch.layer for ch in chunks]) if chunks else np.zeros(0, dtype=np.int16)
    experts = np.concatenate([ch.experts for ch in chunks]) if chunks else np.zeros((0, model.top_k), dtype=np.int16)
    curves = lru_miss_curves(layers, experts, model)
    return layer_capacities(curves, budget, model.top_k, model.experts_per_layer)


def make_memory(run: RunConfig, model: MoEModel, hardware: HardwareProfile) -> MemoryHierarchy:
    """The tiers behind the GPU, with links only in a timed replay."""
    mem = run.memory
    for needed, section in ((mem.home == "nvme", "nvme"), (mem.home == "nvme" and mem.path == "gds", "gds")):
        if needed and getattr(hardware, section) is None:
            raise InputError(f"memory: profile {hardware.name} has no '{section}' section (needed by memory.home={mem.home}, memory.path={mem.path})")
    if mem.dram_capacity is not None and model.kind == "mole":
        raise InputError("memory.dram_capacity: a MoLE model's table rows are read from their home; no DRAM cache")
    if mem.dram_capacity is not None and mem.home != "nvme":
        raise InputError("memory.dram_capacity: a DRAM cache needs memory.home=nvme (with home=dram every expert is in DRAM)")
    dram_cache = None
    if mem.dram_capacity is not None:
        dram_cache = ExpertCache(policy_factory({"_target_": mem.dram_policy}, run.seed, model), mem.dram_capacity, "global", model)
        if dram_cache.offline:
            raise InputError(f"memory.dram_policy: {mem.dram_policy} is an offline policy; the DRAM tier needs an online one")
    h2d = hardware.h2d
    if not mem.pinned and h2d.pageable_bandwidth_Bps:
        h2d = replace(h2d, bandwidth_Bps=h2d.pageable_bandwidth_Bps)
    timed = run.replay.timed

    def link(spec, name):
        return Link(spec, name) if timed and spec is not None else None

    return MemoryHierarchy(link(h2d, "h2d"), model.experts_per_layer, nvme=link(hardware.nvme, "nvme"),
                           gds=link(hardware.gds, "gds"), dram_cache=dram_cache, home=mem.home, path=mem.path)


def auto_capacity(scope: str, model: MoEModel, memory: GpuMemory, hardware: HardwareProfile, gpu_layers: int) -> int:
    """`cache.capacity=auto`: the experts `memory` has room for after the non-expert weights and the KV reserve, per
    layer (scope layer) or in all (global), at most every expert of the `gpu_layers` whose experts the GPU
    computes; one line when that is fewer than top_k. With no layer on the GPU the cache is never used: top_k."""
    layers = gpu_layers
    if layers == 0:
        return model.top_k
    slots = memory.free_for_experts_bytes // model.bytes_per_expert
    per_layer = scope == "layer"
    capacity = (min(slots // layers, model.experts_per_layer) if per_layer
                else min(slots, layers * model.experts_per_layer))
    if capacity < model.top_k:
        raise InputError(f"cache.capacity=auto: hardware={hardware.name}'s GPU memory leaves room for {slots:,} "
                         f"experts of {_gb(model.bytes_per_expert)}, fewer than top_k={model.top_k} "
                         f"{'per layer' if per_layer else 'in all'}")
    return int(capacity)


def checked_gpu_memory(model: MoEModel, hardware: HardwareProfile, trace: TraceFile, requests: int = 1) -> GpuMemory:
    """The GPU memory the run takes before any expert, with a KV reserve for `requests` requests at the trace's
    longest context (simulator.gpu_memory); refused in one line when the weights and one request's KV cache leave no
    room for an expert. An expert cache too big for what is left still runs: the caller warns."""
    use = gpu_memory(model, hardware.gpu.memory_bytes, 0, trace.context_tokens())
    if use.free_for_experts_bytes <= 0:
        raise InputError(f"hardware={hardware.name}: its {_gb(use.memory_bytes)} of GPU memory cannot hold {model.name}'s "
                         f"non-expert weights ({_gb(use.non_expert_bytes)}) and one request's KV cache "
                         f"({_gb(use.kv_reserve_bytes)}, {use.context_tokens:,} tokens), before any expert")
    return use if requests == 1 else gpu_memory(model, hardware.gpu.memory_bytes, 0, use.context_tokens, requests)


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def memory_warning(use: GpuMemory, hardware: HardwareProfile) -> str | None:
    """One line saying a configuration needs more GPU memory than the profile has, or None when it fits."""
    if use.fits:
        return None
    return (f"warning: this configuration needs {_gb(use.needed_bytes)} of GPU memory (experts {_gb(use.expert_cache_bytes)}, "
            f"non-expert weights {_gb(use.non_expert_bytes)}, KV {_gb(use.kv_reserve_bytes)}); hardware={hardware.name} "
            f"has {_gb(use.memory_bytes)}; it runs, with fits_gpu_memory=false in metrics.json")


def make_requests(run: RunConfig, trace: TraceFile, tokens) -> list[Request]:
    """The trace's sequences as requests: prompts from the trace's phase column (else `serve.prompt_tokens`),
    arrivals by `serve.arrival`."""
    prompts = trace.prompt_tokens() if trace.has_phase else run.serve.prompt_tokens
    requests = requests_from_tokens(tokens, prompt_tokens=prompts)
    sequences = [r.sequence for r in requests]
    if run.serve.arrival == "poisson":
        arrivals = poisson_arrivals(sequences, run.serve.rate_rps, run.seed)
    elif run.serve.arrival == "file":
        arrivals = read_arrivals(run.serve.arrival_file, sequences)
    else:
        arrivals = dict.fromkeys(sequences, 0.0)
    for request in requests:
        request.arrival_s = arrivals[request.sequence]
    return requests


def make_scheduler(run: RunConfig) -> Scheduler:
    return built(configured_class(run.scheduler, Scheduler, SCHEDULERS, run.seed), SCHEDULERS, run.scheduler["_target_"])


def check_combination(run: RunConfig) -> None:
    """Refuse, naming the value, the choices of the run's edge that cannot go together (README "Rules of
    combination"; the replay itself refuses the plug-ins that cannot go together)."""
    if run.memory.path == "gds" and run.memory.home != "nvme":
        raise InputError("memory.path=gds: GPUDirect Storage reads experts from NVMe; it needs memory.home=nvme")
    serve = run.serve
    if serve.mode == "none" and run.scheduler.get("_target_") != RunConfig.model_fields["scheduler"].default["_target_"]:
        raise InputError("scheduler: it forms the batches of serve=continuous; serve=none replays token by token")
    if (serve.arrival == "file") != (serve.arrival_file is not None):
        raise InputError(f"serve.arrival_file: {serve.arrival_file!r} goes with serve.arrival=file (and only with it); "
                         f"serve.arrival={serve.arrival}")
    if serve.mode != "none" and run.routing.get("_target_") is not None:
        raise InputError(f"routing={ROUTING.name_of(run.routing['_target_'])}: re-routes one token's experts; batched "
                         "serving (serve=continuous) takes routing=router")
    if serve.arrival != "offline" and not run.replay.timed:
        raise InputError(f"serve.arrival={serve.arrival}: arrivals need the clock (replay.timed=true); the hit-rate-only "
                         "replay serves offline (all requests at t=0)")
    if run.replay.timeline is not None:
        first, last = run.replay.timeline
        if not run.replay.timed:
            raise InputError("replay.timeline: a timeline records time; it needs replay.timed=true")
        if not 0 <= first < last:
            raise InputError(f"replay.timeline: [{first}, {last}] is not a window of tokens (0 <= first < last)")


def simulate(run: RunConfig, progress=None, curve_dir: Path | None = None) -> RunResult:
    """Run one simulation. `progress`, if given, is a tqdm-like bar: its `total` is set to the trace's rows and
    `update(rows)` is called as the replay goes. `curve_dir` (a sweep's, for this trace's contents) keeps one-pass
    curves that hit-rate-only jobs share (experiments.curve_store)."""
    check_combination(run)
    trace = TraceFile(run.trace_path)
    if trace.num_rows == 0:
        raise InputError(f"trace.path: {trace.path} has 0 rows (an empty trace: nothing to replay)")
    model = resolve_model(trace, run)
    if model.kind == "mole" and not trace.has_token_id:
        raise InputError(f"model.kind=mole: {trace.path} has no 'token_id' column (lookup tables are keyed by token id)")
    hardware = load_profile(run.hardware.profile)
    serving = run.serve.mode == "continuous"
    reserved = (run.serve.max_batch if run.serve.kv == "static" else 0) if serving else 1
    without_experts = checked_gpu_memory(model, hardware, trace, reserved)
    placement = make_placement(run.placement, model, run.seed)
    on_gpu = gpu_layer_mask(placement, model)
    cache = ExpertCache(
        policy_factory(run.policy, run.seed, model),
        cache_capacity(run, trace, model, without_experts, hardware, sum(on_gpu)),
        run.cache.scope,
        model,
        reset_per_sequence=run.cache.reset_per_sequence,
    )
    prefetcher = make_prefetcher(run.prefetch, model, trace, run.seed)
    miss_handler = make_miss_handler(run.miss, trace, run.seed)
    routing = make_routing(run.routing, trace, run.seed)
    memory_use = without_experts.with_expert_cache(expert_slots_on_gpu(list(cache.capacities), on_gpu),
                                                   model.bytes_per_expert)
    predictions = list(prefetcher.predictions) if prefetcher is not None else []
    weights = cache.uses_gate_weights or (miss_handler is not None and miss_handler.needs_weights) or routing is not None
    chunks = trace.chunks(batch_rows=run.replay.batch_rows, predictions=predictions, weights=weights,
                          token_ids=model.kind == "mole", candidates=routing is not None)
    if cache.offline:
        # Offline policies need the whole future: the trace is held in memory once and replayed from there.
        chunks = list(chunks)
        cache.prepare(
            np.concatenate([c.sequence for c in chunks]),
            np.concatenate([c.layer for c in chunks]),
            np.concatenate([c.experts for c in chunks]),
        )
    timing = None
    runtime = Runtime(**run.runtime.model_dump())
    if runtime.cpu_sockets > hardware.cpu.sockets:
        raise InputError(f"runtime.cpu_sockets: {runtime.cpu_sockets} is more than hardware={hardware.name}'s "
                         f"{hardware.cpu.sockets} CPU socket(s)")
    if run.replay.timed:
        timing = Timing(step_costs(model, hardware.gpu, runtime=runtime), hardware.h2d,
                        batch_costs(model, hardware, runtime) if serving else None)
    if progress is not None:
        progress.total = trace.num_rows
    plugins = dict(
        prefetcher=prefetcher,
        miss_handler=miss_handler,
        miss_costs=miss_costs(model, hardware, runtime=runtime) if miss_handler is not None or placement is not None else None,
        placement=placement,
        memory=make_memory(run, model, hardware),
        timeline=tuple(run.replay.timeline) if run.replay.timeline else None,
    )
    rows = progress.update if progress is not None else None
    if serving:
        requests = make_requests(run, trace, group_tokens(chunks, rows))
        kv = KvMemory(run.serve.kv, without_experts.kv_bytes_per_token or 0,
                      without_experts.memory_bytes - without_experts.non_expert_bytes, model.bytes_per_expert)
        metrics = serve(requests, cache, timing, scheduler=make_scheduler(run), kv=kv,
                        limits=ServeLimits(run.serve.max_batch, run.serve.max_batched_tokens),
                        compiled=run.replay.compiled, **plugins)
    else:
        curves = CurveStore(curve_dir, trace, model, run.replay.batch_rows) if curve_dir is not None else None
        metrics = replay(chunks, cache, timing, progress=rows, compiled=run.replay.compiled, routing=routing,
                         curves=curves, **plugins)
    return RunResult(metrics=metrics, model=model, hardware=hardware, trace=trace, capacities=list(cache.capacities),
                     gpu_memory=memory_use)
