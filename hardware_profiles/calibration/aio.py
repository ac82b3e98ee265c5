"""Asynchronous uncached reads with Linux native AIO (io_setup / io_submit / io_getevents), through ctypes.

With O_DIRECT the device fills the buffer by DMA while the submitting thread goes on computing: no helper thread or
process has to be scheduled for a read to progress, so on a machine whose cores are busy with other work a load
costs what the device costs, as a GPU's copy engine does. Python has no binding for these system calls, so this
module makes them through libc's `syscall()` (x86-64 and arm64 numbers).

Waiting polls the completion queue rather than sleeping in the kernel (as CUDA's default synchronisation spins): a
sleeping process must be woken and scheduled again, and on a loaded machine that takes milliseconds that belong to
the scheduler, not to the device.
"""

from __future__ import annotations

import ctypes
import os
import platform

_SYSCALLS = {  # io_setup, io_destroy, io_getevents, io_submit
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
    "arm64": (0, 1, 4, 2),
}
IOCB_CMD_PREAD = 0


class _IOCB(ctypes.Structure):
    """struct iocb of <linux/aio_abi.h> (little-endian layout)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


def aio_available() -> bool:
    """True on Linux x86-64/arm64 (whether the kernel allows AIO shows when an `AsyncReader` is made)."""
    return platform.system() == "Linux" and platform.machine() in _SYSCALLS and hasattr(os, "O_DIRECT")


def buffer_address(buffer) -> int:
    """The address of a writable buffer's first byte (an mmap or a memoryview of one)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class AsyncReader:
    """Queues whole-file O_DIRECT reads into aligned buffers and reports when each has finished.

    `submit` hands all reads to the kernel in one call; `wait(ticket)` returns once that read is complete
    (completions may arrive in any order). A file is opened on its first read and kept open until `close()`, as a
    runtime keeps its expert files open: the open costs no time per load.
    """

    def __init__(self, depth: int = 256):
        if not aio_available():
            raise OSError("Linux native AIO needs Linux on x86-64 or arm64")
        self._setup, self._destroy, self._getevents, self._submit = _SYSCALLS[platform.machine()]
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._ctx = ctypes.c_ulong(0)
        if self._libc.syscall(ctypes.c_long(self._setup), ctypes.c_uint(depth), ctypes.byref(self._ctx)) != 0:
            raise OSError(ctypes.get_errno(), f"io_setup: {os.strerror(ctypes.get_errno())}")
        self.depth = depth
        self._next = 0
        self._open: dict[int, tuple[int, _IOCB]] = {}  # ticket -> (expected bytes, iocb kept alive)
        self._fds: dict = {}  # path -> descriptor, opened on first read and kept until close()
        self._events = (_Event * depth)()
        self._zero = (ctypes.c_long * 2)(0, 0)  # timespec {0, 0}: poll

    def submit(self, reads: list[tuple[str | os.PathLike, memoryview, int]]) -> list[int]:
        """Queue reads of (path, buffer, nbytes rounded up to 4096) in one system call; returns their tickets."""
        iocbs, tickets = [], []
        for path, buffer, nbytes in reads:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECT)
            ticket = self._next
            self._next += 1
            iocb = _IOCB(aio_data=ticket, aio_lio_opcode=IOCB_CMD_PREAD, aio_fildes=fd,
                         aio_buf=buffer_address(buffer), aio_nbytes=-(-nbytes // 4096) * 4096, aio_offset=0)
            self._open[ticket] = (nbytes, iocb)
            iocbs.append(iocb)
            tickets.append(ticket)
        array = (ctypes.POINTER(_IOCB) * len(iocbs))(*(ctypes.pointer(i) for i in iocbs))
        done = 0
        while done < len(iocbs):
            n = self._libc.syscall(ctypes.c_long(self._submit), self._ctx, ctypes.c_long(len(iocbs) - done),
                                   ctypes.byref(array, done * ctypes.sizeof(ctypes.c_void_p)))
            if n < 0:
                raise OSError(ctypes.get_errno(), f"io_submit: {os.strerror(ctypes.get_errno())}")
            done += n
        return tickets

    def wait(self, ticket: int) -> None:
        """Poll the completion queue until read `ticket` has finished."""
        while ticket in self._open:
            n = self._libc.syscall(ctypes.c_long(self._getevents), self._ctx, ctypes.c_long(0),
                                   ctypes.c_long(self.depth), self._events, self._zero)
            if n < 0:
                err = ctypes.get_errno()
                if err == 4:  # EINTR
                    continue
                raise OSError(err, f"io_getevents: {os.strerror(err)}")
            for event in self._events[:n]:
                nbytes, _ = self._open.pop(event.data)
                if event.res < nbytes:
                    raise OSError(f"asynchronous read returned {event.res} (of {nbytes} bytes)")

    def close(self) -> None:
        for ticket in list(self._open):
            self.wait(ticket)
        self._libc.syscall(ctypes.c_long(self._destroy), self._ctx)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "AsyncReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
