"""The one way this project writes a file: complete under its final name, or not there at all.

A reader (a resumed sweep, a report, a user) must never take a half-written trace, profile or `metrics.json` for a
finished one, so every output is written to a temporary file beside its destination and renamed into place
(`os.replace` is atomic within a file system). The writer of the content (JSON, Parquet, YAML) is the caller's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class AtomicFile:
    """A temporary file beside `path` that becomes `path` on `commit()` and vanishes on `abort()`.

    As a context manager it commits when the block ends normally and aborts when it raises:

        with AtomicFile(out) as f:
            pq.write_table(table, f.tmp)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        """Where the caller writes the content."""

    def commit(self) -> None:
        os.chmod(self.tmp, 0o644)  # mkstemp makes files private; results are for sharing
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with AtomicFile(path) as f:
        f.tmp.write_bytes(data)
