"""One-pass curves shared by a sweep's jobs: the first hit-rate-only LRU or Belady job of a trace computes the
policy's curve (simulator.stack_distance) and keeps it in the sweep folder; the other capacities read their figures
from it instead of replaying the trace.

Why a file: Hydra's launcher runs each job in its own process. A lock per curve makes concurrent jobs wait for the
one computing it instead of computing it twice; the file is written atomically, so a killed job leaves none.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np

from simulator.atomic_file import AtomicFile
from simulator.model import MoEModel
from simulator.stack_distance import HitCurve, hit_curve
from traces.format import TraceFile

CURVES_DIR = ".curves"
"""Under the sweep folder: one subfolder per trace content (the first 16 hex digits of its SHA-256)."""


class CurveStore:
    """`store(policy, scope)`: the curve of `trace` read as `model`, from `directory` or computed into it."""

    def __init__(self, directory: Path, trace: TraceFile, model: MoEModel, batch_rows: int):
        self.directory, self.trace, self.model, self.batch_rows = Path(directory), trace, model, batch_rows

    def path(self, policy: str, scope: str) -> Path:
        m = self.model
        return self.directory / f"{m.moe_layers}x{m.experts_per_layer}-top{m.top_k}-{policy}-{scope}.npz"

    def __call__(self, policy: str, scope: str) -> HitCurve:
        path = self.path(policy, scope)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                with np.load(path) as saved:
                    return HitCurve(policy, scope, saved["accesses"], saved["hits"], int(saved["top_k"]),
                                    int(saved["tokens"]), int(saved["sequences"]), int(saved["layer_steps"]))
            curve = hit_curve(self.trace.chunks(batch_rows=self.batch_rows), self.model, scope, policy)
            with AtomicFile(path) as f, open(f.tmp, "wb") as out:
                np.savez(out, accesses=curve.accesses, hits=curve.hits, top_k=curve.top_k, tokens=curve.tokens,
                         sequences=curve.sequences, layer_steps=curve.layer_steps)
            return curve
