"""Child processes that die with their parent (Linux's PR_SET_PDEATHSIG), for the trainer's helpers.

No torch import here: unpickling `die_with_parent` in a spawned helper costs no torch import.
"""
from __future__ import annotations

import os


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG).

    megatron-core's checkpoint writers (the forked async writer, its forked per-file writers, the
    spawned multiprocessing Manager that collects their results and, unpickling them, imports
    torch: ~250 MB) outlive a trainer killed with SIGKILL otherwise. If the parent already died before this call,
    exit now. A no-op off Linux.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


_FORKED_CHILDREN_DIE_WITH_PARENT = False
_FORKING_PID = None


def _remember_forking_pid() -> None:
    global _FORKING_PID
    _FORKING_PID = os.getpid()


def forked_children_die_with_parent() -> None:
    """Every process forked from this one from now on (checkpoint writers, data workers) gets
    `die_with_parent`; children forked by those children inherit the rule, tied to their own parent."""
    global _FORKED_CHILDREN_DIE_WITH_PARENT
    if _FORKED_CHILDREN_DIE_WITH_PARENT:
        return
    _FORKED_CHILDREN_DIE_WITH_PARENT = True
    os.register_at_fork(before=_remember_forking_pid, after_in_child=lambda: die_with_parent(_FORKING_PID))
