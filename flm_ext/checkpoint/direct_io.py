"""Writing a file sequentially past the page cache (O_DIRECT), for the offline checkpoint writers.

A buffered write copies every byte into a page-cache page the writer never reads again, and on a
VM whose free memory goes back to the host each fresh page costs far more than the copy itself:
that copy was half of the growth tool's CPU time (docs/BENCHMARKS.md). `DirectFile` copies the
bytes into two page-aligned staging buffers instead and hands each full one to a thread that
writes it with O_DIRECT (the device reads it straight from memory) while the other fills. The
last, partial block is padded to the alignment and the file truncated to its true size. The
bytes on disk are the same as a buffered write's; where O_DIRECT is refused (tmpfs, some network
file systems) `open_sequential` returns None and the caller writes through the page cache.
"""
from __future__ import annotations

import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor

ALIGN = 4096                 # offsets, lengths and addresses: a multiple of every common logical block
STAGING_BYTES = 32 * 2 ** 20  # per buffer; two per open file


class DirectFile:
    """Sequential writes through two aligned staging buffers, one written while the other fills."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffers = [_STAGING.pop() if _STAGING else _staging_buffer() for _ in range(2)]
        self.pending: list[Future | None] = [None, None]
        self.current = 0    # the buffer being filled
        self.fill = 0       # bytes in it
        self.offset = 0     # file offset of its first byte
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="flm-direct-write")

    def write(self, data) -> int:
        """Append `data` (any buffer); returns its length."""
        view = memoryview(data).cast("B")
        total = view.nbytes
        while view.nbytes:
            buffer = self.buffers[self.current]
            n = min(len(buffer) - self.fill, view.nbytes)
            buffer[self.fill:self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == len(buffer):
                self._hand_over(self.fill)
        return total

    def _hand_over(self, length: int) -> None:
        """Write the current buffer's first `length` bytes (a multiple of ALIGN) in the thread, then
        switch to the other buffer once its own write has finished."""
        done = self.current
        self.pending[done] = self.pool.submit(_pwrite_all, self.fd, memoryview(self.buffers[done])[:length],
                                              self.offset)
        self.offset += length
        self.current, self.fill = 1 - done, 0
        self._wait(self.current)

    def _wait(self, index: int) -> None:
        pending, self.pending[index] = self.pending[index], None
        if pending is not None:
            pending.result()  # a write error surfaces here

    def close(self, sync: bool = False) -> None:
        """Write what is left (padded to ALIGN, then truncated back), fsync if `sync`, close."""
        try:
            size = self.offset + self.fill
            if self.fill:
                padded = -(-self.fill // ALIGN) * ALIGN
                self.buffers[self.current][self.fill:padded] = bytes(padded - self.fill)
                self._hand_over(padded)
            for index in (0, 1):
                self._wait(index)
            os.ftruncate(self.fd, size)
            if sync:
                os.fsync(self.fd)
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop without finishing the file (the caller removes it); waits for a write in flight.
        Also what `close` ends with; a second call does nothing."""
        self.pool.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _STAGING.extend(self.buffers)  # the next file reuses them: no fresh pages to fault in
        self.buffers = []


_STAGING: list = []  # this process's free staging buffers


def _staging_buffer() -> mmap.mmap:
    """A page-aligned private buffer (an anonymous mapping starts on a page boundary)."""
    return mmap.mmap(-1, STAGING_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"short write at offset {offset}")
        if n % ALIGN and n != view.nbytes:
            raise OSError(f"unaligned short write ({n} bytes) at offset {offset}")
        view, offset = view[n:], offset + n


def open_sequential(path: str) -> DirectFile | None:
    """`path` created (truncated) for O_DIRECT writing, or None where the OS or file system refuses
    O_DIRECT (the caller then writes it buffered)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o666)
    except OSError:
        return None
    return DirectFile(fd)
