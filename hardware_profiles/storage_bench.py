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

from hardware_profiles.fit import PathMeasurement
from hardware_profiles.uncached_read import UncachedReader, aligned_buffer, write_padded

FILES_PER_SIZE = 4


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


def time_storage_reads(directory: str | os.PathLike, sizes: Sequence[int], repeats: int,
                       tick: Callable[[], None] | None = None, method: str | None = None) -> PathMeasurement:
    """Mean whole-file uncached read time per size, fitted; scratch files live in a temporary folder of
    `directory` and are removed afterwards."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="moe-calibrate-", dir=directory))
    try:
        reader = UncachedReader(scratch, method)
        payload = os.urandom(max(sizes))
        files = {s: [scratch / f"{s}_{i}" for i in range(FILES_PER_SIZE)] for s in sizes}
        for s, paths in files.items():
            for p in paths:
                write_padded(p, payload[:s])
        buffer = aligned_buffer(max(sizes))
        samples: dict[int, list[float]] = {}
        for s in sizes:
            reader.read_into(files[s][0], buffer, s)  # warm the code path
            times = []
            for r in range(repeats):
                p = files[s][r % FILES_PER_SIZE]
                t0 = time.perf_counter()
                reader.read_into(p, buffer, s)
                times.append(time.perf_counter() - t0)
            samples[s] = times
            if tick:
                tick()
        method_text = (f"{reader.method} whole-file reads (open, read, close), one at a time, {FILES_PER_SIZE} files "
                       f"per size in rotation on {mount_of(scratch)}, mean of {repeats}")
        return PathMeasurement.from_samples("storage read", method_text, samples)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
