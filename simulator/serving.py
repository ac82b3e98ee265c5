"""Batched serving: requests arrive, a scheduler forms iterations (continuous batching), and each iteration runs
every MoE layer once over its rows (README "Batched serving").

A layer step of an iteration covers the rows (tokens) of that iteration that reach the layer. U = the distinct
experts they route to, in order of first appearance (rows in scheduler order, router order within a row); the step
judges U against the cache (simulator.replay's `_layer_step`, with a `BatchStep`), so each (row, expert) access
shares its expert's outcome and one iteration of one row is exactly a token of the token-by-token replay. An expert
serving n rows costs the roofline of n tokens; the non-expert part costs the roofline of the step's rows plus their
attention over their contexts (simulator.compute.BatchCosts).

Prefetchers are asked for every row, in row order, at the iteration's start and after each router, each seeing its
own row's token (its previous routing is its request's latest computed token). A prefetch never evicts an expert
of the running step's U; when U fills the cache, a prefetch that lands then is dropped.

The clock: one SimPy process runs the iterations and yields one timeout per layer step; when nothing can run it
waits for the next arrival. Arrivals are moved to the waiting queue at an iteration's start when they have arrived
by then (arrival ≤ start).

KV memory (`KvMemory`): `static` reserves max_batch requests at their longest context up front (the expert cache
keeps its size); `dynamic` admits a request when its KV at its full length fits beside the running requests' and
the smallest expert cache (top_k per instance), and before each iteration gives the expert cache what the KV
written so far leaves (never more than its configured size), evicting by its policy.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from itertools import chain
from dataclasses import dataclass

import numpy as np
import simpy

from simulator.cache import ExpertCache
from simulator.compute import BatchCosts, MissCosts, Roofline
from simulator.errors import InputError
from simulator.memory import MemoryHierarchy
from simulator.metrics import Metrics
from simulator.miss_handler import MissHandler
from simulator.placement import Placement
from simulator.prefetcher import Prefetcher, PrefetchView
from simulator.replay import Timing, _name, _Replay
from simulator.requests import Request
from simulator.scheduler import Scheduler, ServeLimits, ServeState
from simulator.timeline import TimelineEvent
from simulator.trace_rows import RowTally, Token



@dataclass(frozen=True)
class KvMemory:
    """How the KV cache shares GPU memory with the expert cache."""

    mode: str = "static"
    """`static`: a reserve set aside before the run; `dynamic`: grows with the running requests."""
    kv_bytes_per_token: int = 0
    budget_bytes: int = 0
    """dynamic: GPU memory for KV and experts together (what the non-expert weights leave)."""
    bytes_per_expert: int = 1

    def __post_init__(self):
        if self.mode not in ("static", "dynamic"):
            raise InputError(f"serve.kv: unknown mode {self.mode!r} (known: dynamic, static)")


class _Row:
    """One token of an iteration, as a prefetcher sees it."""

    __slots__ = ("sequence", "position", "previous", "routing", "predictions")

    def __init__(self, request: Request, token: Token, previous):
        self.sequence, self.position = token.sequence, token.position
        self.previous = previous
        self.routing: dict[int, list[int]] = {}
        self.predictions = {name: dict(zip(token.layers, rows)) for name, rows in token.predictions.items()}

    def show(self, view: PrefetchView) -> None:
        view.sequence, view.position = self.sequence, self.position
        view.token_routing, view.previous_routing, view.predictions = self.routing, self.previous, self.predictions


class BatchStep:
    """A layer step over several rows: each expert of U with the rows it serves and its cost for them."""

    __slots__ = ("counts", "accesses", "expert_s", "first", "_entries", "_rows")

    def __init__(self, entries: list[tuple[int, list[int], list[float] | None]], rows: list[_Row] | None,
                 costs: BatchCosts | None):
        counts: dict[int, int] = {}
        first: dict[int, tuple[int, float | None]] = {}
        for _, experts, gate in entries:
            for rank, expert in enumerate(experts):
                if expert in counts:
                    counts[expert] += 1
                else:
                    counts[expert] = 1
                    first[expert] = (rank, gate[rank] if gate else None)
        self.counts = counts
        """Expert -> rows of the step that route to it (U is its keys, in first-appearance order)."""
        self.accesses = sum(counts.values())
        self.expert_s = {expert: costs.expert_s(n) for expert, n in counts.items()} if costs is not None else {}
        """Expert -> its compute time for its rows (empty without a clock)."""
        self.first = first
        """Expert -> (router rank, gate weight) in the first row that routes to it."""
        self._entries = entries
        self._rows = rows

    @property
    def rows(self) -> list[_Row]:
        return [self._rows[index] for index, _, _ in self._entries]

    def routed(self) -> Iterator[tuple[_Row, list[int]]]:
        return ((self._rows[index], experts) for index, experts, _ in self._entries)

    def gates(self) -> Iterator[tuple[list[int], list[float] | None]]:
        return ((experts, gate) for _, experts, gate in self._entries)


def serve(
    requests: list[Request],
    cache: ExpertCache,
    timing: Timing | None = None,
    *,
    scheduler: Scheduler,
    limits: ServeLimits = ServeLimits(),
    kv: KvMemory = KvMemory(),
    prefetcher: Prefetcher | None = None,
    miss_handler: MissHandler | None = None,
    miss_costs: MissCosts | None = None,
    memory: MemoryHierarchy | None = None,
    timeline: tuple[int, int] | None = None,
    placement: Placement | None = None,
    compiled: bool = True,
) -> Metrics:
    """Serve `requests` (each a sequence of the trace) through `cache` with continuous batching; timed if `timing`
    is given, else hit rate only (then every request must arrive at 0). See the module docstring.

    A plain cache (simulator.replay's `_Replay.plain`; timed: one serial link, no timeline) with static KV memory
    whose policy has a compiled twin has its steps judged by the twin, and timed by the compiled clock, with the same
    figures (`compiled=False`: by the Python policies and SimPy); the scheduler still forms every iteration."""
    if cache.offline:
        raise InputError(f"policy={_name(cache.policies[0])}: an offline policy needs the exact key stream before the "
                         "replay, which batching forms as it runs; serve it token by token (serve=none)")
    if cache.reset_per_sequence:
        raise InputError("cache.reset_per_sequence: batched requests share the cache; it cannot be emptied per sequence")
    if prefetcher is not None and prefetcher.oracle:
        raise InputError(f"prefetch={_name(prefetcher)}: an oracle reads the future of one token stream; batched "
                         "serving interleaves requests (serve=none)")
    if cache.model.kind == "mole":
        raise InputError("model.kind=mole: the batched replay computes experts; replay a MoLE model token by token (serve=none)")
    if timing is None and any(r.arrival_s > 0 for r in requests):
        raise InputError("serve.arrival: arrivals other than offline need the clock (replay.timed=true)")
    if timing is not None and timing.batch is None:  # a hand-set machine: every step costs what `costs` says
        costs = timing.costs
        timing = Timing(costs, timing.h2d, BatchCosts(Roofline(costs.expert_s, 0.0, 0.0), Roofline(costs.non_expert_s, 0.0, 0.0)))
    run = _Replay(cache, timing, prefetcher, miss_handler, miss_costs, memory, timeline, placement)
    server = _Server(run, requests, scheduler, limits, kv)
    if compiled and run.plain() and kv.mode == "static" and (timing is None or run.compiled_clock()):
        twin = cache.compiled()
        if twin is not None:
            server.judged = _TwinSteps(run, twin)
    if timing is None or server.judged is not None:  # the compiled clock needs no SimPy: it only carries step ends
        for _ in server.steps():
            pass
        if server.judged is not None:
            server.judged.finish()
    else:
        env = simpy.Environment()
        env.process(run.clocked(env, server.steps()))
        env.run()
    metrics = run.finish()
    metrics.requests = [server.request_row(r) for r in requests]
    metrics.iterations = server.log
    return metrics


class _Server:
    def __init__(self, run: _Replay, requests: list[Request], scheduler: Scheduler, limits: ServeLimits, kv: KvMemory):
        self.run = run
        self.scheduler = scheduler
        self.kv = kv
        self.pending = deque(sorted(requests, key=lambda r: r.arrival_s))  # stable: ties keep trace order
        self.state = ServeState(limits, self._fits_kv, self._admitted)
        cache = run.cache
        self.configured_slots = cache.capacities[0] if len(set(cache.capacities)) == 1 else None
        if kv.mode == "dynamic" and self.configured_slots is None:
            raise InputError("serve.kv=dynamic: the expert cache gives up slots evenly; it needs one capacity for every "
                             "layer (cache.sizing=uniform)")
        self.instances = len(cache.capacities)  # policy instances: one per MoE layer, or one global
        self.log: list[tuple] = []
        """One row per iteration (ITERATION_COLUMNS)."""
        self.judged: _TwinSteps | None = None
        """Where the iterations' layer steps go when a compiled twin judges them (else `_Replay._layer_step`)."""

    # -- KV memory -----------------------------------------------------------------------------------------------

    def _kv_final_bytes(self, request: Request) -> int:
        return len(request.tokens) * self.kv.kv_bytes_per_token

    def _fits_kv(self, request: Request) -> bool:
        kv = self.kv
        if kv.mode == "static":
            return True
        least = self.run.model.top_k * self.instances * kv.bytes_per_expert
        held = sum(self._kv_final_bytes(r) for r in self.state.running)
        fits = held + self._kv_final_bytes(request) + least <= kv.budget_bytes
        if not fits and not self.state.running:
            raise InputError(f"serve.kv=dynamic: sequence {request.sequence}'s KV cache ({self._kv_final_bytes(request):,} "
                             f"bytes, {len(request.tokens):,} tokens) and the smallest expert cache do not fit the GPU")
        return fits

    def _admitted(self, request: Request) -> None:
        if self.run.prefetcher is not None:
            self.run.prefetcher.start_sequence()
        self.run.metrics.sequences += 1

    def _expert_slots(self, work: list[tuple[Request, int]]) -> tuple[int, int]:
        """(KV bytes held once this iteration has written its tokens, expert cache slots in all); under
        `dynamic`, resizes the expert cache to what that KV leaves."""
        kv, cache = self.kv, self.run.cache
        written = {id(r): n for r, n in work}
        kv_bytes = sum((r.done + written.get(id(r), 0)) for r in self.state.running) * kv.kv_bytes_per_token
        if kv.mode == "dynamic":
            slots = (kv.budget_bytes - kv_bytes) // kv.bytes_per_expert
            per_instance = min(self.configured_slots, slots // self.instances)
            if per_instance != cache.capacities[0]:
                cache.resize(per_instance)
                if cache.evicted and self.run.book is not None:
                    self.run.book.count_evictions()
        return kv_bytes, sum(cache.capacities)

    # -- driving -------------------------------------------------------------------------------------------------

    def steps(self) -> Iterator[float]:
        """Run the iterations; yields each layer step's end (and the next arrival when idle)."""
        run, state, pending = self.run, self.state, self.pending
        while pending or state.waiting or state.running:
            while pending and pending[0].arrival_s <= run.now:
                state.waiting.append(pending.popleft())
            state.now_s = run.now
            work = self.scheduler.schedule(state)
            if not work:
                if state.running or (state.waiting and not pending):
                    raise RuntimeError(f"scheduler {_name(self.scheduler)} formed an empty iteration with requests to run")
                if pending[0].arrival_s > run.now:
                    run.metrics.idle_time_s += pending[0].arrival_s - run.now
                    run.now = pending[0].arrival_s
                yield run.now
                continue
            self._check(work)
            kv_bytes, slots = self._expert_slots(work)
            start = run.now
            tokens = sum(n for _, n in work)
            yield from self._iteration(work)
            prefill = 0
            for request, n in work:
                prefill += min(n, request.prompt_left)
                request.done += n
                if request.first_token_s is None and request.done >= request.first_token_at:
                    request.first_token_s = run.now
                if request.finished:
                    request.finish_s = run.now
                    state.running.remove(request)
            self.log.append((start, run.now, len(work), tokens, prefill, kv_bytes, slots))
            if run.events is not None:
                run.events.append(TimelineEvent("iteration", start, run.now, tokens, f"{len(work)} requests"))

    def _check(self, work: list[tuple[Request, int]]) -> None:
        running = {id(r) for r in self.state.running}
        tokens = 0
        for request, n in work:
            if id(request) not in running or not 1 <= n <= len(request.tokens) - request.done:
                raise RuntimeError(f"scheduler {_name(self.scheduler)}: ({request.sequence}, {n}) is not work of a running request")
            tokens += n
        if tokens > self.state.limits.max_batched_tokens:
            raise RuntimeError(f"scheduler {_name(self.scheduler)}: {tokens} tokens exceed max_batched_tokens")

    def _iteration(self, work: list[tuple[Request, int]]) -> Iterator[float]:
        run = self.run
        metrics, prefetcher, batch = run.metrics, run.prefetcher, run.timing.batch if run.timing else None
        rows = [(request, request.tokens[i], i + 1) for request, n in work for i in range(request.done, request.done + n)]
        if run.window is not None:
            run._record_token(metrics.tokens)
        metrics.tokens += len(rows)
        if self.judged is not None:
            self.judged.iteration(rows)
            yield run.now
            return
        if len(rows) == 1:  # one token: the token-by-token step, its context costed
            request, token, context = rows[0]
            if prefetcher is not None:
                run._begin_token(token, request.previous)
            weights = token.weights or [None] * len(token.layers)
            non_expert_s = batch.non_expert_s(1, context) if batch is not None else None
            for index, (layer, experts, gate) in enumerate(zip(token.layers, token.experts, weights)):
                run._layer_step(layer, experts, gate, index == 0 and prefetcher is not None, None, non_expert_s)
                yield run.now
            if prefetcher is not None:
                request.previous = dict(zip(token.layers, token.experts))
            return
        states = None
        if prefetcher is not None:
            states, latest = [], {}
            for request, token, _ in rows:
                state = _Row(request, token, latest.get(id(request), request.previous))
                latest[id(request)] = state.routing
                states.append(state)
        by_layer: dict[int, list] = {}
        contexts: dict[int, int] = {}
        for index, (_, token, context) in enumerate(rows):
            weights = token.weights
            for j, (layer, experts) in enumerate(zip(token.layers, token.experts)):
                entry = (index, experts, weights[j] if weights else None)
                if layer in by_layer:
                    by_layer[layer].append(entry)
                    contexts[layer] += context
                else:
                    by_layer[layer] = [entry]
                    contexts[layer] = context
        for index, layer in enumerate(sorted(by_layer)):
            entries = by_layer[layer]
            step = BatchStep(entries, states, batch)
            non_expert_s = batch.non_expert_s(len(entries), contexts[layer]) if batch is not None else None
            run._layer_step(layer, list(step.counts), None, index == 0 and prefetcher is not None, step, non_expert_s)
            yield run.now
        if states is not None:
            for state, (request, _, _) in zip(states, rows):
                request.previous = state.routing

    # -- results -------------------------------------------------------------------------------------------------

    @staticmethod
    def request_row(r: Request) -> tuple:
        queued = r.admitted_s - r.arrival_s if r.admitted_s is not None else None
        return (r.sequence, r.arrival_s, r.first_token_s, r.finish_s, r.prompt_tokens, r.output_tokens, queued)


class _TwinSteps:
    """The layer steps of plain iterations, judged by the cache policy's compiled twin (and timed by the compiled
    clock, if timed): the counts and times `_Replay._layer_step` gives (each expert of U judged once, its hit counted
    for every row it serves; a one-row iteration costed as a token of the token-by-token replay). Hit rate only, the
    steps are judged a block at a time; timed, an iteration at a time, since the next one's formation may read the
    clock (arrivals, the scheduler)."""

    BLOCK = 1 << 14
    """Layer steps gathered before the twin judges them (hit rate only)."""

    def __init__(self, run: _Replay, twin):
        self.run, self.twin = run, twin
        self.timer = run.step_timer() if run.timing is not None else None
        self.layers: list[int] = []
        self.experts: list[list[int]] = []
        self.counts: list[list[int]] = []
        self.expert_s: list[list[float]] = []  # timed: each entry's compute time
        self.non_expert_s: list[float] = []  # timed: each step's non-expert work
        self.uniform: list[bool] = []  # timed: whether the step is a token's (see simulator.compiled_timing)

    def iteration(self, rows: list[tuple[Request, Token, int]]) -> None:
        """Gather one iteration's steps, layer by layer (as `_Server._iteration` forms them)."""
        run, timed = self.run, self.timer is not None
        batch = run.timing.batch if timed else None
        if len(rows) == 1:
            _, token, context = rows[0]
            for layer, experts in zip(token.layers, token.experts):
                self._add(layer, experts, [1] * len(experts))
                if timed:
                    self.expert_s.append([run.timing.costs.expert_s] * len(experts))
                    self.non_expert_s.append(batch.non_expert_s(1, context))
                    self.uniform.append(True)
        else:
            by_layer: dict[int, Counter] = {}  # layer -> U in first-appearance order, with the rows per expert
            contexts: dict[int, list[int]] = {}  # layer -> [rows, their context tokens]
            for _, token, context in rows:
                for layer, experts in zip(token.layers, token.experts):
                    counts = by_layer.get(layer)
                    if counts is None:
                        by_layer[layer] = Counter(experts)
                        contexts[layer] = [1, context]
                    else:
                        counts.update(experts)
                        contexts[layer][0] += 1
                        contexts[layer][1] += context
            for layer in sorted(by_layer):
                counts = by_layer[layer]
                self._add(layer, list(counts), list(counts.values()))
                if timed:
                    self.expert_s.append([batch.expert_s(n) for n in counts.values()])
                    self.non_expert_s.append(batch.non_expert_s(*contexts[layer]))
                    self.uniform.append(False)
        if timed or len(self.layers) >= self.BLOCK:
            self.flush()

    def _add(self, layer: int, experts: list[int], counts: list[int]) -> None:
        self.layers.append(layer)
        self.experts.append(experts)
        self.counts.append(counts)

    def flush(self) -> None:
        """Judge (and time) the gathered steps and add their counts to the replay's metrics."""
        steps = len(self.layers)
        if not steps:
            return
        lengths = np.fromiter(map(len, self.experts), dtype=np.int64, count=steps)
        row = np.repeat(np.arange(steps), lengths)
        column = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        experts = np.full((steps, int(lengths.max())), -1, dtype=np.int16)
        counts = np.zeros(experts.shape, dtype=np.int64)
        experts[row, column] = np.fromiter(chain.from_iterable(self.experts), dtype=np.int16, count=len(row))
        counts[row, column] = np.fromiter(chain.from_iterable(self.counts), dtype=np.int64, count=len(row))
        layer = np.array(self.layers, dtype=np.int16)
        hit = np.zeros(experts.shape, dtype=np.bool_)
        if self.twin.judge(layer, experts, hit) >= 0:
            raise RuntimeError("every evictable resident expert is protected")
        run = self.run
        if self.timer is not None:
            expert_s = np.zeros(experts.shape)
            expert_s[row, column] = np.fromiter(chain.from_iterable(self.expert_s), dtype=np.float64, count=len(row))
            self.timer.now = run.now
            self.timer.time(layer, experts, hit, self.non_expert_s, expert_s, run.expert_bytes,
                            run.memory.h2d.spec.issue_s, self.uniform)
            run.now = self.timer.now
            self.expert_s, self.non_expert_s, self.uniform = [], [], []
        self.layers, self.experts, self.counts = [], [], []
        moe_layers = run.model.moe_layers
        tally = RowTally()
        tally.layer_steps = steps
        valid = experts >= 0

        def per_layer(values: np.ndarray) -> np.ndarray:
            return np.bincount(layer, weights=values.sum(axis=1), minlength=moe_layers).astype(np.int64)

        run.add_counts(per_layer(counts), per_layer(counts * hit), tally, (per_layer(valid), per_layer(hit)))

    def finish(self) -> None:
        """Judge what is left, and hand the compiled clock back to the replay."""
        self.flush()
        if self.timer is not None:
            self.run.take_clock(self.timer)


def poisson_arrivals(sequences: list[int], rate_rps: float, seed: int) -> dict[int, float]:
    """Arrival times of a Poisson process of `rate_rps` requests per second, in the given (trace) order: the
    exponential gaps come from numpy's PCG64 seeded with `seed`."""
    if not rate_rps > 0:
        raise InputError(f"serve.rate_rps: {rate_rps} is not a positive rate (requests per second)")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, len(sequences))
    return dict(zip(sequences, np.cumsum(gaps).tolist()))
