"""Measure storage reads with the page cache defeated: the slow tier's latency and bandwidth, one read at a time.

Files of several sizes are written (fsynced) into a directory on the device under test, then each is read whole
through `UncachedReader` (open, read into an aligned buffer, close — as the validation runtime loads an expert), in
rotation, `repeats` times. Mean times per size fit latency + bytes / bandwidth; the latency therefore includes the
open and close, which is what a load of one file per expert costs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hardware_profiles.calibration.aio import AsyncReader, aio_available
from hardware_profiles.calibration.fit import PathFit, PathMeasurement
from hardware_profiles.calibration.uncached_read import O_DIRECT, BufferRing, UncachedReader, aligned_buffer, write_padded

FILES_PER_SIZE = 4
"""Files written per size; also the deepest burst of reads in flight that `StorageProbe.bursts` measures."""
BURST_BYTES = 16 << 20
"""Bursts read files of this size (or the largest below it): an expert's order of magnitude."""


def mount_of(path: str | os.PathLike) -> str:
    """'<mount point> (<fs type> on <device>)' for the file system holding `path` (Linux), else the path."""
    target = os.path.realpath(path)
    best = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, point, fstype = line.split()[:3]
                if (target == point or target.startswith(point.rstrip("/") + "/")) and (best is None or len(point) > len(best[1])):
                    best = (device, point, fstype)
    except OSError:
        return str(path)
    return f"{best[1]} ({best[2]} on {best[0]})" if best else str(path)


