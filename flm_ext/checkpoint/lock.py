"""One writer per `--save` folder: a lock file naming its holder (host, pid, process start, job).

Two trainers saving into one folder delete each other's partial saves and report iterations they
never wrote. The lock is created atomically (a hard link of a complete temporary file: also atomic
on NFS, where many clusters keep checkpoints) and holds the holder's host and pid, the process's
start time (so a reused pid is not mistaken for the holder) and its job id (SLURM_JOB_ID or
torchrun's run id). Only rank 0 of a run takes it; the other ranks, on any host, never look at it.

A lock is stale, and taken over with a warning, when its process is gone on this host, or when it
was taken by an earlier attempt of the same job (a requeued or restarted job whose rank 0 landed
on another host). Any other holder makes `acquire` refuse in one line naming it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

from flm_ext.checkpoint.layout import CheckpointError

LOCK_FILE = "flm_save.lock"


class SaveFolderInUse(CheckpointError):
    """Another trainer holds the folder's lock; the message names it and what to do."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str | None  # the process's start time in clock ticks since boot (/proc/<pid>/stat), if known
    job: str | None
    since: str

    def describe(self) -> str:
        job = f", job {self.job}" if self.job else ""
        return f"pid {self.pid} on host {self.host}{job}, since {self.since}"


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
    except (OSError, IndexError):
        return None


def _job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    return job if job and job != "none" else None


def this_process() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), _process_start(os.getpid()), _job_id(),
                  time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def _alive(holder: Holder) -> bool:
    """Whether the holder's process still runs (asked on the holder's host only)."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid
        pass
    started = _process_start(holder.pid)
    return holder.started is None or started is None or started == holder.started


def read_holder(path: str) -> Holder | None:
    """The holder a lock file names, or None when the file is unreadable or not a lock."""
    try:
        with open(path, encoding="utf-8") as f:
            return Holder(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def _stale_reason(holder: Holder | None, me: Holder) -> str | None:
    if holder is None:
        return "it is unreadable"
    if holder.host == me.host and holder.pid == me.pid:
        return "this process"
    if holder.host == me.host and not _alive(holder):
        return f"its process ({holder.describe()}) is gone"
    if holder.job and holder.job == me.job and holder.host != me.host:
        return f"it was taken by an earlier attempt of this job ({holder.describe()})"
    return None


def _link_new(path: str, me: Holder) -> bool:
    """Create `path` holding `me`, atomically; False when it already exists."""
    tmp = f"{path}.{me.host}.{me.pid}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(me), f)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def acquire(root: str) -> str | None:
    """Take the lock of the save folder `root` (created if needed); returns a warning when a stale
    lock was taken over. Raises SaveFolderInUse when another live trainer holds it."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_FILE)
    me = this_process()
    for _ in range(3):  # a competing takeover can remove a lock between our steps: look again
        if _link_new(path, me):
            return None
        holder = read_holder(path)
        reason = _stale_reason(holder, me)
        if reason is None:
            raise SaveFolderInUse(
                f"--save {root} is in use by another trainer ({holder.describe()}): two writers would delete each "
                f"other's saves; wait for it to finish or pass another --save (if no such trainer runs, delete "
                f"{path})")
        if reason == "this process":
            return None
        aside = f"{path}.stale.{me.pid}"
        try:
            os.rename(path, aside)  # atomic: of two processes taking over, one moves it
        except FileNotFoundError:
            continue
        moved = read_holder(aside)
        if moved != holder:  # a live trainer's fresh lock was moved: put it back unless one exists again
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.unlink(aside)
            continue
        os.unlink(aside)
        if _link_new(path, me):
            return f"warning: took over the stale lock {path}: {reason}"
    raise SaveFolderInUse(f"--save {root}: could not take its lock {path} (other trainers keep taking it)")


def release(root: str) -> None:
    """Remove the lock if this process holds it (never another trainer's)."""
    path = os.path.join(root, LOCK_FILE)
    holder = read_holder(path)
    me = this_process()
    if holder is not None and (holder.host, holder.pid) == (me.host, me.pid):
        os.unlink(path)
