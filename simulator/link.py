"""An interconnect direction (PCIe H2D, C2C, ...) as a calendar with two priorities, not a SimPy resource.

Booking a transfer returns its completion time by arithmetic (~0.5 µs) instead of a Resource request (~27 µs):
    engine  = the copy engine that frees first
    start   = max(ready, engine free)                  # the engine takes the copy
    on_wire = max(start + latency_s, wire free)       # set-up overlaps other copies; the wire carries one at a time
    end     = on_wire + bytes / bandwidth_Bps
With one copy engine this is the plain serial queue end = max(ready, previous end) + latency + bytes / bandwidth.

On a link whose spec says `sharing: shared`, the demand fetches of one layer step (`transfer_group`) go on the wire as
one group at max(ready + latency, wire free) and share its bandwidth fairly, at most `copy_engines` of them at once
(processor sharing, admitted in order): a group of n equal transfers all end n · bytes / bandwidth after they start,
where a serial wire would deliver the first after one. Transfers booked after a group queue behind it.

Demand fetches go ahead of queued prefetches. Prefetches wait in a FIFO queue and are started lazily: `advance(now)`
starts, in order, every queued prefetch whose start falls before `now`; those are in flight and are not preempted
(unless the link's spec sets `preempt_prefetch`: then a demand pauses the prefetch on the wire, which resumes with
its remaining bytes after the demand). A demand booked at `now` starts after the transfers in flight and before
every prefetch still queued. Callers book in non-decreasing time, as a simulation clock does.

Where the spec gives a `duplex_bandwidth_Bps`, the wire carries at that rate while the opposite direction carries
data (`carry_opposite`, the activations a CPU-run expert reads): a transfer booked after such a window is stretched
by the part of its wire time inside it. Transfers booked before the window keep their arrival.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from simulator.hardware import LinkSpec
from simulator.timeline import TimelineEvent


@dataclass(eq=False)
class Transfer:
    """One copy on the link. `end_s` is None while a prefetch waits in the queue."""

    key: int
    nbytes: int
    ready_s: float
    prefetch: bool
    end_s: float | None = None
    link: "Link | None" = None
    """The link the transfer is booked on."""


class Link:
    def __init__(self, spec: LinkSpec, name: str = "h2d"):
        self.spec = spec
        self.name = name
        self.log: list[TimelineEvent] | None = None
        """When a list, every transfer started is appended to it (from the wire to the last byte): a timeline window."""
        self._engine_free = [0.0] * spec.copy_engines
        self._wire_free = 0.0
        self._queue: deque[Transfer] = deque()
        self._on_wire: Transfer | None = None  # the prefetch started last, if nothing followed it: preemptible
        self.bytes_demand = 0
        self.bytes_prefetch = 0
        self.transfers = 0
        self.busy_demand_s = 0.0
        self.busy_prefetch_s = 0.0
        """Time the wire spent carrying bytes of each kind (latency excluded), the part after the replay's end too."""
        self._tail: deque[tuple[float, float, bool]] = deque()  # (end, wire time, prefetch) of the transfers nobody
        # waits for (prefetches, and the NVMe reads of staged prefetches) that may still cross when the replay ends:
        # every demand fetch has arrived by the end of its step, so only these can
        self._opposite: deque[list[float]] = deque()  # [start, end] of the opposite direction's traffic, merged
        self._on_wire_s = 0.0  # when the transfer booked last went on the wire

    def carry_opposite(self, start_s: float, end_s: float) -> None:
        """The opposite direction carries data over [start_s, end_s): this wire runs at its duplex bandwidth then,
        for the transfers booked from now on. A no-op on a full-duplex link."""
        if self.spec.duplex_bandwidth_Bps is None or end_s <= start_s:
            return
        windows = self._opposite
        if windows and start_s <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], end_s)
        else:
            windows.append([start_s, end_s])

    def _wire_end(self, on_wire: float, wire_s: float) -> float:
        """When `wire_s` seconds of full-rate wire time that start at `on_wire` end, the wire carrying at its duplex
        rate inside the opposite direction's windows."""
        windows = self._opposite
        while windows and windows[0][1] <= on_wire:
            windows.popleft()
        if not windows or wire_s == math.inf:
            return on_wire + wire_s
        ratio = self.spec.duplex_bandwidth_Bps / self.spec.bandwidth_Bps
        now, left = on_wire, wire_s
        for start, end in windows:
            if start >= now + left:
                break
            if start > now:
                left -= start - now
                now = start
            carried = (end - now) * ratio  # full-rate seconds the window's slower wire carries
            if left <= carried:
                return now + left / ratio
            left -= carried
            now = end
        return now + left

    def _wire_work(self, start_s: float, end_s: float) -> float:
        """Full-rate wire seconds carried over [start_s, end_s): the inverse of `_wire_end`."""
        ratio = self.spec.duplex_bandwidth_Bps / self.spec.bandwidth_Bps if self._opposite else 1.0
        slowed = sum(max(0.0, min(end, end_s) - max(start, start_s)) for start, end in self._opposite)
        return end_s - start_s - slowed * (1.0 - ratio)

    @property
    def bytes_moved(self) -> int:
        return self.bytes_demand + self.bytes_prefetch

    @property
    def busy_s(self) -> float:
        return self.busy_demand_s + self.busy_prefetch_s

    def busy_until(self, end_s: float) -> tuple[float, float]:
        """(demand, prefetch) wire time within [0, end_s]: a prefetch still crossing when the replay ends counts
        only up to the end, so that busy time never exceeds the time it is divided by."""
        demand, prefetch = self.busy_demand_s, self.busy_prefetch_s
        for end, wire_s, is_prefetch in self._tail:
            if end_s < end < math.inf:
                after = min(wire_s, end - end_s)
                if is_prefetch:
                    prefetch -= after
                else:
                    demand -= after
        return demand, prefetch

    def _record(self, ready_s: float, end: float, wire_s: float, prefetch: bool) -> None:
        tail = self._tail
        while tail and tail[0][0] <= ready_s:
            tail.popleft()
        tail.append((end, wire_s, prefetch))

    def transfer(self, ready_s: float, nbytes: int, key: int = -1, *, for_prefetch: bool = False) -> float:
        """Book a demand fetch of `nbytes` ready at `ready_s`; returns when its last byte has arrived. `key` only
        labels it in a timeline; `for_prefetch`: the read that stages a prefetch, which nobody waits for."""
        if self._queue:
            self.advance(ready_s)
        on_wire = self._on_wire
        if on_wire is not None and self.spec.preempt_prefetch and on_wire.end_s > ready_s:
            return self._preempt(on_wire, ready_s, nbytes, key)
        self._on_wire = None
        return self._book(ready_s, nbytes, False, key, for_prefetch)

    def demand_start_s(self, ready_s: float) -> float:
        """When a demand fetch ready at `ready_s` would start, after what is booked (it arrives latency + bytes /
        bandwidth later on a serial link): the estimate a placement weighs a load by."""
        if self._queue:
            self.advance(ready_s)
        start = max(ready_s, min(self._engine_free))
        return max(start, self._wire_free - self.spec.latency_s)

    def transfer_group(self, ready_s: float, fetches: list[tuple[int, int]]) -> list[float]:
        """Book the demand fetches [(key, bytes)] of one step, all ready at `ready_s`; their ends, in input order."""
        if self.spec.sharing == "serial" or len(fetches) < 2:
            return [self.transfer(ready_s, nbytes, key) for key, nbytes in fetches]
        if self._queue:
            self.advance(ready_s)
        self._on_wire = None
        return self._book_shared(ready_s, fetches)

    def _book_shared(self, ready_s: float, fetches: list[tuple[int, int]]) -> list[float]:
        """Processor sharing of the wire among the group, at most `copy_engines` transfers at once."""
        spec = self.spec
        start = max(ready_s + spec.latency_s, self._wire_free)
        bandwidth = spec.bandwidth_Bps
        ends = [math.inf] * len(fetches)
        if bandwidth:
            remaining = {i: float(nbytes) for i, (_, nbytes) in enumerate(fetches)}
            waiting = deque(range(len(fetches)))
            active: list[int] = []
            now = start
            while waiting or active:
                while waiting and len(active) < spec.copy_engines:
                    active.append(waiting.popleft())
                least = min(remaining[i] for i in active)  # every active transfer receives `least` bytes
                now += least * len(active) / bandwidth
                for i in list(active):
                    if remaining[i] == least:
                        ends[i] = now
                        active.remove(i)
                    else:
                        remaining[i] -= least
        warped = bool(self._opposite) and bandwidth > 0
        if warped:
            ends = [self._wire_end(start, finish - start) for finish in ends]
        end = max(ends)
        engines = self._engine_free
        for slot, finish in zip(sorted(range(len(engines)), key=engines.__getitem__), sorted(ends, reverse=True)):
            engines[slot] = max(engines[slot], finish)
        self._wire_free = end
        total = sum(nbytes for _, nbytes in fetches)
        self.transfers += len(fetches)
        self.bytes_demand += total
        self.busy_demand_s += (end - start if warped else total / bandwidth) if bandwidth else math.inf
        if self.log is not None:
            self.log.extend(TimelineEvent(self.name, start, finish, key, "demand") for (key, _), finish in zip(fetches, ends))
        return ends

    def _preempt(self, paused: Transfer, ready_s: float, nbytes: int, key: int) -> float:
        """The demand takes the wire once set up; the paused prefetch's remaining bytes follow it."""
        wire_s = nbytes / self.spec.bandwidth_Bps
        if self._opposite:
            takeover = max(ready_s + self.spec.latency_s, self._on_wire_s)
            remaining_s = paused.nbytes / self.spec.bandwidth_Bps - self._wire_work(self._on_wire_s, takeover)
            end = self._wire_end(takeover, wire_s)
            paused.end_s = self._wire_end(end, remaining_s)
        else:
            takeover = max(ready_s + self.spec.latency_s, paused.end_s - paused.nbytes / self.spec.bandwidth_Bps)
            remaining_s = paused.end_s - takeover
            end = takeover + wire_s
            paused.end_s = end + remaining_s
        engines = self._engine_free
        engines[engines.index(max(engines))] = paused.end_s
        self._wire_free = paused.end_s
        self.transfers += 1
        self.bytes_demand += nbytes
        self.busy_demand_s += wire_s
        if self.log is not None:
            self.log.append(TimelineEvent(self.name, takeover, end, key, "demand"))
        return end

    def calendar(self) -> tuple[list[float], float]:
        """(when each copy engine frees, when the wire frees): the state a compiled timing loop starts from."""
        return list(self._engine_free), self._wire_free

    def book_demands(self, engine_free: list[float], wire_free: float, transfers: int, nbytes: int,
                     busy_s: float) -> None:
        """Take over what a compiled timing loop booked (simulator.compiled_timing): the calendar it left, and
        `transfers` demand fetches of `nbytes` in all that kept the wire busy `busy_s` (added in booking order to
        the busy time the link had when the loop started)."""
        self._engine_free = list(engine_free)
        self._wire_free = wire_free
        self.transfers += transfers
        self.bytes_demand += nbytes
        self.busy_demand_s = busy_s

    def prefetch(self, ready_s: float, key: int, nbytes: int) -> Transfer:
        """Queue a prefetch behind earlier prefetches; it starts once no demand is ahead of it."""
        transfer = Transfer(key, nbytes, ready_s, prefetch=True, link=self)
        self._queue.append(transfer)
        return transfer

    def promote(self, transfer: Transfer, now_s: float) -> float:
        """A demand arrived for a queued prefetch: it leaves the queue and goes as a demand fetch."""
        self.advance(now_s)
        if transfer.end_s is not None:
            return transfer.end_s
        self._queue.remove(transfer)
        transfer.prefetch = False
        transfer.ready_s = max(transfer.ready_s, now_s)  # an NVMe-staged prefetch still needs its read
        return self._start(transfer)

    def advance(self, now_s: float) -> None:
        """Start every queued prefetch that would have begun before `now_s`."""
        queue = self._queue
        while queue:
            head = queue[0]
            if max(head.ready_s, min(self._engine_free)) > now_s:
                return
            queue.popleft()
            self._start(head)

    def _start(self, transfer: Transfer) -> float:
        transfer.end_s = self._book(transfer.ready_s, transfer.nbytes, transfer.prefetch, transfer.key)
        self._on_wire = transfer if transfer.prefetch else None
        return transfer.end_s

    def _book(self, ready_s: float, nbytes: int, prefetch: bool, key: int, unwaited: bool = False) -> float:
        """The calendar arithmetic of one transfer; returns its end."""
        engines = self._engine_free
        engine = engines.index(min(engines)) if len(engines) > 1 else 0
        free = engines[engine]
        start = ready_s if ready_s > free else free
        on_wire = start + self.spec.latency_s
        if on_wire < self._wire_free:
            on_wire = self._wire_free
        # A link of zero bandwidth never delivers: the limit in which prefetching cannot help.
        wire_s = nbytes / self.spec.bandwidth_Bps if self.spec.bandwidth_Bps else math.inf
        if self._opposite:  # a slower stretch of wire: the time it is busy, at whatever rate
            end = self._wire_end(on_wire, wire_s)
            wire_s = end - on_wire
        else:
            end = on_wire + wire_s
        self._on_wire_s = on_wire
        engines[engine] = end
        self._wire_free = end
        self.transfers += 1
        if prefetch:
            self.bytes_prefetch += nbytes
            self.busy_prefetch_s += wire_s
        else:
            self.bytes_demand += nbytes
            self.busy_demand_s += wire_s
        if prefetch or unwaited:
            self._record(ready_s, end, wire_s, prefetch)
        if self.log is not None:
            self.log.append(TimelineEvent(self.name, on_wire, end, key, "prefetch" if prefetch else "demand"))
        return end
