"""The timed replay of a plain cache in one compiled loop: the clock arithmetic of `simulator.replay` for layer steps
whose only transfers are demand fetches on one serial host-to-device link.

Why: without a prefetcher, miss handler or placement, a step's hits and misses do not depend on time, so a compiled
twin judges them first (simulator.compiled_policy) and this loop then times the steps, doing the same floating-point
operations in the same order as `_Replay._layer_step`, `MemoryHierarchy.demand`, `Link._book` and `_Replay._compute`
(so the figures are the same to the last bit; tests/test_compiled_timing.py holds it to the Python replay). SimPy's
clock only carries these step ends and feeds nothing back, so the loop needs none.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from simulator.link import Link


@numba.njit(cache=True)
def _time_steps(layer, experts, hits, non_expert_s, expert_s, uniform, expert_bytes, latency_s, bandwidth_Bps,
                issue_s, engines, clock, counts, stall_per_layer):
    """Row r's non-expert work takes non_expert_s[r] and its entry j's compute expert_s[r, j]; a `uniform` row's
    resident time is its count of hits times its cost (as a token's step computes it), any other row's the sum of its
    hits' costs in row order (as a batched step does). clock = [now, wire free, compute time, stall time, wire busy];
    counts = [transfers, bytes]; both updated."""
    now, wire_free, compute_total, stall_total, busy = clock[0], clock[1], clock[2], clock[3], clock[4]
    transfers, moved = counts[0], counts[1]
    arrivals = np.empty(experts.shape[1], dtype=np.float64)
    costs = np.empty(experts.shape[1], dtype=np.float64)
    wire_s = expert_bytes / bandwidth_Bps if bandwidth_Bps != 0.0 else math.inf
    for r in range(experts.shape[0]):
        t_router = now + non_expert_s[r]
        fetched = 0
        resident = 0
        resident_s = 0.0
        for j in range(experts.shape[1]):
            if experts[r, j] < 0:
                continue
            cost = expert_s[r, j]
            if hits[r, j]:
                resident += 1
                resident_s += cost
                continue
            engine = 0
            for e in range(1, engines.shape[0]):  # the first engine to free (Link._book)
                if engines[e] < engines[engine]:
                    engine = e
            free = engines[engine]
            start = t_router if t_router > free else free
            on_wire = start + latency_s
            if on_wire < wire_free:
                on_wire = wire_free
            end = on_wire + wire_s
            engines[engine] = end
            wire_free = end
            transfers += 1
            moved += expert_bytes
            busy += wire_s
            # (arrival, cost) pairs in ascending order, as `_compute` sorts them
            slot = fetched
            while slot > 0 and (arrivals[slot - 1] > end or (arrivals[slot - 1] == end and costs[slot - 1] > cost)):
                arrivals[slot] = arrivals[slot - 1]
                costs[slot] = costs[slot - 1]
                slot -= 1
            arrivals[slot] = end
            costs[slot] = cost
            fetched += 1
        if uniform[r]:
            resident_s = resident * expert_s[r, 0]
        compute = (fetched * issue_s if fetched else 0.0) + resident_s
        gpu = t_router + compute
        stall = 0.0
        for a in range(fetched):
            if arrivals[a] > gpu:
                stall += arrivals[a] - gpu
                gpu = arrivals[a]
            gpu += costs[a]
            compute += costs[a]
        compute_total += non_expert_s[r] + compute
        stall_total += stall
        stall_per_layer[layer[r]] += stall
        now = gpu
    clock[0], clock[1], clock[2], clock[3], clock[4] = now, wire_free, compute_total, stall_total, busy
    counts[0], counts[1] = transfers, moved


class StepTimer:
    """Times judged layer steps chunk by chunk, on the replay's clock and link, and hands both back at the end."""

    def __init__(self, link: Link, now_s: float, compute_s: float, stall_s: float, layers: int):
        self.link = link
        engines, wire_free = link.calendar()
        self.engines = np.array(engines, dtype=np.float64)
        self.clock = np.array([now_s, wire_free, compute_s, stall_s, link.busy_demand_s])
        self.counts = np.zeros(2, dtype=np.int64)
        self.stall_per_layer = np.zeros(layers)

    @property
    def now(self) -> float:
        return float(self.clock[0])

    @now.setter
    def now(self, value: float) -> None:  # the caller's clock moved between steps (an idle wait for an arrival)
        self.clock[0] = value

    def time(self, layer: np.ndarray, experts: np.ndarray, hits: np.ndarray, non_expert_s, expert_s,
             expert_bytes: int, issue_s: float, uniform=True) -> None:
        """Time judged steps: `non_expert_s` per row and `expert_s` per entry (scalars: the same for every row or
        entry), `uniform` per row (see `_time_steps`)."""
        spec, rows = self.link.spec, experts.shape[0]
        non_expert_s = np.broadcast_to(np.asarray(non_expert_s, dtype=np.float64), (rows,))
        expert_s = np.broadcast_to(np.asarray(expert_s, dtype=np.float64), experts.shape)
        uniform = np.broadcast_to(np.asarray(uniform, dtype=np.bool_), (rows,))
        _time_steps(layer, experts, hits, non_expert_s, expert_s, uniform, int(expert_bytes), float(spec.latency_s), float(spec.bandwidth_Bps), float(issue_s), self.engines,
                    self.clock, self.counts, self.stall_per_layer)

    def finish(self) -> tuple[float, float, float, list[float]]:
        """Books the demand fetches on the link; returns (now, compute time, stall time, stall per layer), the
        times being the totals since the replay began and the stalls those of the timed chunks."""
        now, wire_free, compute, stall, busy = self.clock.tolist()
        transfers, moved = self.counts.tolist()
        self.link.book_demands(self.engines.tolist(), wire_free, transfers, moved, busy)
        return now, compute, stall, self.stall_per_layer.tolist()
