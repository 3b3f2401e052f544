"""Writing and reading files past the page cache (O_DIRECT), for the offline checkpoint tools.

A buffered write copies every byte into a page-cache page the writer never reads again, and on a
VM whose free memory goes back to the host each fresh page costs far more than the copy itself:
that copy was half of the growth tool's CPU time (docs/BENCHMARKS.md). `DirectFile` copies the
bytes into two page-aligned staging buffers instead and hands each full one to a thread that
writes it with O_DIRECT (the device reads it straight from memory) while the other fills. The
last, partial block is padded to the alignment and the file truncated to its true size. The
bytes on disk are the same as a buffered write's; where O_DIRECT is refused (tmpfs, some network
file systems) `open_sequential` returns None and the caller writes through the page cache.

Reading: `InputImage` reads a tool's input files once into one anonymous mapping, with O_DIRECT,
hashing each (xxh3-64, the manifest's checksum) as it lands. On this VM a buffered read of a file
not in the cache costs ~1.6 CPU seconds per GiB (fresh page-cache pages, then a copy out of them);
O_DIRECT into fresh anonymous memory ~0.8, straight from the device. Nothing here imports torch: a
tool starts the image before it imports torch, and forked workers share its pages.
"""
from __future__ import annotations

import mmap
import os
import threading
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


class InputImage:
    """Files read once, in a thread, into this process's memory: `view(path)` gives a file's bytes
    once read, `checksums` their xxh3-64 (hex). The files are taken in order while their total
    (each rounded up to ALIGN) stays within `limit` bytes; the rest (and a file that could not be
    read: its reader reports it) are read as usual by their caller. `wait()` before forking:
    children share the pages written before the fork, and a fork must not copy a thread in the
    middle of its work."""

    def __init__(self, paths: list[str], limit: int):
        self.spans: dict[str, tuple[int, int]] = {}  # path -> (offset in the mapping, size)
        self.checksums: dict[str, str] = {}
        self._done: set[str] = set()
        offset = 0
        for path in paths:
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if offset + size > limit:
                break
            self.spans[path] = (offset, size)
            offset += -(-size // ALIGN) * ALIGN
        self.memory = mmap.mmap(-1, max(offset, ALIGN), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._thread = threading.Thread(target=self._read_all, name="flm-input-image", daemon=True)
        self._thread.start()

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self.spans.values())

    def _read_all(self) -> None:
        import xxhash

        for path, (offset, size) in self.spans.items():
            view = memoryview(self.memory)[offset:offset + -(-size // ALIGN) * ALIGN]
            try:
                got = _read_file_into(path, view, size)
            except OSError:
                continue
            if got == size:
                self.checksums[path] = xxhash.xxh3_64(view[:size]).hexdigest()
                self._done.add(path)

    def wait(self) -> "InputImage":
        self._thread.join()
        return self

    def view(self, path: str) -> memoryview | None:
        """The file's bytes, if it was read whole (after `wait()`), else None."""
        if path not in self._done:
            return None
        offset, size = self.spans[path]
        return memoryview(self.memory)[offset:offset + size]


def _read_file_into(path: str, view: memoryview, size: int) -> int:
    """Read the file into `view` (page-aligned, its length `size` rounded up to ALIGN): O_DIRECT where
    the file system allows it, else plain reads; returns the bytes read."""
    flag = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, os.O_RDONLY | flag) if flag else -1
    except OSError:
        fd = -1
    direct = fd >= 0
    if not direct:
        fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < size:
            end = min(view.nbytes, done + STAGING_BYTES) if direct else min(size, done + STAGING_BYTES)
            n = os.preadv(fd, [view[done:end]], done)
            if n <= 0:
                break
            done += n
        return min(done, size)
    finally:
        os.close(fd)
