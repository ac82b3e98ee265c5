"""Fixtures shared across test modules."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """../shared/traces/real (unlicensed real traces, never committed here); skips the test where it is absent."""
    path = Path(__file__).parents[1].parent / "shared" / "traces" / "real"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (fresh clone without ../shared)")
    return path
