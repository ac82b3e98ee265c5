"""Resumable sweeps: each job's directory is named from its overrides, and a job whose complete results are already
there is skipped.

A sweep writes to a fixed `hydra.sweep.dir` (the sweep configs in `conf/sweep/` set one; `hydra.sweep.dir=DIR`
chooses another), one subdirectory per job named by `job_dirname` from that job's overrides, sorted, so the same
job lands in the same directory whatever the order of the command line or of the grid. A rerun, or the same sweep
with more values on an axis, finds the jobs already done there: `metrics.json` is written last and atomically, so its
presence with this job's config means the job is complete (`is_complete`). "This job's config" includes the
contents of the files it names (`input_digests`): a trace re-imported or a profile edited under the same path is a
new job, not a done one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from experiments.config import DEFAULT_TRACE
from experiments.results import METRICS_FILE
from hardware_profiles.schema import profile_path

RESOLVER = "job_dirname"
"""The OmegaConf resolver `conf/config.yaml` names `hydra.sweep.subdir` with."""

IGNORED_KEYS = ("replay.progress", "replay.compiled", "replay.curves")
"""Config keys that do not change a run's results: a rerun that differs only in them still finds the job done."""

_SAFE = re.compile(r"[^\w.+-]")
_MAX_NAME = 200


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _value_name(value: str) -> str:
    """A file path becomes its stem plus a digest of the whole path; other unsafe characters become `_` (with a
    digest, so two values never share a name)."""
    if "/" in value or value.endswith((".parquet", ".yaml", ".yml")):
        return f"{_SAFE.sub('_', Path(value).stem)}-{_digest(value)}"
    safe = _SAFE.sub("_", value)
    return safe if safe == value else f"{safe}-{_digest(value)}"


def job_dirname(overrides: Iterable[str]) -> str:
    """`cache.capacity=8,policy=lru,trace.path=ds1351-1a2b3c4d` from a job's overrides (`hydra.overrides.task`).

    The `+sweep=NAME` choice is left out (it names the sweep, not the job); keys are sorted; `+`/`++` prefixes are
    dropped. A job with no overrides is `defaults`.
    """
    items = []
    for override in overrides:
        key, _, value = str(override).lstrip("+~").partition("=")
        if key in ("sweep", "hydra") or key.startswith(("hydra.", "hydra/")):
            continue
        items.append(f"{key}={_value_name(value)}")
    name = ",".join(sorted(items)) or "defaults"
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 9]}-{_digest(name)}"
    return name


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda overrides: job_dirname(overrides))


def _shape(override: str) -> str:
    """What of an override decides whether the job composes: all of it, but only the key of a plain dotted key (a
    value of `cache.capacity` is set, never looked at, since our groups hold untyped nodes; Hydra's own `hydra.*`
    nodes are typed, and `~key=value` checks the value)."""
    key, _, _ = override.partition("=")
    plain = "." in key and not key.startswith(("~", "hydra.")) and not any(c in key for c in "/@")
    return key if plain else override


_compose_every_job = Sweeper.validate_batch_is_legal


def _compose_one_job_per_shape(self: Sweeper, batch) -> None:
    shapes = {}
    for overrides in batch:
        shapes.setdefault(tuple(map(_shape, overrides)), overrides)
    _compose_every_job(self, list(shapes.values()))


def check_one_job_per_shape() -> None:
    """Hydra's sweepers compose every job's config in the main process before launching any, to fail early, and the
    launcher composes it again for the job: for a sweep of short jobs that serial first pass was a third of the wall
    time (126 jobs × 80 ms). Jobs whose overrides differ only in values of plain dotted keys compose alike, so the
    early check composes the first job of each shape. (On the base class: Hydra's plugin scan re-executes the module
    of `BasicSweeper`, replacing the class.)"""
    Sweeper.validate_batch_is_legal = _compose_one_job_per_shape


def _comparable(config: dict) -> dict:
    config = json.loads(json.dumps(config))  # the form it has after a trip through metrics.json
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file
        return False


def input_digests(config: dict) -> dict[str, str]:
    """SHA-256 of every file the resolved `config` names, by dotted key: the trace (the shipped default when
    `trace.path` is unset), the hardware profile (a shipped name too), and any other value that is an existing file
    (a prefetcher's `train_trace`, a user's class parameter)."""
    def digest(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    found: dict[str, Path] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            elif isinstance(value, str) and dotted not in ("hardware.profile", "trace.path") and _is_file(value):
                found[dotted] = Path(value)

    walk(config, "")
    found["trace.path"] = Path((config.get("trace") or {}).get("path") or DEFAULT_TRACE)
    found["hardware.profile"] = profile_path(config["hardware"]["profile"])[0]
    return {key: digest(path) for key, path in sorted(found.items()) if path.is_file()}


def is_complete(out_dir: Path, config: dict, inputs: dict[str, str]) -> bool:
    """True when `out_dir` holds the complete results of a run of `config` (resolved, as in metrics.json) on
    inputs of the same contents (`input_digests`)."""
    path = Path(out_dir) / METRICS_FILE
    try:
        done = json.loads(path.read_text())
        return _comparable(done["config"]) == _comparable(config) and done["inputs"] == inputs
    except (OSError, ValueError, KeyError, TypeError):
        return False


def discard_results(out_dir: Path) -> None:
    """Remove a previous run's metrics.json before this job rewrites the directory, so that an interruption never
    leaves the old metrics.json beside new files (which would look complete)."""
    (Path(out_dir) / METRICS_FILE).unlink(missing_ok=True)
