"""Read a file from the storage device itself, not from the page cache: the slow tier of an offloading runtime.

An expert that was read once stays in Linux's page cache, and a second read then measures DRAM, not the disk. Two
ways around it, tried in this order:

- `O_DIRECT` (Linux): the read goes from the device into our buffer by DMA, bypassing the cache. It needs the
  buffer, the file offset and the length aligned to the device's logical block; `ALIGN` (4096) covers every common
  device, and `mmap` gives page-aligned buffers. Files meant for it are padded to `ALIGN` (`write_padded`).
- `posix_fadvise(POSIX_FADV_DONTNEED)` before each read: the kernel drops the file's clean cached pages, so the
  read that follows goes to the device (files are fsynced when written, so their pages are clean).

Some file systems (tmpfs, some overlays) refuse `O_DIRECT`; `UncachedReader` probes the directory and says which
way it uses in `method`, which calibration writes into the profile's citation.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from pathlib import Path

ALIGN = 4096
"""Byte alignment of O_DIRECT buffers, offsets and lengths."""
HUGE_PAGE = 2 << 20

O_DIRECT = "O_DIRECT"
FADVISE = "posix_fadvise(POSIX_FADV_DONTNEED)"
PLAIN = "plain read (page cache NOT defeated: neither O_DIRECT nor posix_fadvise is available)"


def padded(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of ALIGN."""
    return -(-nbytes // ALIGN) * ALIGN


def aligned_buffer(nbytes: int) -> memoryview:
    """A zeroed, page-aligned buffer of at least `nbytes` (rounded up to ALIGN) for O_DIRECT reads, in huge pages
    where the platform has them (`huge_page_buffers`)."""
    return huge_page_buffers(1, max(nbytes, 1))[0]


def write_padded(path: str | os.PathLike, data) -> None:
    """Write `data` (bytes-like) zero-padded to a multiple of ALIGN and fsync it, so its cached pages are clean."""
    view = memoryview(data).cast("B")
    with open(path, "wb") as f:
        f.write(view)
        pad = padded(len(view)) - len(view)
        if pad:
            f.write(bytes(pad))
        f.flush()
        os.fsync(f.fileno())


class UncachedReader:
    """Reads whole (ALIGN-padded) files into aligned buffers, bypassing the page cache the best way `directory`
    allows."""

    def __init__(self, directory: str | os.PathLike, method: str | None = None):
        self.directory = Path(directory)
        self.method = method or self._probe()

    def read_into(self, path: str | os.PathLike, buffer, nbytes: int) -> None:
        """Read the first `nbytes` of `path` (rounded up to ALIGN, within the padded file) into `buffer`."""
        length = padded(nbytes)
        view = memoryview(buffer)[:length]
        if self.method == O_DIRECT:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        else:
            fd = os.open(path, os.O_RDONLY)
            if self.method == FADVISE:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            got = os.preadv(fd, [view], 0)
        finally:
            os.close(fd)
        if got < nbytes:
            raise OSError(f"{path}: short read, {got} of {nbytes} bytes")

    def _probe(self) -> str:
        """O_DIRECT if a padded probe file in the directory reads back through it, else fadvise, else plain."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".uncached_read_probe_{os.getpid()}"
        write_padded(probe, b"\x01" * ALIGN)
        try:
            if hasattr(os, "O_DIRECT"):
                buffer = aligned_buffer(ALIGN)
                try:
                    self.method = O_DIRECT
                    self.read_into(probe, buffer, ALIGN)
                    if buffer[:1] == b"\x01":
                        return O_DIRECT
                except OSError:
                    pass
            return FADVISE if hasattr(os, "posix_fadvise") else PLAIN
        finally:
            probe.unlink(missing_ok=True)


def huge_page_buffers(count: int, nbytes: int) -> list[memoryview]:
    """`count` page-aligned buffers of `padded(nbytes)` bytes, carved from one anonymous mapping advised to use
    transparent huge pages (where the platform has them) and faulted in now.

    Why huge pages: an O_DIRECT read pins its destination pages, and on the virtual machine this was built on,
    reading 1 MB experts into 4 KiB pages cost 70-117 us of CPU per read to submit and bursts of four reads took
    3.6-4.4 ms, against 15-17 us and 1.2 ms into huge pages (interleaved, same files); 4 KiB-page reads were also
    1.3-2.6x slower into a buffer that had taken a read shortly before, which huge pages do not show (within ~5%).
    It is the CPU's counterpart of pinned memory for GPU copies.
    """
    size = padded(nbytes)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    arena = mmap.mmap(-1, size * count + HUGE_PAGE, flags=flags) if flags else mmap.mmap(-1, size * count + HUGE_PAGE)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        arena.madvise(mmap.MADV_HUGEPAGE)
    arena.write(bytes(len(arena)))  # fault the pages in now, not during a timed read
    view = memoryview(arena)
    return [view[i * size : (i + 1) * size] for i in range(count)]



class BufferRing:
    """Read buffers (`huge_page_buffers`) handed out first-in first-out: a buffer given back is taken again only
    after every other free buffer has been, as a runtime that recycles evicted experts' memory does."""

    def __init__(self, count: int, nbytes: int):
        self.nbytes = nbytes
        self.count = count
        self._free = deque(huge_page_buffers(count, nbytes))

    def take(self) -> memoryview:
        return self._free.popleft()

    def give(self, buffer: memoryview) -> None:
        self._free.append(buffer)

    def __len__(self) -> int:
        """Buffers free now."""
        return len(self._free)
