"""What a replay measured: counters for the whole run and per MoE layer. Definitions are in the README."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ITERATION_COLUMNS = ("start_s", "end_s", "requests", "tokens", "prefill_tokens", "kv_bytes", "expert_slots")
"""A batched replay's iterations (iterations.parquet): the expert cache's size over time beside the KV it leaves."""
REQUEST_COLUMNS = ("sequence", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens", "queued_s")
"""A batched replay's requests (requests.parquet)."""


@dataclass
class LayerCounters:
    accesses: list[int]
    hits: list[int]
    stall_s: list[float]
    bytes_h2d: list[int]
    """Bytes of demand fetches (prefetched bytes are counted for the whole run only)."""
    prefetch_useful: list[int]
    prefetch_late: list[int]

    @classmethod
    def zeros(cls, layers: int) -> "LayerCounters":
        return cls([0] * layers, [0] * layers, [0.0] * layers, [0] * layers, [0] * layers, [0] * layers)


@dataclass
class PrefetchCounters:
    """What became of each issued prefetch: used while resident (useful), demanded while still on its way (late),
    evicted or dropped unused (wasted), or still unused when the trace ended."""

    issued: int = 0
    useful: int = 0
    late: int = 0
    wasted: int = 0
    unused_at_end: int = 0
    bytes: int = 0
    late_wait_s: float = 0.0


@dataclass
class ReroutingCounters:
    """What a routing policy changed: routed experts swapped for resident runners-up, and the gate mass handed to
    them (each replaced expert's recorded gate weight; without a weights column, its share of its step's top-k
    router probability). `gate_mass` is every routed expert's, the denominator of the share moved."""

    accesses: int = 0
    gate_mass_moved: float = 0.0
    gate_mass: float = 0.0

    def summary(self) -> dict:
        return {"rerouted_accesses": self.accesses, "gate_mass_moved": self.gate_mass_moved,
                "gate_mass_moved_share": self.gate_mass_moved / self.gate_mass if self.gate_mass else 0.0}


