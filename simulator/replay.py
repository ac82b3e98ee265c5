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
    the GPU computes the resident experts first, then each missed expert as soon as it has arrived
    stall = time the GPU waits for an arrival; the step ends when the last expert is computed

A Mixture-of-Lookup-Experts model (`kind` "mole") computes no expert: at the router a layer step looks up its
routed experts' rows for the token's id in the row cache (simulator.lut_cache), reads the missing rows in one
transfer, and ends when they have arrived.

The prefetcher (if any) is asked at the token's start and after each router; its requests queue on the link behind
demand fetches. In the hit-rate-only replay there is no clock: a prefetch lands at once (unbounded bandwidth).

A hit creates no event and a layer step yields one SimPy timeout, so the replay runs at arithmetic speed; SimPy is
the clock that further processes (NVMe queues, several sequences) will share.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import simpy

from policies.prefetchers.base import Prefetcher, PrefetchView
from simulator.cache import ExpertCache
from policies.miss_handling import CPU, LOAD, LOW_PRECISION, SKIP, MissHandler
from simulator.compute import MissCosts, StepCosts
from simulator.errors import InputError
from simulator.hardware import LinkSpec
from simulator.link import Link, Transfer
from simulator.lut_cache import RowCache
from simulator.memory import MemoryHierarchy
from simulator.metrics import LayerCounters, Metrics, PrefetchCounters
from traces.format import TraceChunk


@dataclass(frozen=True)
class Timing:
    """The timed part of a replay: per-step costs and the link that carries missed experts."""

    costs: StepCosts
    h2d: LinkSpec


@dataclass
class Token:
    """The rows of one token, in layer order."""

    sequence: int
    position: int
    token_id: int | None
    """Vocabulary id (a MoLE replay keys its table rows by it), from the token's first row; None if not traced."""
    layers: list[int]
    experts: list[list[int]]
    weights: list[list[float]] | None
    predictions: dict[str, list]


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
) -> Metrics:
    """Replay `chunks` (rows in trace order) through `cache`; timed if `timing` is given, else hit rate only.

    Offline policies (Belady, Static) must have been given the same rows through `cache.prepare` first; they cannot
    take prefetches (their view of the future is the demand stream). A `miss_handler` needs `miss_costs`; chunks
    must carry gate weights if the handler or the cache policy reads them. `memory` describes the tiers behind the
    GPU (default: every expert in DRAM, one host-to-device link from `timing`); its links carry the replay's clock.
    `timeline` = (first, last) token indices (0-based, over the whole replay) records what the GPU and the links
    did for those tokens into `Metrics.timeline` (timed replays only).
    """
    if prefetcher is not None and cache.offline:
        raise InputError("prefetch: offline cache policies (belady, static) cannot take prefetched experts")
    if miss_handler is not None and miss_costs is None:
        raise ValueError("a miss handler needs miss_costs")
    run = _Replay(cache, timing, prefetcher, miss_handler, miss_costs, memory, timeline)
    tokens = _tokens(chunks, progress)
    if timing is None:
        for _ in run.steps(tokens):
            pass
    else:
        env = simpy.Environment()
        env.process(run.clocked(env, tokens))
        env.run()
    return run.finish()


def _tokens(chunks: Iterable[TraceChunk], progress) -> Iterator[Token]:
    """Group trace rows into tokens (a token's rows are consecutive), carrying a token across chunk boundaries."""
    current: Token | None = None
    for chunk in chunks:
        names = list(chunk.predictions)
        columns = [chunk.predictions[n] for n in names]
        with_weights = chunk.weights is not None
        weights = chunk.weights.tolist() if with_weights else [None] * len(chunk)
        token_ids = chunk.token_id.tolist() if chunk.token_id is not None else [None] * len(chunk)
        rows = zip(chunk.sequence.tolist(), chunk.token.tolist(), token_ids, chunk.layer.tolist(), chunk.experts.tolist(), weights, *columns)
        for sequence, position, token_id, layer, experts, gate, *predicted in rows:
            if -1 in experts:
                if with_weights:
                    gate = [w for e, w in zip(experts, gate) if e >= 0]
                experts = [e for e in experts if e >= 0]
            if current is None or position != current.position or sequence != current.sequence:
                if current is not None:
                    yield current
                current = Token(sequence, position, token_id, [], [], [] if with_weights else None, {n: [] for n in names})
            current.layers.append(layer)
            current.experts.append(experts)
            if with_weights:
                current.weights.append(gate)
            for name, value in zip(names, predicted):
                current.predictions[name].append(value)
        if progress is not None:
            progress(len(chunk))
    if current is not None:
        yield current


