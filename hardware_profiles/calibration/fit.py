"""Fit a data path's cost model, time = latency_s + bytes / bandwidth_Bps, to measured (bytes, seconds) points.

This is the model every link of the simulator uses (`simulator.link`), so calibration fits exactly it: an ordinary
least-squares line through the points, whose intercept is the latency and whose inverse slope is the bandwidth.
Points are weighted by 1/time (relative error), so the small sizes that set the latency are not drowned by the
large ones that set the bandwidth. A negative intercept (noise at a path with no measurable fixed cost) is clamped
to zero and the slope refitted through the origin, since the simulator takes no negative latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class MeasurementError(ValueError):
    """Timings that no latency + bytes / bandwidth line fits (a machine too busy to measure): one line, no traceback."""


@dataclass(frozen=True)
class PathFit:
    """latency_s + bytes / bandwidth_Bps, with how well it fits the points it came from."""

    latency_s: float
    bandwidth_Bps: float
    max_relative_error: float
    """Largest |fit − measured| / measured over the points."""
    points: int

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps


def fit_latency_bandwidth(nbytes: Sequence[float], seconds: Sequence[float]) -> PathFit:
    """Least-squares fit of seconds ≈ latency_s + nbytes / bandwidth_Bps (relative-error weighting).

    Raises:
        ValueError: fewer than two distinct sizes, a non-positive time, or a slope that is not positive (time does
            not grow with size: the points cannot give a bandwidth).
    """
    x = np.asarray(nbytes, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if x.shape != y.shape or len(np.unique(x)) < 2:
        raise ValueError("a latency/bandwidth fit needs points at two or more distinct sizes")
    if np.any(y <= 0) or np.any(x < 0):
        raise ValueError("a latency/bandwidth fit needs positive times and non-negative sizes")
    w = 1.0 / y
    design = np.column_stack([np.ones_like(x), x]) * w[:, None]
    (intercept, slope), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if intercept < 0:
        intercept = 0.0
        slope = float(np.sum(w * w * x * y) / np.sum(w * w * x * x))
    if slope <= 0:
        raise ValueError(f"time does not grow with size (slope {slope:.3g} s/B): no bandwidth can be fitted")
    fitted = intercept + slope * x
    return PathFit(
        latency_s=float(intercept),
        bandwidth_Bps=float(1.0 / slope),
        max_relative_error=float(np.max(np.abs(fitted - y) / y)),
        points=len(x),
    )


@dataclass(frozen=True)
class PathMeasurement:
    """One data path's repeated timings at several sizes and the latency/bandwidth fitted to their means.

    The mean, not the best, is fitted: the simulator adds up per-transfer and per-expert times, and a sum's
    expectation is the count times the mean. The spread (coefficient of variation per size) is kept for the report.
    """

    path: str
    method: str
    nbytes: tuple[int, ...]
    mean_s: tuple[float, ...]
    cv: tuple[float, ...]
    """Standard deviation over mean of the repeats, per size."""
    repeats: int
    fit: PathFit

    @classmethod
    def from_samples(cls, path: str, method: str, samples: dict[int, Sequence[float]]) -> "PathMeasurement":
        """`samples` maps a size in bytes to its repeated times in seconds."""
        sizes = sorted(samples)
        means = [float(np.mean(samples[s])) for s in sizes]
        cvs = [float(np.std(samples[s]) / np.mean(samples[s])) if len(samples[s]) > 1 else 0.0 for s in sizes]
        try:
            fit = fit_latency_bandwidth(sizes, means)
        except ValueError as err:
            raise MeasurementError(f"{path}: {err} (mean times {', '.join(f'{m * 1e6:.1f} us' for m in means)}); "
                                   f"the machine was probably too busy: measure again") from None
        return cls(path, method, tuple(sizes), tuple(means), tuple(cvs), min(len(samples[s]) for s in sizes), fit)
