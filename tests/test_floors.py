"""The floors of the house: simulator/ imports no other package of ours; policies/, traces/ and hardware_profiles/
import only simulator/; experiments/ imports all. Every import counts, inside functions and TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "simulator": set(),
    "policies": {"simulator"},
    "traces": {"simulator"},
    "hardware_profiles": {"simulator"},
    "experiments": {"simulator", "policies", "traces", "hardware_profiles"},
}


def violations(package: str, source: str, filename: str = "<source>") -> list[str]:
    """`filename:line imports module` for each import in `source` (a module of `package`) against the floors."""
    bad = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                bad.append(f"{filename}:{node.lineno} imports {module}")
    return bad


def test_every_module_keeps_to_its_floor():
    bad = []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            bad += violations(package, path.read_text(), str(path.relative_to(ROOT)))
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


@pytest.mark.parametrize(("package", "source"), [
    ("simulator", "from policies.base import CachePolicy"),  # simulator/cache.py before the floors were kept
    ("simulator", "from policies.lru import LRUCache"),  # simulator/lut_cache.py
    ("simulator", "from policies.prefetchers.base import Prefetcher, PrefetchView"),  # simulator/replay.py
    ("simulator", "from policies.miss_handling import CPU, LOAD"),  # simulator/replay.py
    ("simulator", "from traces.format import TraceChunk"),  # simulator/replay.py
    ("hardware_profiles", "from experiments.results import atomic_write_bytes"),  # hardware_profiles/calibrate.py
    ("traces", "import policies.lru"),
    ("policies", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from traces.format import TraceFile"),
    ("simulator", "def f():\n    import experiments.run"),
])
def test_the_check_catches_an_upward_import(package, source):
    assert len(violations(package, source)) == 1


def test_the_check_allows_what_the_floors_allow():
    assert not violations("policies", "from simulator.cache_policy import CachePolicy\nimport numpy")
    assert not violations("experiments", "import policies.lru\nfrom traces.format import TraceFile")
    assert not violations("simulator", "from simulator.model import MoEModel\nfrom . import link")