class _Replay:
    def __init__(self, cache: ExpertCache, timing: Timing | None, prefetcher: Prefetcher | None,
                 miss_handler: MissHandler | None, miss_costs: MissCosts | None, memory: MemoryHierarchy | None,
                 timeline: tuple[int, int] | None = None):
        model = cache.model
        self.cache = cache
        self.timing = timing
        if memory is None:
            memory = MemoryHierarchy(Link(timing.h2d) if timing else None, model.experts_per_layer)
        self.memory = memory
        self.link = memory.h2d
        self.window = timeline if timing else None
        self.events: list | None = None  # the timeline while the current token is inside the window
        self.lookup = model.kind == "mole"
        if self.lookup and (prefetcher is not None or miss_handler is not None):
            raise InputError("model.kind=mole: lookup experts are fetched by token id; no prefetcher or miss handler")
        if self.lookup and cache.policies[0].name != "lru":
            raise InputError(f"policy: model.kind=mole caches table rows by LRU (policy=lru), not {cache.policies[0].name}")
        self.rows = RowCache(cache) if self.lookup else None
        self.prefetcher = prefetcher
        self.miss_handler = miss_handler
        self.miss_costs = miss_costs
        self.cpu_free = 0.0  # when the CPU finishes the experts it was given (Fiddler-style execution)
        self.expert_bytes = model.bytes_per_expert
        self.experts_per_layer = model.experts_per_layer
        self.metrics = Metrics(timed=timing is not None, per_layer=LayerCounters.zeros(model.moe_layers))
        self.prefetch = PrefetchCounters()
        self.now = 0.0
        # Prefetch bookkeeping, by model-wide key layer·experts_per_layer + expert:
        self.inflight: dict[int, Transfer] = {}  # issued, not yet inserted into the cache
        self.inflight_order: deque[Transfer] = deque()  # the same, in issue order (= arrival order)
        self.unused: set[int] = set()  # prefetched, in the cache, not yet used
        self.requested: set[int] = set()  # the prefetcher's latest request: protected from other prefetches
        self._upcoming: deque[Token] = deque()
        self._tokens: Iterator[Token] | None = None
        if prefetcher is not None:
            self.view = PrefetchView(model, cache, self.link, prefetcher.oracle, self._future)
            if timing:
                self.view.layer_compute_s = timing.costs.non_expert_s + model.top_k * timing.costs.expert_s
            cache.track_evictions = True

    # -- driving -------------------------------------------------------------------------------------------------

    def clocked(self, env: simpy.Environment, tokens: Iterable[Token]):
        """The SimPy process: one timeout per layer step, to the step's end."""
        for end in self.steps(tokens):
            if end == math.inf:
                continue  # a transfer that never arrives (zero bandwidth): the clock cannot pass infinity
            yield env.timeout(max(0.0, end - env.now))  # env.now may sit one rounding above `end`

    def steps(self, tokens: Iterable[Token]) -> Iterator[float]:
        """Run every layer step in order; yields each step's end time (0 without a clock)."""
        self._tokens = iter(tokens)
        metrics = self.metrics
        cache = self.cache
        prefetcher = self.prefetcher
        last_sequence = None
        previous: dict[int, list[int]] | None = None
        while True:
            token = self._next_token()
            if token is None:
                break
            if token.sequence != last_sequence:
                (self.rows if self.lookup else cache).start_sequence(token.sequence, first=last_sequence is None)
                if prefetcher is not None:
                    prefetcher.start_sequence()
                metrics.sequences += 1
                last_sequence = token.sequence
                previous = None
            if self.window is not None:
                self._record_token(metrics.tokens)
            metrics.tokens += 1
            if prefetcher is not None:
                self._begin_token(token, previous)
            if self.lookup:
                if token.token_id is None:
                    raise ValueError("model.kind=mole: the trace chunks carry no token_id")
                for layer, experts in zip(token.layers, token.experts):
                    self._lookup_step(layer, experts, token.token_id)
                    yield self.now
                continue
            weights = token.weights or [None] * len(token.layers)
            for index, (layer, experts, gate) in enumerate(zip(token.layers, token.experts, weights)):
                self._layer_step(layer, experts, gate, index == 0 and prefetcher is not None)
                yield self.now
            if prefetcher is not None:
                previous = dict(zip(token.layers, token.experts))

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

    # -- one layer step ------------------------------------------------------------------------------------------

    def _begin_token(self, token: Token, previous) -> None:
        view = self.view
        self._current = token
        view.sequence, view.position = token.sequence, token.position
        view.layer, view.experts = -1, []
        view.token_routing = {}
        view.previous_routing = previous
        view.predictions = {name: dict(zip(token.layers, rows)) for name, rows in token.predictions.items()}

    def _layer_step(self, layer: int, experts: list[int], weights: list[float] | None, token_start: bool) -> None:
        metrics, timing, cache = self.metrics, self.timing, self.cache
        start_issue_s = 0.0  # issuing the token-start prefetches delays the first layer's work
        if token_start:
            view = self.view
            view.now_s = self.now
            start_issue_s = self._issue(self.prefetcher.at_token_start(view), self.now, layer, experts)
        t_router = self.now + start_issue_s + timing.costs.non_expert_s if timing else 0.0
        if self.inflight:
            self._land(t_router, layer, experts)
        if weights is not None and cache.uses_gate_weights:
            cache.observe_gates(layer, experts, weights)
        k = len(experts)
        expert_s = timing.costs.expert_s if timing else 0.0
        loaded, handled = experts, ()
        if self.miss_handler is not None:
            loaded, handled = self._triage(layer, experts, weights)
        misses = cache.access(layer, loaded)
        if self.unused:
            self._count_useful(layer, experts, misses)
        arrivals, demand_bytes, issue_s = self._fetch(layer, misses, handled, experts, t_router, expert_s)
        if cache.evicted:
            self._count_evictions()
        per_layer = metrics.per_layer
        per_layer.accesses[layer] += k
        per_layer.hits[layer] += len(loaded) - len(misses)
        per_layer.bytes_h2d[layer] += demand_bytes
        metrics.layer_steps += 1
        if self.prefetcher is not None:
            view = self.view
            view.now_s = t_router
            view.layer, view.experts = layer, experts
            view.token_routing[layer] = experts
            issue_s += self._issue(self.prefetcher.after_router(view), t_router, layer, experts)
        if timing:
            self._compute(layer, t_router, issue_s, (len(loaded) - len(misses)) * expert_s, arrivals, start_issue_s)

    def _fetch(self, layer, misses, handled, experts, t_router, expert_s) -> tuple[list, int, float]:
        """Bring in every expert not resident at the router, in router order (the order they go on the link):
        wait for a late prefetch, fetch on demand, or let the miss handler's choice stand. Returns the arrivals
        (time, GPU compute then needed), the demand bytes booked and the compute stream's time to issue them."""
        metrics, timing = self.metrics, self.timing
        base = layer * self.experts_per_layer
        arrivals, demand_bytes, issue_s = [], 0, 0.0
        if handled:
            outstanding = sorted([(experts.index(e), LOAD, e, 1.0) for e in misses] + handled)
        elif self.inflight:
            outstanding = [(0, LOAD, e, 1.0) for e in misses]
        else:  # the common case: every miss is a plain demand fetch
            outstanding = ()
        fetches = [] if outstanding else [(e, self.expert_bytes) for e in misses]  # (expert, bytes), router order
        for _, action, expert, fraction in outstanding:
            if action == LOAD:
                transfer = self.inflight.pop(base + expert, None) if self.inflight else None
                if transfer is None:
                    fetches.append((expert, self.expert_bytes))
                    continue
                self.prefetch.late += 1
                metrics.per_layer.prefetch_late[layer] += 1
                if timing:
                    transfer.link.advance(t_router)
                    if transfer.end_s is None:  # still queued: it goes as a demand fetch
                        demand_bytes += self.expert_bytes
                    arrival = transfer.link.promote(transfer, t_router)
                    self.prefetch.late_wait_s += arrival - t_router
                    arrivals.append((arrival, expert_s))
            elif action == LOW_PRECISION:
                metrics.approximated_low_precision += 1
                fetches.append((expert, int(round(self.expert_bytes * fraction))))
            else:
                self._handle_miss(action, t_router, arrivals)
        if fetches:
            demand_bytes += sum(nbytes for _, nbytes in fetches)
            if timing or self.memory.on_nvme:  # without a clock, only the DRAM tier's counts need the call
                booked = self.memory.demand(layer, fetches, t_router)
                if timing:
                    arrivals.extend((arrival, expert_s) for arrival in booked)
                    issue_s = self.memory.issue_s
        return arrivals, demand_bytes, issue_s

    def _compute(self, layer: int, t_router: float, issue_s: float, resident_s: float, arrivals: list,
                 start_issue_s: float = 0.0) -> None:
        """The GPU issues the step's demand fetches (and the prefetches asked for after the router), computes the
        resident experts, then each arrival as it lands; advances the clock to the end. `start_issue_s`: time spent
        issuing the token-start prefetches before the step's non-expert work."""
        metrics = self.metrics
        compute = issue_s + resident_s
        gpu = t_router + compute
        events = self.events
        if events is not None:
            if start_issue_s:
                events.append(("gpu", self.now, self.now + start_issue_s, layer, "issue prefetches"))
            events.append(("gpu", self.now + start_issue_s, t_router, layer, "non-expert"))
            if issue_s:
                events.append(("gpu", t_router, t_router + issue_s, layer, "issue fetches"))
            events.append(("gpu", t_router + issue_s, gpu, layer, "resident experts"))
        stall = 0.0
        for arrival, compute_s in sorted(arrivals):
            if arrival > gpu:
                stall += arrival - gpu
                gpu = arrival
            if events is not None:
                events.append(("gpu", gpu, gpu + compute_s, layer, "fetched expert"))
            gpu += compute_s
            compute += compute_s
        metrics.compute_time_s += start_issue_s + self.timing.costs.non_expert_s + compute
        metrics.stall_time_s += stall
        metrics.per_layer.stall_s[layer] += stall
        self.now = gpu

    def _lookup_step(self, layer: int, experts: list[int], token_id: int) -> None:
        """A Mixture-of-Lookup-Experts step: at the router, the routed experts' rows for this token id that the row
        cache lacks come from the experts' home in one read; no expert is computed. Each row is one access."""
        metrics, timing = self.metrics, self.timing
        t_router = self.now + timing.costs.non_expert_s if timing else 0.0
        misses = self.rows.access(layer, experts, token_id)
        nbytes = len(misses) * self.cache.model.lut_row_bytes
        metrics.per_layer.accesses[layer] += len(experts)
        metrics.per_layer.hits[layer] += len(experts) - len(misses)
        metrics.per_layer.bytes_h2d[layer] += nbytes
        metrics.layer_steps += 1
        if timing:
            arrival = self.memory.demand(layer, [(misses[0], nbytes)], t_router)[0] if misses else t_router
            issued = t_router + (self.memory.issue_s if misses else 0.0)
            stall = max(0.0, arrival - issued)
            if self.events is not None:
                self.events.append(("gpu", self.now, t_router, layer, "non-expert"))
                if issued > t_router:
                    self.events.append(("gpu", t_router, issued, layer, "issue fetches"))
            metrics.compute_time_s += self.timing.costs.non_expert_s + (issued - t_router)
            metrics.stall_time_s += stall
            metrics.per_layer.stall_s[layer] += stall
            self.now = issued + stall
        elif self.memory.on_nvme and misses:
            self.memory.demand(layer, [(misses[0], nbytes)], t_router)

    # -- miss handling -------------------------------------------------------------------------------------------

    def _triage(self, layer: int, experts: list[int], weights):
        """Split a step's experts into those that go through the cache (resident, on their way, or to be loaded)
        and the misses the handler deals with otherwise: (kept experts, [(router rank, action, expert, byte fraction)])."""
        cache, handler, costs = self.cache, self.miss_handler, self.miss_costs
        base = layer * self.experts_per_layer
        kept, handled = [], []
        for rank, expert in enumerate(experts):
            if cache.is_resident(layer, expert) or base + expert in self.inflight:
                kept.append(expert)
                continue
            action, fraction = handler.decide(layer, expert, rank, weights[rank] if weights else None, costs)
            if action == LOAD:
                kept.append(expert)
            else:
                handled.append((rank, action, expert, fraction))
        return kept, handled

    def _handle_miss(self, action: str, t_router: float, arrivals: list) -> None:
        """Count and time a miss that is not fetched: run on the CPU, or skipped."""
        if action == SKIP:
            self.metrics.approximated_skipped += 1
        elif action == CPU:
            self.metrics.cpu_executed += 1
            if self.timing:
                half_trip = self.miss_costs.activation_round_trip_s / 2
                start = max(t_router + half_trip, self.cpu_free)
                self.cpu_free = start + self.miss_costs.cpu_expert_s
                arrivals.append((self.cpu_free + half_trip, 0.0))  # the GPU only adds the returned output
        else:
            raise ValueError(f"miss handler returned unknown action {action!r}")

    # -- prefetch bookkeeping ------------------------------------------------------------------------------------

    def _issue(self, requests, ready_s: float, step_layer: int, step_experts: list[int]) -> float:
        """Queue the prefetcher's requests (priority order); without a clock they land at once. Returns the compute
        stream's time to issue them (each link's `issue_s`, as for demand fetches)."""
        issue_s = 0.0
        cache, per = self.cache, self.experts_per_layer
        requests = list(requests)
        cache.mark_prefetch_candidates(requests)
        self.requested = {layer * per + expert for layer, expert in requests}
        for layer, expert in requests:
            key = layer * per + expert
            if key in self.inflight or cache.is_resident(layer, expert):
                continue
            self.prefetch.issued += 1
            if self.timing:
                transfer = self.memory.prefetch(layer, expert, key, self.expert_bytes, ready_s)
                issue_s += self.memory.issue_s
                self.inflight[key] = transfer
                self.inflight_order.append(transfer)
            else:
                self.memory.in_dram(layer, expert)
                self.prefetch.bytes += self.expert_bytes
                self._insert_prefetched(key, step_layer, step_experts)
        return issue_s

    def _land(self, now: float, step_layer: int, step_experts: list[int]) -> None:
        """Insert every prefetch that has arrived by `now`, in arrival order."""
        self.memory.advance(now)
        order, inflight = self.inflight_order, self.inflight
        while order:
            transfer = order[0]
            if inflight.get(transfer.key) is not transfer:
                order.popleft()  # promoted to a demand fetch meanwhile
                continue
            if transfer.end_s is None or transfer.end_s > now or transfer.end_s == math.inf:
                return
            order.popleft()
            del inflight[transfer.key]
            self._insert_prefetched(transfer.key, step_layer, step_experts)

    def _insert_prefetched(self, key: int, step_layer: int, step_experts: list[int]) -> None:
        layer, expert = divmod(key, self.experts_per_layer)
        if self.cache.admit_prefetch(layer, expert, step_layer, step_experts, self.requested):
            self.unused.add(key)
        else:
            self.prefetch.wasted += 1  # no slot it could take: the bytes crossed for nothing
        if self.cache.evicted:
            self._count_evictions()

    def _count_useful(self, layer: int, experts: list[int], misses: list[int]) -> None:
        unused = self.unused
        base = layer * self.experts_per_layer
        for expert in experts:
            key = base + expert
            if key in unused and expert not in misses:
                unused.discard(key)
                self.prefetch.useful += 1
                self.metrics.per_layer.prefetch_useful[layer] += 1

    def _count_evictions(self) -> None:
        evicted = self.cache.evicted
        for key in evicted:
            if key in self.unused:
                self.unused.discard(key)
                self.prefetch.wasted += 1
        evicted.clear()

    # -- results -------------------------------------------------------------------------------------------------

    def finish(self) -> Metrics:
        metrics, link, prefetch = self.metrics, self.link, self.prefetch
        per_layer = metrics.per_layer
        metrics.accesses = sum(per_layer.accesses)
        metrics.hits = sum(per_layer.hits)
        prefetch.unused_at_end = len(self.unused) + len(self.inflight)
        metrics.bytes_demand = sum(per_layer.bytes_h2d)
        memory = self.memory
        metrics.dram_accesses, metrics.dram_hits, metrics.bytes_nvme = memory.dram_accesses, memory.dram_hits, memory.bytes_nvme
        if link is not None:
            memory.advance(self.now)  # prefetches still queued when the trace ends never start
            metrics.total_time_s = self.now
            links = memory.links()
            metrics.bytes_h2d = sum(l.bytes_moved for l in links)
            metrics.transfers_h2d = sum(l.transfers for l in links)
            metrics.h2d_busy_s = sum(l.busy_s for l in links)
            metrics.h2d_busy_prefetch_s = sum(l.busy_prefetch_s for l in links)
            prefetch.bytes = sum(l.bytes_prefetch for l in links)
            if memory.nvme is not None:
                metrics.nvme_busy_s = memory.nvme.busy_s
        else:
            metrics.bytes_h2d = metrics.bytes_demand + prefetch.bytes
        metrics.prefetch = prefetch
        return metrics
