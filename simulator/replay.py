"""Replay a routing trace through the expert cache, with or without the timed model of the machine.

The accounting (README "Accounting semantics"): sequences, then tokens, then MoE layers in ascending order; each
layer step judges its routed experts against the cache before anything of the step is fetched, then loads the
misses. In the timed replay one layer step is:

    t_router = now + non_expert_s                       # attention, shared experts, router on the GPU
    prefetches that have arrived by t_router are inserted into the cache (never evicting this step's experts)
    misses: an expert whose prefetch is still on its way is a *late* prefetch and waits for the rest of it (a
            prefetch still queued is promoted to a demand fetch); any other miss is a demand fetch put on the
            link at t_router, ahead of queued prefetches
    the GPU issues the step's demand fetches, then its prefetches (each link's `issue_s` per transfer, counted as
        compute time; a token's first prefetches are issued before its first step's non-expert work)
    the GPU computes the resident experts first, then each missed expert as soon as it has arrived (an expert's
        compute runs (1 + gpu.transfer_slowdown) times longer while the step's fetches are still in flight, and a
        fetched expert's (1 + gpu.fetched_slowdown) times a resident one's, the step's last demand fetch's
        (1 + gpu.last_fetch_slowdown))
    stall = time the GPU waits for an arrival; the step ends when the last expert is computed

A Mixture-of-Lookup-Experts model (`kind` "mole") computes no expert: at the router a layer step looks up its
routed experts' rows for the token's id in the row cache (simulator.lut_cache), reads the missing rows in one
transfer, and ends when they have arrived.

The prefetcher (if any) is asked at the token's start and after each router; its requests queue on the link behind
demand fetches (simulator.prefetch_book keeps their record). In the hit-rate-only replay there is no clock: a
prefetch lands at once (unbounded bandwidth).

A hit creates no event and a layer step yields one SimPy timeout, so the replay runs at arithmetic speed; SimPy is
the clock that further processes (NVMe queues, several sequences) will share.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import repeat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import simpy

from simulator.cache import ExpertCache
from simulator.compiled_policy import CompiledPolicy
from simulator.compiled_timing import StepTimer
from simulator.compute import BatchCosts, MissCosts, StepCosts
from simulator.errors import InputError
from simulator.hardware import LinkSpec
from simulator.link import Link
from simulator.lut_cache import RowCache
from simulator.memory import MemoryHierarchy
from simulator.metrics import LayerCounters, Metrics, ReroutingCounters
from simulator.miss_handler import COPY, CPU, LOAD, LOW_PRECISION, SKIP, MissHandler
from simulator.placement import Placement, SplitView
from simulator.prefetch_book import PrefetchBook
from simulator.prefetcher import Prefetcher, PrefetchView
from simulator.routing import RoutingPolicy
from simulator.timeline import TimelineEvent
from simulator.trace_rows import RowTally, Token, TraceChunk, tokens as group_tokens

if TYPE_CHECKING:
    from simulator.serving import BatchStep
    from simulator.stack_distance import HitCurve


@dataclass(frozen=True)
class Timing:
    """The timed part of a replay: per-step costs and the link that carries missed experts."""

    costs: StepCosts
    h2d: LinkSpec
    batch: BatchCosts | None = None
    """Costs as functions of a step's tokens, for the batched replay (simulator.serving); None: every step costs
    `costs` (one token per step, or a hand-set machine)."""


def replay(
    chunks: Iterable[TraceChunk],
    cache: ExpertCache,
    timing: Timing | None = None,
    *,
    prefetcher: Prefetcher | None = None,
    miss_handler: MissHandler | None = None,
    miss_costs: MissCosts | None = None,
    memory: MemoryHierarchy | None = None,
    timeline: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
    placement: Placement | None = None,
    compiled: bool = True,
    routing: RoutingPolicy | None = None,
    curves: Callable[[str, str], HitCurve] | None = None,
) -> Metrics:
    """Replay `chunks` (rows in trace order) through `cache`; timed if `timing` is given, else hit rate only.

    Offline policies (Belady, Static) must have been given the same rows through `cache.prepare` first; they cannot
    take prefetches (their view of the future is the demand stream). A `miss_handler` or a `placement` (where experts
    are computed, simulator.placement; None: on the GPU, through the cache) needs `miss_costs`; chunks
    must carry gate weights if the handler or the cache policy reads them. `memory` describes the tiers behind the
    GPU (default: every expert in DRAM, one host-to-device link from `timing`); its links carry the replay's clock.
    `timeline` = (first, last) token indices (0-based, over the whole replay) records what the GPU and the links
    did for those tokens into `Metrics.timeline` (timed replays only). A `routing` policy (simulator.routing) may swap
    each step's routed experts for resident runners-up before the cache judges it; chunks must carry candidates.

    A replay of a plain cache (no prefetcher, miss handler or placement, no NVMe tier, not MoLE; timed: one serial
    link and no timeline) whose policy has a compiled twin (simulator.compiled_policy) is judged by the twin, chunk
    by chunk, and timed by a compiled loop (simulator.compiled_timing), with the same figures; `compiled=False`
    keeps it on the Python policies and the SimPy clock.
    A hit-rate-only replay of a plain cache whose policy has a one-pass curve (`CachePolicy.stack_curve`) takes its
    figures from `curves(policy, scope)`, the curve of these same chunks (a sweep's jobs share one), if given, and
    reads no chunk.
    """
    if prefetcher is not None and cache.offline:
        raise InputError(f"prefetch={_name(prefetcher)}: policy={_name(cache.policies[0])} is offline (its future is the "
                         "demand stream) and takes no prefetched experts; replay it without a prefetcher as the bound "
                         "of a demand-only sweep")
    if routing is not None and cache.offline:
        raise InputError(f"routing={_name(routing)}: policy={_name(cache.policies[0])} is offline (it is given the "
                         "recorded demand stream in advance, which re-routing changes as it runs); use an online policy")
    run = _Replay(cache, timing, prefetcher, miss_handler, miss_costs, memory, timeline, placement, routing)
    plain = run.plain() and (timing is None or run.compiled_clock())
    if timing is None and plain and curves is not None and cache.curve_policy():
        run.judge_curve(curves(cache.curve_policy(), cache.scope))
        return run.finish()
    twin = cache.compiled() if compiled and plain else None
    if twin is not None:
        run.judge_compiled(chunks, twin, progress)
        return run.finish()
    cache.ready()
    tokens = group_tokens(chunks, progress)
    if timing is None:
        for _ in run.steps(tokens):
            pass
    else:
        env = simpy.Environment()
        env.process(run.clocked(env, run.steps(tokens)))
        env.run()
    return run.finish()


def _run_until(start: float, work: float, busy_until: float, slowdown: float) -> float:
    """When `work` seconds of compute begun at `start` end, if it runs (1 + slowdown) times longer until
    `busy_until` (`GPUSpec.transfer_slowdown`: while the step's fetches are in flight)."""
    if start >= busy_until:
        return start + work
    slowed_end = start + work * (1.0 + slowdown)
    if slowed_end <= busy_until:
        return slowed_end
    return busy_until + work - (busy_until - start) / (1.0 + slowdown)


def _name(plugin) -> str:
    """A plug-in as errors name it: its registered short name, else its class name."""
    return plugin.name or type(plugin).__name__


class _Replay:
    def __init__(self, cache: ExpertCache, timing: Timing | None, prefetcher: Prefetcher | None,
                 miss_handler: MissHandler | None, miss_costs: MissCosts | None, memory: MemoryHierarchy | None,
                 timeline: tuple[int, int] | None = None, placement: Placement | None = None,
                 routing: RoutingPolicy | None = None):
        model = cache.model
        if (miss_handler is not None or placement is not None) and miss_costs is None:
            raise ValueError("a miss handler or a placement needs miss_costs")
        self.model = model
        self.cache = cache
        self.timing = timing
        if memory is None:
            memory = MemoryHierarchy(Link(timing.h2d) if timing else None, model.experts_per_layer)
        self.memory = memory
        self.window = timeline if timing else None
        self.events: list[TimelineEvent] | None = None  # the timeline while the current token is inside the window
        self.lookup = model.kind == "mole"
        if self.lookup and prefetcher is not None:
            raise InputError(f"prefetch={_name(prefetcher)}: model.kind=mole fetches lookup rows by token id and takes "
                             "no prefetcher (prefetch=none)")
        if self.lookup and miss_handler is not None:
            raise InputError(f"miss={_name(miss_handler)}: model.kind=mole computes no expert, so a miss is a row read "
                             "(miss=load)")
        self.rows = RowCache(cache) if self.lookup else None
        if placement is not None:
            if self.lookup:
                raise InputError(f"placement={_name(placement)}: model.kind=mole computes no expert to place")
            if placement.splits and miss_handler is not None:
                raise InputError(f"placement={_name(placement)}: it decides every miss itself; it takes no miss handler "
                                 f"(miss={_name(miss_handler)}): use miss=load")
            placement.bind(model)
        self.placement = placement
        if routing is not None and self.lookup:
            raise InputError(f"routing={_name(routing)}: model.kind=mole looks rows up by token id; it takes routing=router")
        self.routing = routing
        self.cpu_layers = frozenset(layer for layer in range(model.moe_layers)
                                    if placement is not None and placement.on_cpu(layer))
        """MoE layers whose experts the placement keeps on the CPU, asked once."""
        self.triage = miss_handler is not None or placement is not None
        self.prefetcher = prefetcher
        self.miss_handler = miss_handler
        self.miss_costs = miss_costs
        self.cpu_free = 0.0  # when the CPU finishes the experts it was given (Fiddler-style execution)
        self.expert_bytes = model.bytes_per_expert
        self.metrics = Metrics(timed=timing is not None, per_layer=LayerCounters.zeros(model.moe_layers),
                               rerouting=ReroutingCounters() if routing is not None else None)
        self.now = 0.0
        self.book: PrefetchBook | None = None
        self._upcoming: deque[Token] = deque()  # tokens read ahead for an oracle's view of the future
        self._tokens: Iterator[Token] | None = None
        if prefetcher is not None:
            self.book = PrefetchBook(cache, memory, self.metrics.per_layer, timed=timing is not None)
            self.view = PrefetchView(model, cache, memory.h2d, prefetcher.oracle, self._future)
            if timing:
                self.view.layer_compute_s = timing.costs.non_expert_s + model.top_k * timing.costs.expert_s

    # -- driving -------------------------------------------------------------------------------------------------

    def plain(self) -> bool:
        """Whether only the cache decides each step (no prefetcher, miss handler, placement, re-routing, NVMe tier,
        MoLE table or gate-weight policy): what a compiled twin or a one-pass curve can replay."""
        return (self.prefetcher is None and self.miss_handler is None and self.placement is None
                and self.routing is None and not self.memory.on_nvme and not self.lookup
                and not self.cache.uses_gate_weights)

    def compiled_clock(self) -> bool:
        """Whether the compiled clock (simulator.compiled_timing) can time this replay's plain steps: it knows demand
        fetches on one serial link at an unslowed compute rate, and records no timeline."""
        h2d = self.memory.h2d
        return (self.window is None and h2d is not None and h2d.spec.sharing == "serial"
                and not self.timing.costs.transfer_slowdown and not self.timing.costs.fetched_slowdown
                and not self.timing.costs.effective_last_fetch_slowdown)

    def step_timer(self) -> StepTimer:
        """The compiled clock, started from this replay's clock and link."""
        metrics = self.metrics
        return StepTimer(self.memory.h2d, self.now, metrics.compute_time_s, metrics.stall_time_s, self.model.moe_layers)

    def take_clock(self, timer: StepTimer) -> None:
        """Take back the clock, the times and the link from `timer` once its steps are timed."""
        metrics, per_layer = self.metrics, self.metrics.per_layer
        self.now, metrics.compute_time_s, metrics.stall_time_s, stalls = timer.finish()
        per_layer.stall_s = [a + b for a, b in zip(per_layer.stall_s, stalls)]

    def clocked(self, env: simpy.Environment, ends: Iterable[float]):
        """The SimPy process: one timeout per layer step, to the step's end (`ends`: the steps' end times as
        `steps` or a batched replay's driver yields them)."""
        for end in ends:
            if end == math.inf:
                continue  # a transfer that never arrives (zero bandwidth): the clock cannot pass infinity
            yield env.timeout(max(0.0, end - env.now))  # env.now may sit one rounding above `end`

    def steps(self, tokens: Iterable[Token]) -> Iterator[float]:
        """Run every layer step in order: sequences, then tokens, then MoE layers; yields each step's end time
        (0 without a clock)."""
        self._tokens = iter(tokens)
        metrics, prefetcher = self.metrics, self.prefetcher
        last_sequence = None
        previous: dict[int, list[int]] | None = None
        while (token := self._next_token()) is not None:
            if token.sequence != last_sequence:
                (self.rows if self.lookup else self.cache).start_sequence(token.sequence, first=last_sequence is None)
                if prefetcher is not None:
                    if self.cache.reset_per_sequence and last_sequence is not None:
                        self.book.cache_emptied()
                    prefetcher.start_sequence()
                metrics.sequences += 1
                last_sequence = token.sequence
                previous = None
            if self.window is not None:
                self._record_token(metrics.tokens)
            metrics.tokens += 1
            if self.lookup:
                if token.token_id is None:
                    raise ValueError("model.kind=mole: the trace chunks carry no token_id")
                for layer, experts in zip(token.layers, token.experts):
                    self._lookup_step(layer, experts, token.token_id)
                    yield self.now
                continue
            if prefetcher is not None:
                self._begin_token(token, previous)
            weights = token.weights or [None] * len(token.layers)
            routes = repeat(None) if self.routing is None else self._routes(token)
            for index, (layer, experts, gate, route) in enumerate(zip(token.layers, token.experts, weights, routes)):
                self._layer_step(layer, experts, gate, index == 0 and prefetcher is not None, candidates=route)
                yield self.now
            if prefetcher is not None:
                previous = dict(zip(token.layers, token.experts))

    def _routes(self, token: Token) -> Iterator[tuple[list[int], list[float]]]:
        """A token's (candidates, scores) per row, for the routing policy."""
        if token.candidates is None:
            raise ValueError(f"routing={_name(self.routing)}: the trace chunks carry no candidates")
        return zip(token.candidates, token.candidate_scores)

    def _record_token(self, index: int) -> None:
        """Switch event recording on for tokens inside the timeline window and off outside it."""
        first, last = self.window
        self.events = self.metrics.timeline if first <= index < last else None
        for link in (*self.memory.links(), self.memory.nvme):
            if link is not None:
                link.log = self.events

    def _next_token(self) -> Token | None:
        if self._upcoming:
            return self._upcoming.popleft()
        return next(self._tokens, None)

    def _future(self, steps: int) -> list[tuple[int, list[int]]]:
        """The layer steps after the current one (oracle prefetchers only), reading ahead in the trace as needed."""
        view = self.view
        token = self._current
        out = [(l, e) for l, e in zip(token.layers, token.experts) if l > view.layer][:steps]
        ahead = 0
        while len(out) < steps:
            if ahead == len(self._upcoming):
                nxt = next(self._tokens, None)
                if nxt is None:
                    break
                self._upcoming.append(nxt)
            nxt = self._upcoming[ahead]
            ahead += 1
            out.extend(zip(nxt.layers, nxt.experts))
        return out[:steps]

    def _begin_token(self, token: Token, previous) -> None:
        view = self.view
        self._current = token
        view.sequence, view.position = token.sequence, token.position
        view.layer, view.experts = -1, []
        view.token_routing = {}
        view.previous_routing = previous
        view.predictions = {name: dict(zip(token.layers, rows)) for name, rows in token.predictions.items()}

    # -- one layer step ------------------------------------------------------------------------------------------

    def _layer_step(self, layer: int, experts: list[int], weights: list[float] | None, token_start: bool,
                    step: "BatchStep | None" = None, non_expert_s: float | None = None, candidates=None) -> None:
        """t_router = now + non-expert work; land the prefetches that have arrived; judge the step's experts against
        the cache; fetch the misses; ask the prefetcher; compute (README "Accounting semantics").

        One token's step gives its router's `experts`; a batched step (simulator.serving) gives U, the distinct
        experts of its rows in first-appearance order, with `step` saying how many rows each serves and what it
        costs. `non_expert_s` replaces the profile's figure where the step's context is costed (attention).
        `candidates` = (ids, scores) of the router's top-(k + r), for the routing policy, which may swap `experts` in
        place once the step's prefetches have landed (the token's routing then holds the experts used)."""
        metrics, timing, cache, book = self.metrics, self.timing, self.cache, self.book
        if non_expert_s is None:
            non_expert_s = timing.costs.non_expert_s if timing else 0.0
        start_issue_s = 0.0  # issuing the token-start prefetches delays the first layer's work
        if token_start:
            start_issue_s = self._prefetch_at_start(layer, experts, step)
        t_router = self.now + start_issue_s + non_expert_s if timing else 0.0
        if book is not None and book.inflight:
            book.land(t_router, layer, experts)
        if candidates is not None:
            self._reroute(layer, experts, weights, *candidates)
        if cache.uses_gate_weights:
            for row_experts, row_weights in (((experts, weights),) if step is None else step.gates()):
                if row_weights is not None:
                    cache.observe_gates(layer, row_experts, row_weights)
        expert_s = timing.costs.expert_s if timing else 0.0
        loaded, handled = experts, ()
        if self.triage:
            loaded, handled = self._triage(layer, experts, weights, step, t_router)
        misses = cache.access(layer, loaded)
        if book is not None and book.unused:
            book.count_useful(layer, experts, misses)
        arrivals, demand_bytes, issue_s = self._fetch(layer, misses, handled, experts, t_router, expert_s, step)
        if cache.evicted:
            book.count_evictions()
        per_layer = metrics.per_layer
        hit_experts = len(loaded) - len(misses)
        if step is None:
            per_layer.accesses[layer] += len(experts)
            per_layer.hits[layer] += hit_experts
            resident_s = hit_experts * expert_s
        else:
            missed = set(misses)
            counts = step.counts
            per_layer.accesses[layer] += step.accesses
            per_layer.hits[layer] += sum(counts[e] for e in loaded if e not in missed)
            resident_s = sum(step.expert_s[e] for e in loaded if e not in missed) if timing else 0.0
        metrics.expert_lookups += len(experts)
        metrics.expert_hits += hit_experts
        metrics.expert_loads += len(misses)
        per_layer.bytes_h2d[layer] += demand_bytes
        metrics.layer_steps += 1
        if book is not None:
            issue_s += self._prefetch_after_router(layer, experts, t_router, step)
        if timing:
            self._compute(layer, t_router, issue_s, resident_s, arrivals, start_issue_s, non_expert_s)

    def _reroute(self, layer: int, experts: list[int], weights, candidates: list[int], scores: list[float]) -> None:
        """Let the routing policy swap routed experts for runners-up, in place; count the swaps and the gate mass moved
        (the replaced expert's gate weight, else its share of the step's top-k router probability)."""
        counters, cache = self.metrics.rerouting, self.cache
        top = sum(scores[:len(experts)])
        counters.gate_mass += sum(weights) if weights is not None else (1.0 if top else 0.0)
        swaps = self.routing.route(layer, experts, weights, candidates, scores, lambda e: cache.is_resident(layer, e))
        for position, candidate in swaps:
            if candidate in experts or candidate not in candidates:
                raise ValueError(f"routing={_name(self.routing)}: swap {experts[position]} -> {candidate} at layer "
                                 f"{layer}: a candidate must be a runner-up not yet routed this step")
            experts[position] = candidate
            counters.accesses += 1
            counters.gate_mass_moved += weights[position] if weights is not None else (scores[position] / top if top else 0.0)

    def _prefetch_at_start(self, layer: int, experts: list[int], step: "BatchStep | None") -> float:
        """Ask the prefetcher at the start of the token (of every row's token, in a batched step); returns the
        compute stream's time to issue what it asked for."""
        view, book = self.view, self.book
        view.now_s = self.now
        issue_s = 0.0
        for row in ((None,) if step is None else step.rows):
            if row is not None:
                row.show(view)
            issue_s += book.issue(self._on_gpu(self.prefetcher.at_token_start(view)), self.now, layer, experts)
        return issue_s

    def _prefetch_after_router(self, layer: int, experts: list[int], t_router: float, step: "BatchStep | None") -> float:
        view = self.view
        view.now_s = t_router
        issue_s = 0.0
        for row, row_experts in (((None, experts),) if step is None else step.routed()):
            if row is not None:
                row.show(view)
            view.layer, view.experts = layer, row_experts
            view.token_routing[layer] = row_experts
            issue_s += self.book.issue(self._on_gpu(self.prefetcher.after_router(view)), t_router, layer, experts)
        return issue_s

    def _on_gpu(self, requests):
        """A prefetcher's requests less the experts the placement keeps on the CPU (they are never loaded)."""
        cpu_layers = self.cpu_layers
        if not cpu_layers:
            return requests
        return [(layer, expert) for layer, expert in requests if layer not in cpu_layers]

    def _fetch(self, layer, misses, handled, experts, t_router, expert_s, step=None) -> tuple[list, int, float]:
        """Bring in every expert not resident at the router, in router order (the order they go on the link):
        wait for a late prefetch, fetch on demand, or let the miss handler's choice stand. Returns the arrivals
        (time, GPU compute then needed), the demand bytes booked and the compute stream's time to issue them."""
        metrics, timing, book = self.metrics, self.timing, self.book
        arrivals, demand_bytes, issue_s = [], 0, 0.0
        costs = step.expert_s if step is not None and timing else None
        fetched = 1.0 + timing.costs.fetched_slowdown if timing else 1.0  # a fetched expert's compute over a resident one's
        last = 1.0 + timing.costs.effective_last_fetch_slowdown if timing else 1.0  # the step's last demand fetch's
        if handled:
            outstanding = sorted([(experts.index(e), LOAD, e, 1.0) for e in misses] + handled)
        elif book is not None and book.inflight:
            outstanding = [(0, LOAD, e, 1.0) for e in misses]
        else:  # the common case: every miss is a plain demand fetch
            outstanding = ()
        fetches = [] if outstanding else [(e, self.expert_bytes) for e in misses]  # (expert, bytes), router order
        on_cpu = 0  # experts of this step handed to the CPU so far
        for _, action, expert, fraction in outstanding:
            if action == LOAD:
                late = book.claim(layer, expert, t_router) if book is not None and book.inflight else None
                if late is None:
                    fetches.append((expert, self.expert_bytes))
                    continue
                arrival, queued = late
                if queued:  # it had not started: it goes as a demand fetch
                    demand_bytes += self.expert_bytes
                arrivals.append((arrival, (costs[expert] if costs else expert_s) * fetched))
            elif action == LOW_PRECISION:
                metrics.approximated_low_precision += 1
                fetches.append((expert, int(round(self.expert_bytes * fraction))))
            elif action == COPY:
                metrics.gpu_copies += 1
                fetches.append((expert, self.expert_bytes))
            else:
                self._handle_miss(action, t_router, arrivals, step.counts[expert] if step is not None else 1, on_cpu == 0)
                on_cpu += action == CPU
        if fetches:
            demand_bytes += sum(nbytes for _, nbytes in fetches)
            if timing or self.memory.on_nvme:  # without a clock, only the DRAM tier's counts need the call
                booked, booked_issue_s = self.memory.demand(layer, fetches, t_router)
                if timing:
                    factors = [fetched] * (len(fetches) - 1) + [last]
                    if costs:
                        arrivals.extend((arrival, costs[e] * f) for arrival, (e, _), f in zip(booked, fetches, factors))
                    else:
                        arrivals.extend((arrival, expert_s * f) for arrival, f in zip(booked, factors))
                    issue_s = booked_issue_s
        return arrivals, demand_bytes, issue_s

    def _compute(self, layer: int, t_router: float, issue_s: float, resident_s: float, arrivals: list,
                 start_issue_s: float, non_expert_s: float) -> None:
        """The GPU issues the step's demand fetches (and the prefetches asked for after the router), computes the
        resident experts, then each arrival as it lands; advances the clock to the end. `start_issue_s`: time spent
        issuing the token-start prefetches before the step's non-expert work."""
        metrics = self.metrics
        slowdown = self.timing.costs.transfer_slowdown if arrivals else 0.0
        busy_until = max(arrival for arrival, _ in arrivals) if slowdown else 0.0  # the step's last fetch lands
        compute = issue_s + resident_s
        gpu = t_router + compute
        if slowdown:
            gpu = _run_until(t_router + issue_s, resident_s, busy_until, slowdown)
            compute = gpu - t_router
        events = self.events
        if events is not None:
            if start_issue_s:
                events.append(TimelineEvent("gpu", self.now, self.now + start_issue_s, layer, "issue prefetches"))
            events.append(TimelineEvent("gpu", self.now + start_issue_s, t_router, layer, "non-expert"))
            if issue_s:
                events.append(TimelineEvent("gpu", t_router, t_router + issue_s, layer, "issue fetches"))
            events.append(TimelineEvent("gpu", t_router + issue_s, gpu, layer, "resident experts"))
        stall = 0.0
        for arrival, compute_s in sorted(arrivals):
            if arrival > gpu:
                stall += arrival - gpu
                gpu = arrival
            if events is not None:
                events.append(TimelineEvent("gpu", gpu, _run_until(gpu, compute_s, busy_until, slowdown),
                                            layer, "fetched expert"))
            if slowdown:
                end = _run_until(gpu, compute_s, busy_until, slowdown)
                compute += end - gpu
                gpu = end
            else:
                gpu += compute_s
                compute += compute_s
        metrics.compute_time_s += start_issue_s + non_expert_s + compute
        metrics.stall_time_s += stall
        metrics.per_layer.stall_s[layer] += stall
        self.now = gpu

    def _lookup_step(self, layer: int, experts: list[int], token_id: int) -> None:
        """A Mixture-of-Lookup-Experts step: at the router, the routed experts' rows for this token id that the row
        cache lacks come from the experts' home in one read; no expert is computed. Each row is one access."""
        metrics, timing = self.metrics, self.timing
        t_router = self.now + timing.costs.non_expert_s if timing else 0.0
        misses = self.rows.access(layer, experts, token_id)
        nbytes = len(misses) * self.model.lut_row_bytes
        metrics.per_layer.accesses[layer] += len(experts)
        metrics.per_layer.hits[layer] += len(experts) - len(misses)
        metrics.per_layer.bytes_h2d[layer] += nbytes
        metrics.layer_steps += 1
        if timing:
            arrival, issued = t_router, t_router
            if misses:
                booked, issue_s = self.memory.demand(layer, [(misses[0], nbytes)], t_router)
                arrival, issued = booked[0], t_router + issue_s
            stall = max(0.0, arrival - issued)
            if self.events is not None:
                self.events.append(TimelineEvent("gpu", self.now, t_router, layer, "non-expert"))
                if issued > t_router:
                    self.events.append(TimelineEvent("gpu", t_router, issued, layer, "issue fetches"))
            metrics.compute_time_s += self.timing.costs.non_expert_s + (issued - t_router)
            metrics.stall_time_s += stall
            metrics.per_layer.stall_s[layer] += stall
            self.now = issued + stall
        elif self.memory.on_nvme and misses:
            self.memory.demand(layer, [(misses[0], nbytes)], t_router)

    # -- miss handling -------------------------------------------------------------------------------------------

    def _triage(self, layer: int, experts: list[int], weights, step: "BatchStep | None" = None, t_router: float = 0.0):
        """Split a step's experts into those that go through the cache (resident, on their way, or to be loaded) and
        the others: (kept experts, [(position in `experts`, action, expert, byte fraction)]). The placement decides
        first (a CPU layer's experts all run on the CPU; a split sends some misses there), then the miss handler
        decides each remaining miss. A CPU-placed expert serving enough tokens is copied to the GPU instead (the
        prefill rule). In a batched step the handler is told the expert's costs for the rows it serves, and the
        router rank and gate weight it has in the first row that routes to it."""
        cache, handler, costs, book, placement = self.cache, self.miss_handler, self.miss_costs, self.book, self.placement
        counts = step.counts if step is not None else None
        if layer in self.cpu_layers:
            return [], [(position, placement.cpu_action(counts[e] if counts else 1), e, 1.0)
                        for position, e in enumerate(experts)]
        base = self.model.key(layer, 0)
        missing = [position for position, expert in enumerate(experts)
                   if not (cache.is_resident(layer, expert) or (book is not None and base + expert in book.inflight))]
        if not missing:
            return experts, ()
        decided: dict[int, tuple[str, float]] = {}  # position -> (action, byte fraction), for those not loaded
        if placement is not None and placement.splits and self.timing is not None:  # without a clock a split has
            # nothing to weigh: every miss loads, as in the plain cache
            to_cpu = placement.split(layer, [(experts[p], counts[experts[p]] if counts else 1) for p in missing],
                                     self._split_view(layer, experts, missing, step, t_router))
            for position in missing:
                expert = experts[position]
                if expert in to_cpu:
                    decided[position] = (placement.cpu_action(counts[expert] if counts else 1), 1.0)
        elif handler is not None:
            for position in missing:
                expert = experts[position]
                if step is None:
                    rank, weight = position, weights[position] if weights else None
                else:
                    rank, weight = step.first[expert]
                    costs = self._miss_costs_for(counts[expert])
                action, fraction = handler.decide(layer, expert, rank, weight, costs)
                if action != LOAD:
                    decided[position] = (action, fraction)
        if not decided:
            return experts, ()
        kept = [expert for position, expert in enumerate(experts) if position not in decided]
        return kept, [(position, action, experts[position], fraction) for position, (action, fraction) in decided.items()]

    def _split_view(self, layer: int, experts: list[int], missing: list[int], step, t_router: float) -> SplitView:
        """The clocks a split reads at the router: the GPU after the step's resident experts, the CPU, the link."""
        timing = self.timing
        absent = {experts[p] for p in missing}
        if step is None:
            resident_s = (len(experts) - len(missing)) * timing.costs.expert_s
            gpu_expert_s = lambda tokens: timing.costs.expert_s  # noqa: E731 (one token per step)
        else:
            resident_s = sum(s for e, s in step.expert_s.items() if e not in absent)
            gpu_expert_s = timing.batch.expert_s
        h2d = self.memory.h2d
        return SplitView(t_router, t_router + resident_s, self.cpu_free,
                         h2d.demand_start_s(t_router) if h2d is not None else t_router,
                         h2d.spec.latency_s if h2d is not None else 0.0, h2d.spec.copy_engines if h2d is not None else 1,
                         gpu_expert_s, self._miss_costs_for)

    def _miss_costs_for(self, tokens: int) -> MissCosts:
        """The alternatives' costs for a missed expert serving `tokens` rows (the profile's for one row)."""
        if tokens == 1 or self.timing is None or self.timing.batch is None:
            return self.miss_costs
        return self.timing.batch.miss(tokens) or self.miss_costs

    def _handle_miss(self, action: str, t_router: float, arrivals: list, tokens: int = 1, first: bool = True) -> None:
        """Count and time a miss that is not fetched: run on the CPU (for its `tokens` rows; the step's `first` CPU
        expert pays the runtime's fixed cost of a CPU step), or skipped."""
        if action == SKIP:
            self.metrics.approximated_skipped += 1
        elif action == CPU:
            self.metrics.cpu_executed += 1
            if self.timing:
                costs = self._miss_costs_for(tokens)
                half_trip = costs.activation_round_trip_s / 2
                busy_s = costs.cpu_expert_s + (costs.cpu_step_overhead_s if first else 0.0)
                to_cpu = t_router + half_trip
                h2d = self.memory.h2d
                if h2d is not None:  # the activations on the D2H wire slow a link that is not full duplex
                    h2d.carry_opposite(to_cpu - costs.activation_d2h_wire_s, to_cpu)
                start = max(to_cpu, self.cpu_free)
                self.cpu_free = start + busy_s
                self.metrics.cpu_busy_s += busy_s
                arrivals.append((self.cpu_free + half_trip, 0.0))  # the GPU only adds the returned output
        else:
            raise ValueError(f"miss handler returned unknown action {action!r}")

    # -- the compiled path --------------------------------------------------------------------------------------

    def judge_compiled(self, chunks: Iterable[TraceChunk], twin: CompiledPolicy,
                       progress: Callable[[int], None] | None) -> None:
        """The replay of a plain cache, one chunk at a time through the policy's compiled twin (and the compiled
        clock, if timed): the same figures as `steps` (one layer step per row, its recorded experts in router
        order)."""
        model, timing = self.model, self.timing
        timer = self.step_timer() if timing is not None else None
        layers = model.moe_layers
        accesses = np.zeros(layers, dtype=np.int64)
        hits = np.zeros(layers, dtype=np.int64)
        tally = RowTally()
        for chunk in chunks:
            if not len(chunk):
                continue
            layer, experts = chunk.layer, chunk.experts
            hit = np.zeros(experts.shape, dtype=np.bool_)
            if twin.judge(layer, experts, hit) >= 0:
                raise RuntimeError("every evictable resident expert is protected")
            if timer is not None:
                timer.time(layer, experts, hit, timing.costs.non_expert_s, timing.costs.expert_s, self.expert_bytes,
                           self.memory.h2d.spec.issue_s)
            accesses += np.bincount(layer, weights=(experts >= 0).sum(axis=1), minlength=layers).astype(np.int64)
            hits += np.bincount(layer, weights=hit.sum(axis=1), minlength=layers).astype(np.int64)
            tally.add(chunk)
            if progress is not None:
                progress(len(chunk))
        if timer is not None:
            self.take_clock(timer)
        self.add_counts(accesses, hits, tally)

    def judge_curve(self, curve: HitCurve) -> None:
        """The hit-rate-only replay of a plain cache whose policy's hits at every size are in `curve` (the same
        trace's, simulator.stack_distance): each layer's hits read at its capacity, without reading the trace."""
        cache = self.cache
        if (curve.policy, curve.scope) != (cache.curve_policy(), cache.scope) or len(curve.hits) != self.model.moe_layers:
            raise RuntimeError(f"a {curve.policy} {curve.scope} curve cannot replay this cache")
        layers = np.arange(self.model.moe_layers)
        slots = np.array(cache.capacities if cache.scope == "layer" else cache.capacities * len(layers))
        tally = RowTally()
        tally.tokens, tally.sequences, tally.layer_steps = curve.tokens, curve.sequences, curve.layer_steps
        self.add_counts(curve.accesses, curve.hits[layers, slots], tally)

    def add_counts(self, accesses: np.ndarray, hits: np.ndarray, tally: RowTally,
                   judged: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Add a judged stretch's per-layer accesses and hits and its rows' counts to the metrics. `judged`: the
        per-layer (experts judged, of them resident) where a step's expert serves several rows (batched serving);
        None: each access is one expert judged."""
        metrics, per_layer = self.metrics, self.metrics.per_layer
        metrics.tokens += tally.tokens
        metrics.sequences += tally.sequences
        metrics.layer_steps += tally.layer_steps
        lookups, lookup_hits = judged if judged is not None else (accesses, hits)
        loads = lookups - lookup_hits
        per_layer.accesses = [a + int(b) for a, b in zip(per_layer.accesses, accesses)]
        per_layer.hits = [a + int(b) for a, b in zip(per_layer.hits, hits)]
        per_layer.bytes_h2d = [a + int(m) * self.expert_bytes for a, m in zip(per_layer.bytes_h2d, loads)]
        metrics.expert_lookups += int(lookups.sum())
        metrics.expert_hits += int(lookup_hits.sum())
        metrics.expert_loads += int(loads.sum())

    # -- results -------------------------------------------------------------------------------------------------

    def finish(self) -> Metrics:
        metrics, memory = self.metrics, self.memory
        per_layer = metrics.per_layer
        metrics.accesses = sum(per_layer.accesses)
        metrics.hits = sum(per_layer.hits)
        if self.book is not None:
            metrics.prefetch = self.book.finish()
        prefetch = metrics.prefetch
        metrics.bytes_demand = sum(per_layer.bytes_h2d)
        metrics.dram_accesses, metrics.dram_hits, metrics.bytes_nvme = memory.dram_accesses, memory.dram_hits, memory.bytes_nvme
        if memory.h2d is not None:
            memory.advance(self.now)  # prefetches still queued when the trace ends never start
            metrics.total_time_s = self.now
            links = memory.links()  # the links that end in GPU memory: host-to-device, and GDS reads
            metrics.bytes_h2d = sum(l.bytes_moved for l in links)
            metrics.transfers_h2d = sum(l.transfers for l in links)
            prefetch.bytes = sum(l.bytes_prefetch for l in links)
            demand_s, prefetch_s = memory.h2d.busy_until(self.now)
            metrics.h2d_busy_s = demand_s + prefetch_s
            metrics.h2d_busy_prefetch_s = prefetch_s
            storage = memory.gds if memory.direct else memory.nvme  # the link that reads the drive
            if memory.on_nvme and storage is not None:
                metrics.nvme_busy_s = sum(storage.busy_until(self.now))
        else:
            metrics.bytes_h2d = metrics.bytes_demand + prefetch.bytes
        return metrics
