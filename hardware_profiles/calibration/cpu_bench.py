"""Measure the host: DRAM copy bandwidth and the time of a CPU expert FFN at batch 1, and the FLOP rate at a batch.

Expert weights are timed *cold*: each call uses the next expert of a pool several times larger than the last-level
cache, as a runtime that serves many experts does (a loop over one expert would time the cache, not DRAM). The
batch-1 times at several expert widths fit latency + bytes / bandwidth (`fit.PathMeasurement`): the intercept is the
per-call overhead (Python, three BLAS calls, the SiLU), the slope the memory bandwidth the FFN reaches. The FLOP
rate comes from the widest expert at a batch of tokens large enough to be compute-bound.

BLAS threads are fixed with threadpoolctl for the whole measurement (`threads`), since OpenBLAS's default of one
thread per core falls apart on a machine shared with other work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from hardware_profiles.calibration.expert_ffn import DTYPE, PARAM_BYTES, expert_params, expert_views, gated_ffn, random_block
from hardware_profiles.calibration.fit import PathMeasurement
from hardware_profiles.calibration.uncached_read import huge_page_buffers

FALLBACK_LLC_BYTES = 32 << 20


def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports (sysfs), or 32 MiB where it reports none."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=FALLBACK_LLC_BYTES)


def dram_copy_Bps(nbytes: int = 256 << 20, repeats: int = 5) -> tuple[float, list[float]]:
    """Best-of-`repeats` numpy copy bandwidth between two `nbytes` arrays, counting bytes read plus bytes written
    (STREAM's Copy convention). Returns (best, every repeat's)."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        rates.append(2 * src.nbytes / (time.perf_counter() - t0))
    return max(rates), rates


def ffn_widths(ffn: int, count: int) -> list[int]:
    """`count` expert widths from `ffn` halving down (ffn, ffn/2, ...), smallest first, each at least 8."""
    return sorted({max(8, ffn >> i) for i in range(count)})


class CpuFfnProbe:
    """Pools of cold expert weights at several widths, timed on demand (kept across measurements, as
    `storage_bench.StorageProbe` is). The experts live in the memory an offloading runtime reads experts into
    (`uncached_read.huge_page_buffers`): its page size and TLB behaviour, not the allocator's, is what the FFN
    meets."""

    def __init__(self, hidden: int, widths: Sequence[int], threads: int | None, tokens: int = 1, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.hidden, self.widths, self.threads, self.tokens = hidden, list(widths), threads, tokens
        self.pool_bytes = 4 * last_level_cache_bytes()
        self.x = rng.standard_normal((tokens, hidden), dtype=DTYPE)
        self.pools = {}
        for ffn in self.widths:
            n = expert_params(hidden, ffn)
            nbytes = n * PARAM_BYTES
            base = random_block(hidden, ffn, rng)
            pool = []
            for i, buffer in enumerate(huge_page_buffers(max(2, math.ceil(self.pool_bytes / nbytes)), nbytes)):
                block = np.frombuffer(buffer, DTYPE, n)
                np.multiply(base, DTYPE(1 + i * 1e-3), out=block)
                pool.append(expert_views(block, hidden, ffn))
            self.pools[nbytes] = pool

    def samples(self, repeats: int, tick: Callable[[], None] | None = None) -> dict[int, list[float]]:
        """Per weight size in bytes, `repeats` mean times of one expert FFN (each over a pass through its pool)."""
        x = self.x
        with threadpool_limits(limits=self.threads, user_api="blas"):
            return pool_samples(self.pools, lambda w: gated_ffn(x, *w), repeats, tick)

    def method(self, repeats: int) -> str:
        return (f"numpy gated FFN (float32, hidden {self.hidden}, widths {self.widths}, {self.tokens} token(s), "
                f"{self.threads or 'default'} BLAS thread(s)), cold weights from a {self.pool_bytes >> 20} MiB pool, "
                f"mean of {repeats} passes")

    def measure(self, repeats: int, tick: Callable[[], None] | None = None) -> PathMeasurement:
        """Mean time of one expert FFN per width over `repeats` passes through its pool, fitted against weight bytes."""
        return PathMeasurement.from_samples("cpu expert FFN", self.method(repeats), self.samples(repeats, tick))


def pool_samples(pools: dict[int, list], call: Callable, repeats: int, tick: Callable[[], None] | None = None
                 ) -> dict[int, list[float]]:
    """Per weight size, `repeats` mean times of `call(weights)` over one pass through that size's pool of experts.

    One untimed pass first: a pool's first pass after it is made ran up to 6x slower here (page tables), and a pool
    several times the last-level cache leaves the weights cold for the timed passes all the same."""
    samples: dict[int, list[float]] = {}
    for nbytes, pool in pools.items():
        for w in pool:
            call(w)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for w in pool:
                call(w)
            times.append((time.perf_counter() - t0) / len(pool))
        samples[nbytes] = times
        if tick:
            tick()
    return samples


def time_cpu_ffn(hidden: int, widths: Sequence[int], repeats: int, threads: int | None,
                 tokens: int = 1, seed: int = 0, tick: Callable[[], None] | None = None) -> PathMeasurement:
    """One measurement with a `CpuFfnProbe` made for it."""
    return CpuFfnProbe(hidden, widths, threads, tokens, seed).measure(repeats, tick)


def cpu_flops(hidden: int, ffn: int, tokens: int, repeats: int, threads: int | None, seed: int = 0) -> tuple[float, list[float]]:
    """Best-of-`repeats` FLOP/s of one expert FFN on `tokens` tokens (2 FLOP per multiply-add of the three
    products); with enough tokens this is compute-bound. Returns (best, every repeat's)."""
    rng = np.random.default_rng(seed)
    w = expert_views(random_block(hidden, ffn, rng), hidden, ffn)
    x = rng.standard_normal((tokens, hidden), dtype=DTYPE)
    flop = 2.0 * expert_params(hidden, ffn) * tokens
    rates = []
    with threadpool_limits(limits=threads, user_api="blas"):
        gated_ffn(x, *w)
        for _ in range(repeats):
            t0 = time.perf_counter()
            gated_ffn(x, *w)
            rates.append(flop / (time.perf_counter() - t0))
    return max(rates), rates
