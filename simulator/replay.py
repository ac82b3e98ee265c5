"""Replay a routing trace through the expert cache, with or without the timed model of the machine.

The accounting (README "Accounting semantics"): sequences, then tokens, then MoE layers in ascending order; each
layer step judges its routed experts against the cache before anything of the step is fetched, then loads the
misses. In the timed replay one layer step is:

    t_router = now + non_expert_s                       # attention, shared experts, router on the GPU
    misses are put on the H2D link at t_router, in router order (Link.transfer)
    the GPU computes the resident experts first, then each missed expert as soon as it has arrived
    stall = time the GPU waits for an arrival; the step ends when the last expert is computed

A hit creates no event and a layer step yields one SimPy timeout, so the replay runs at arithmetic speed; SimPy is
the clock other processes (prefetchers, NVMe queues, several sequences) will share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import simpy

from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.hardware import LinkSpec
from simulator.link import Link
from simulator.metrics import LayerCounters, Metrics
from traces.format import TraceChunk


@dataclass(frozen=True)
class Timing:
    """The timed part of a replay: per-step costs and the link that carries missed experts."""

    costs: StepCosts
    h2d: LinkSpec


def replay(
    chunks: Iterable[TraceChunk],
    cache: ExpertCache,
    timing: Timing | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> Metrics:
    """Replay `chunks` (rows in trace order) through `cache`; timed if `timing` is given, else hit rate only.

    Offline policies (Belady, Static) must have been given the same rows through `cache.prepare` first.
    """
    metrics = Metrics(timed=timing is not None, per_layer=LayerCounters.zeros(cache.model.moe_layers))
    steps = _layer_steps(chunks, cache, metrics, progress)
    if timing is None:
        for _ in steps:
            pass
        return metrics
    env = simpy.Environment()
    link = Link(timing.h2d)
    env.process(_timed(env, steps, timing.costs, cache.model.bytes_per_expert, link, metrics))
    env.run()
    metrics.total_time_s = env.now
    metrics.bytes_h2d = link.bytes_moved
    metrics.transfers_h2d = link.transfers
    metrics.h2d_busy_s = link.busy_s
    return metrics


def _layer_steps(chunks, cache: ExpertCache, metrics: Metrics, progress):
    """Judge every layer step against the cache, count it, and yield (layer, routed count, missed count)."""
    per_layer = metrics.per_layer
    layer_accesses, layer_hits, layer_bytes = per_layer.accesses, per_layer.hits, per_layer.bytes_h2d
    expert_bytes = cache.model.bytes_per_expert
    steps = 0
    last_sequence = last_token = None
    for chunk in chunks:
        sequences = chunk.sequence.tolist()
        tokens = chunk.token.tolist()
        layers = chunk.layer.tolist()
        routed = chunk.experts.tolist()
        for sequence, token, layer, experts in zip(sequences, tokens, layers, routed):
            if sequence != last_sequence:
                cache.start_sequence(sequence, first=last_sequence is None)
                metrics.sequences += 1
                metrics.tokens += 1
                last_sequence, last_token = sequence, token
            elif token != last_token:
                metrics.tokens += 1
                last_token = token
            if -1 in experts:
                experts = [e for e in experts if e >= 0]
            misses = cache.access(layer, experts)
            k = len(experts)
            layer_accesses[layer] += k
            layer_hits[layer] += k - len(misses)
            layer_bytes[layer] += len(misses) * expert_bytes
            steps += 1
            yield layer, k, len(misses)
        if progress is not None:
            progress(len(chunk))
    metrics.layer_steps = steps
    metrics.bytes_h2d = sum(layer_bytes)
    metrics.accesses = sum(layer_accesses)
    metrics.hits = sum(layer_hits)


def _timed(env: simpy.Environment, steps, costs: StepCosts, expert_bytes: int, link: Link, metrics: Metrics):
    per_layer = metrics.per_layer
    non_expert_s, expert_s = costs.non_expert_s, costs.expert_s
    for layer, routed, missed in steps:
        t_router = env.now + non_expert_s
        gpu = t_router + (routed - missed) * expert_s
        stall = 0.0
        for _ in range(missed):
            arrival = link.transfer(t_router, expert_bytes)
            if arrival > gpu:
                stall += arrival - gpu
                gpu = arrival
            gpu += expert_s
        metrics.compute_time_s += non_expert_s + routed * expert_s
        metrics.stall_time_s += stall
        per_layer.stall_s[layer] += stall
        yield env.timeout(gpu - env.now)