class StorageProbe:
    """Scratch files of several sizes in a temporary folder of `directory`, read on demand; `close()` removes them.

    Kept open across measurements so that a long experiment can re-measure the device next to each run (storage
    shared with other work drifts over minutes) without writing the files again.
    """

    def __init__(self, directory: str | os.PathLike, sizes: Sequence[int], method: str | None = None):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.sizes = sorted(sizes)
        self.scratch = Path(tempfile.mkdtemp(prefix="moe-calibrate-", dir=directory))
        self.reader = UncachedReader(self.scratch, method)
        payload = os.urandom(max(sizes))
        self.files = {s: [self.scratch / f"{s}_{i}" for i in range(FILES_PER_SIZE)] for s in self.sizes}
        for s, paths in self.files.items():
            for p in paths:
                write_padded(p, payload[:s])
        self.buffer = aligned_buffer(max(sizes))

    def samples(self, repeats: int, tick: Callable[[], None] | None = None) -> dict[int, list[float]]:
        """`repeats` whole-file uncached read times per size."""
        read = self.reader.read_into
        samples: dict[int, list[float]] = {}
        for s in self.sizes:
            read(self.files[s][0], self.buffer, s)  # warm the code path
            times = []
            for r in range(repeats):
                p = self.files[s][r % FILES_PER_SIZE]
                t0 = time.perf_counter()
                read(p, self.buffer, s)
                times.append(time.perf_counter() - t0)
            samples[s] = times
            if tick:
                tick()
        return samples

    def bursts(self, repeats: int, seed: int = 0) -> tuple[PathMeasurement, float] | None:
        """Reads in flight: bursts of 1 … FILES_PER_SIZE whole-file reads of the largest size up to BURST_BYTES,
        submitted at once with Linux AIO (`burst_samples`), fitted; and the mean time at which the first read of a
        full burst is seen complete, over the burst's time. None where reads cannot bypass the cache by O_DIRECT."""
        if self.reader.method != O_DIRECT or not aio_available():
            return None
        size = max([s for s in self.sizes if s <= BURST_BYTES] or self.sizes[:1])
        depths = sorted({1, 2, FILES_PER_SIZE})
        firsts: list[tuple[int, float, float]] = []
        ring = BufferRing(FILES_PER_SIZE, size)
        with AsyncReader() as reader:
            samples = burst_samples(reader, [self.files[size]], size, ring, depths, repeats, np.random.default_rng(seed),
                                    firsts=firsts)
        method = burst_method([self.files[size]], depths, repeats)
        first = float(np.mean([f / last for k, f, last in firsts if k == FILES_PER_SIZE]))
        return PathMeasurement.from_samples("storage bursts", method, samples), first

    def method(self, repeats: int) -> str:
        return (f"{self.reader.method} whole-file reads (open, read, close) into a huge-page buffer, one at a time, {FILES_PER_SIZE} files "
                f"per size in rotation on {mount_of(self.scratch)}, mean of {repeats}")

    def measure(self, repeats: int, tick: Callable[[], None] | None = None) -> PathMeasurement:
        """Mean in-thread read time per size over `repeats` reads, fitted."""
        return PathMeasurement.from_samples("storage read", self.method(repeats), self.samples(repeats, tick))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "StorageProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def burst_samples(reader: AsyncReader, groups: Sequence[Sequence[Path]], nbytes: int, ring: BufferRing,
                  bursts: Sequence[int], repeats: int, rng, submits: list[tuple[int, float]] | None = None,
                  firsts: list[tuple[int, float, float]] | None = None,
                  before: Callable[[], None] | None = None) -> dict[int, list[float]]:
    """Times of bursts of k whole-file reads submitted at once (`AsyncReader`, O_DIRECT), from the submitting call
    (issuing included, as a GPU copy's latency includes its launch) until the last completes,
    per burst size k in `bursts`, keyed by the burst's bytes (k · nbytes), into buffers taken from `ring` (as the
    runtime takes them). Each burst reads k distinct files of one
    group drawn at random (a group: files that are read together, e.g. the experts of one layer, which lie near each
    other on disk). Fitted, latency + bytes / bandwidth is the link a simulator sees when several copies may be set
    up at once and the wire carries one at a time. If `submits` is given, (k, seconds in the submitting call) is
    appended to it for each burst: the submitting thread's own time to issue k reads. If `firsts` is given,
    (k, seconds until the first read of the burst is seen complete, seconds until the last) is appended for each
    burst, waiting in submission order as the runtime does: whether a wire serves a burst's reads one after another
    or all at once shows there. If `before` is given, it is called (untimed) before each burst: a runtime issues a
    step's reads right after computing, and on the VM this was built on, a submitting call made right after expert
    FFNs took ~50 us more than one made in a loop of bursts (per read: 22 against 13 us in bursts of 6, 48 against
    22 us in bursts of 2), so a probe that issues its bursts back to back times a warmer call than the runtime makes."""
    samples: dict[int, list[float]] = {}
    for k in bursts:
        times = []
        for _ in range(repeats):
            group = groups[rng.integers(len(groups))]
            chosen = rng.choice(len(group), size=min(k, len(group)), replace=False)
            reads = [(group[i], ring.take(), nbytes) for i in chosen]
            if before is not None:
                before()
            t0 = time.perf_counter()
            tickets = reader.submit(reads)
            if submits is not None:
                submits.append((len(reads), time.perf_counter() - t0))
            reader.wait(tickets[0])
            first = time.perf_counter() - t0
            for ticket in tickets[1:]:
                reader.wait(ticket)
            times.append(time.perf_counter() - t0)
            if firsts is not None:
                firsts.append((len(reads), first, times[-1]))
            for _, buffer, _ in reads:
                ring.give(buffer)
        samples[k * nbytes] = times
    return samples


def nearer_wire(fit: PathFit, nbytes: int, depth: int, first: float) -> tuple[str, float]:
    """The `LinkSpec.sharing` ("serial" or "shared") whose first arrival in a burst of `depth` reads of `nbytes` is
    nearer `first`, the measured one as a fraction of the burst's time; and the serial wire's, by `fit` (a shared
    wire's is 1)."""
    serial = fit.seconds(nbytes) / fit.seconds(depth * nbytes)
    return ("shared" if abs(first - 1.0) < abs(first - serial) else "serial"), serial


def burst_method(groups: Sequence[Sequence[Path]], bursts: Sequence[int], repeats: int) -> str:
    files = sum(len(g) for g in groups)
    where = mount_of(groups[0][0]) if groups and groups[0] else "?"
    return (f"bursts of {list(bursts)} whole-file reads (files kept open, O_DIRECT Linux native AIO) submitted at once and "
            f"polled until the last completes (timed from the submitting call), the files of a burst drawn from one of {len(groups)} group(s) "
            f"({files} files) on {where}, mean of {repeats}")
