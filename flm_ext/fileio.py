"""Crash-safe file output, shared by every tool that writes: nothing half-written is ever left
where a reader looks.

- `atomic_write(path, data)`: write `path.tmp`, fsync, rename over `path`, fsync the folder.
- `building(final)`: a context manager that yields `final + ".partial"`, fsyncs the tree and renames
  it to `final` on success, and removes it on any failure (Ctrl-C and SIGTERM included).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil


def fsync_dir(path: str) -> None:
    """Make a rename or a new file inside `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsync every file and folder below `root` (before renaming a finished output into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write(path: str, data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` in one step: readers see the old file or the new one, never a part."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_json(path: str, obj, **kwargs) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False, **kwargs) + "\n")


@contextlib.contextmanager
def building(final: str):
    """Yield a `.partial` folder to build `final` in; rename on success, remove on failure.

    Refuses an existing `final` (the caller says so with the flag's name before calling); a stale
    `.partial` from an interrupted run is removed first.
    """
    final = os.path.normpath(final)
    if os.path.lexists(final):
        raise FileExistsError(f"{final} already exists")
    partial = final + ".partial"
    if os.path.lexists(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    try:
        yield partial
        fsync_tree(partial)
        os.rename(partial, final)
        fsync_dir(os.path.dirname(os.path.abspath(final)))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def stop_cleanly_on_sigterm(tool: str) -> None:
    """Turn SIGTERM into SystemExit, so a tool writing through `building` removes its partial output
    (the default SIGTERM action would leave it behind) and says why it stopped."""
    import signal

    def stop(signum, frame):
        raise SystemExit(f"{tool}: stopped by signal {signum}; nothing was written at the --save path")

    signal.signal(signal.SIGTERM, stop)


def read_ahead(paths: list[str], limit: int | None = None):
    """Read `paths` (at most `limit` bytes of them) into the page cache in a daemon thread; returns
    a `threading.Event` that stops it.

    For a tool whose first seconds go to importing torch while the disk sits idle: the files it is
    about to read are then read (and checked) from memory. Best effort: an unreadable file is
    skipped, the real read reports it. Reads release the GIL, so the imports go on meanwhile."""
    import threading

    stop = threading.Event()

    def run() -> None:
        buffer, left = bytearray(8 * 2 ** 20), limit
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as f:
                    while not stop.is_set() and (left is None or left > 0) and (n := f.readinto(buffer)):
                        left = None if left is None else left - n
            except OSError:
                pass
            if stop.is_set() or (left is not None and left <= 0):
                return

    threading.Thread(target=run, name="flm-read-ahead", daemon=True).start()
    return stop