@dataclass
class Metrics:
    accesses: int = 0
    hits: int = 0
    tokens: int = 0
    sequences: int = 0
    layer_steps: int = 0
    compute_time_s: float = 0.0
    stall_time_s: float = 0.0
    total_time_s: float = 0.0
    idle_time_s: float = 0.0
    """Time nothing ran because no request had arrived (batched serving with arrivals); part of the total."""
    bytes_h2d: int = 0
    bytes_demand: int = 0
    transfers_h2d: int = 0
    h2d_busy_s: float = 0.0
    h2d_busy_prefetch_s: float = 0.0
    dram_accesses: int = 0
    dram_hits: int = 0
    bytes_nvme: int = 0
    nvme_busy_s: float = 0.0
    cpu_executed: int = 0
    """Expert computations the CPU ran (a miss handler's or a placement's), one per expert and step."""
    cpu_busy_s: float = 0.0
    """Time the CPU spent computing experts."""
    gpu_copies: int = 0
    """CPU-placed experts copied to the GPU for one step by the placement's prefill rule (not kept)."""
    expert_lookups: int = 0
    """Σ over layer steps of the distinct experts the step routes to (|U|); equals the accesses at batch 1."""
    expert_hits: int = 0
    expert_loads: int = 0
    """Distinct experts a step found missing and brought in (fetched, or waited for as a late prefetch)."""
    approximated_low_precision: int = 0
    approximated_skipped: int = 0
    timed: bool = False
    prefetch: PrefetchCounters = field(default_factory=PrefetchCounters)
    timeline: list[tuple] = field(default_factory=list)
    """Recorded events (resource, start s, end s, layer or key, what) of a timeline window; see `replay(timeline=)`."""
    per_layer: LayerCounters = field(default_factory=lambda: LayerCounters.zeros(0))
    requests: list[tuple] | None = None
    """A batched replay's requests (REQUEST_COLUMNS); None for the token-by-token replay."""
    iterations: list[tuple] | None = None
    """A batched replay's iterations (ITERATION_COLUMNS)."""
    rerouting: ReroutingCounters | None = None
    """A routing policy's swaps; None where the router's choice stands (its figures are then not reported)."""

    @property
    def misses(self) -> int:
        return self.accesses - self.hits

    def summary(self) -> dict:
        """The run-level figures, as written to metrics.json (times are null in a hit-rate-only replay)."""
        timed = self.timed
        p = self.prefetch
        covered = p.useful + p.late
        total = self.total_time_s

        def t(value):
            return value if timed else None

        return {
            "accesses": self.accesses,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / self.accesses if self.accesses else 0.0,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "layer_steps": self.layer_steps,
            "total_time_s": t(self.total_time_s),
            "compute_time_s": t(self.compute_time_s),
            "stall_time_s": t(self.stall_time_s),
            "idle_time_s": t(self.idle_time_s),
            "stall_fraction": t(self.stall_time_s / self.total_time_s if self.total_time_s else 0.0),
            "time_per_token_s": t(self.total_time_s / self.tokens if self.tokens else 0.0),
            "bytes_h2d": self.bytes_h2d,
            "bytes_demand": self.bytes_demand,
            "bytes_prefetch": p.bytes,
            "transfers_h2d": self.transfers_h2d,
            "h2d_busy_s": t(self.h2d_busy_s),
            "h2d_utilisation": t(self.h2d_busy_s / total if total else 0.0),
            "h2d_utilisation_demand": t((self.h2d_busy_s - self.h2d_busy_prefetch_s) / total if total else 0.0),
            "h2d_utilisation_prefetch": t(self.h2d_busy_prefetch_s / total if total else 0.0),
            "hits_demand": self.hits - p.useful,
            "dram_accesses": self.dram_accesses,
            "dram_hit_rate": self.dram_hits / self.dram_accesses if self.dram_accesses else None,
            "bytes_nvme": self.bytes_nvme,
            "nvme_utilisation": t(self.nvme_busy_s / total if total else 0.0),
            "cpu_executed": self.cpu_executed,
            "cpu_busy_s": t(self.cpu_busy_s),
            "cpu_utilisation": t(self.cpu_busy_s / total if total else 0.0),
            "gpu_copies": self.gpu_copies,
            "expert_lookups": self.expert_lookups,
            "expert_hits": self.expert_hits,
            "expert_loads": self.expert_loads,
            "expert_hit_rate": self.expert_hits / self.expert_lookups if self.expert_lookups else 0.0,
            "approximated_accesses": self.approximated_low_precision + self.approximated_skipped,
            "approximated_low_precision": self.approximated_low_precision,
            "approximated_skipped": self.approximated_skipped,
            "prefetch_issued": p.issued,
            "prefetch_useful": p.useful,
            "prefetch_late": p.late,
            "prefetch_wasted": p.wasted,
            "prefetch_unused_at_end": p.unused_at_end,
            "prefetch_precision": covered / p.issued if p.issued else 0.0,
            "prefetch_recall": covered / (self.misses + p.useful) if self.misses + p.useful else 0.0,
            "prefetch_mean_late_wait_s": t(p.late_wait_s / p.late if p.late else 0.0),
            **(self.serving_summary() if self.requests is not None else {}),
            **(self.rerouting.summary() if self.rerouting is not None else {}),
        }

    def serving_summary(self) -> dict:
        """The request-level figures of a batched replay (latencies need the clock)."""
        rows, timed = self.requests, self.timed
        iterations = self.iterations
        output = sum(row[5] for row in rows)
        summary = {"requests": len(rows), "output_tokens": output, "prompt_tokens": sum(row[4] for row in rows),
                   "iterations": len(iterations),
                   "mean_batch_tokens": sum(it[3] for it in iterations) / len(iterations) if iterations else 0.0,
                   "mean_batch_requests": sum(it[2] for it in iterations) / len(iterations) if iterations else 0.0,
                   "peak_kv_bytes": max((it[5] for it in iterations), default=0),
                   "min_expert_slots": min((it[6] for it in iterations), default=0),
                   "throughput_tok_s": output / self.total_time_s if timed and self.total_time_s else None}
        ttft = [row[2] - row[1] for row in rows]
        e2e = [row[3] - row[1] for row in rows]
        tpot = [(row[3] - row[2]) / steps for row in rows if (steps := row[4] + row[5] - max(row[4], 1)) > 0]
        queued = [row[6] for row in rows]
        for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e), ("queued", queued)):
            stats = _stats(values) if timed and values else dict.fromkeys(("p50", "p90", "p99", "mean"))
            for stat, value in stats.items():
                summary[f"{name}_{stat}_s"] = value
        return summary

    def layer_table(self) -> dict[str, list]:
        """Per-layer columns (a dict of equal-length lists, ready for a DataFrame)."""
        p = self.per_layer
        return {
            "layer": list(range(len(p.accesses))),
            "accesses": p.accesses,
            "hits": p.hits,
            "misses": [a - h for a, h in zip(p.accesses, p.hits)],
            "hit_rate": [h / a if a else 0.0 for a, h in zip(p.accesses, p.hits)],
            "stall_time_s": p.stall_s if self.timed else [None] * len(p.accesses),
            "bytes_h2d": p.bytes_h2d,
            "prefetch_useful": p.prefetch_useful,
            "prefetch_late": p.prefetch_late,
        }


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99]).tolist()
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(a.mean())}
