"""One simulation run from a validated `RunConfig`: open the trace, build model, machine and cache, replay."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from experiments.config import RunConfig
from hardware_profiles.schema import load_profile
from policies.base import CachePolicy
from policies.registry import policy_class
from simulator.cache import ExpertCache
from simulator.compute import step_costs
from simulator.errors import InputError
from simulator.hardware import HardwareProfile
from simulator.metrics import Metrics
from simulator.model import MoEModel
from simulator.presets import get_preset, with_dtype
from simulator.replay import Timing, replay
from traces.format import TraceFile


@dataclass
class RunResult:
    metrics: Metrics
    model: MoEModel
    hardware: HardwareProfile
    trace: TraceFile


def resolve_model(trace: TraceFile, run: RunConfig) -> MoEModel:
    """The trace's own model, or a preset whose routed shape must match the trace's."""
    if run.model.preset is None:
        model = trace.meta.model
        return model if run.model.dtype is None else with_dtype(model, run.model.dtype)
    model = get_preset(run.model.preset, run.model.dtype)
    mine = trace.meta.model
    for field in ("moe_layers", "experts_per_layer", "top_k"):
        if getattr(model, field) != getattr(mine, field):
            raise InputError(
                f"model={run.model.preset}: {field}={getattr(model, field)} does not match the trace "
                f"{trace.path} ({field}={getattr(mine, field)})"
            )
    return model


def policy_factory(spec: dict, seed: int) -> Callable[[int], CachePolicy]:
    """A `capacity -> CachePolicy` factory from a Hydra-style node {_target_: module.Class, **params}."""
    params = {k: v for k, v in spec.items() if k != "_target_"}
    cls = policy_class(spec["_target_"])
    if not (isinstance(cls, type) and issubclass(cls, CachePolicy)):
        raise InputError(f"policy._target_: {spec['_target_']!r} is not a CachePolicy subclass")
    accepted = inspect.signature(cls).parameters
    if "seed" in accepted and "seed" not in params:
        params["seed"] = seed
    unknown = [k for k in params if k not in accepted and not any(p.kind == p.VAR_KEYWORD for p in accepted.values())]
    if unknown:
        raise InputError(f"policy.{unknown[0]}: {cls.__name__} takes no parameter {unknown[0]!r}")
    return functools.partial(cls, **params)


def simulate(run: RunConfig, progress=None) -> RunResult:
    """Run one simulation. `progress`, if given, is a tqdm-like bar: its `total` is set to the trace's rows and
    `update(rows)` is called as the replay goes."""
    trace = TraceFile(run.trace_path)
    model = resolve_model(trace, run)
    hardware = load_profile(run.hardware.profile)
    cache = ExpertCache(
        policy_factory(run.policy, run.seed),
        run.cache.capacity,
        run.cache.scope,
        model,
        reset_per_sequence=run.cache.reset_per_sequence,
    )
    chunks = trace.chunks(batch_rows=run.replay.batch_rows)
    if cache.offline:
        # Offline policies need the whole future: the trace is held in memory once and replayed from there.
        chunks = list(chunks)
        cache.prepare(
            np.concatenate([c.sequence for c in chunks]),
            np.concatenate([c.layer for c in chunks]),
            np.concatenate([c.experts for c in chunks]),
        )
    timing = Timing(step_costs(model, hardware.gpu), hardware.h2d) if run.replay.timed else None
    if progress is not None:
        progress.total = trace.num_rows
    metrics = replay(chunks, cache, timing, progress=progress.update if progress is not None else None)
    return RunResult(metrics=metrics, model=model, hardware=hardware, trace=trace)
