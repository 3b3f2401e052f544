"""Where a run's checkpoints live on disk (Megatron-LM's layout, so its users and tools recognise it).

    <root>/iter_0000200/                    one complete checkpoint (torch_dist folder)
    <root>/iter_0000300.partial/            a save in progress (ignored; removed by the next save)
    <root>/latest_checkpointed_iteration.txt

A complete iteration folder holds megatron's `metadata.json` and `common.pt`, torch's `.metadata`
and the `.distcp` shards, plus our `manifest.json` (sizes and checksums). This module owns those
names; everything else (trainer, growth, evaluation, export) goes through it.
"""
from __future__ import annotations

import os
import re

from flm_ext.fileio import atomic_write

LATEST = "latest_checkpointed_iteration.txt"
PARTIAL_SUFFIX = ".partial"
REQUIRED_FILES = ("metadata.json", "common.pt", ".metadata")
_ITER_DIR = re.compile(r"^iter_(\d{7})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, damaged or unsafe; the message names the path."""


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def iteration_of(folder: str) -> int | None:
    """N for a folder named iter_N, else None."""
    match = _ITER_DIR.match(os.path.basename(os.path.normpath(folder)))
    return int(match.group(1)) if match else None


def missing_files(folder: str) -> list[str]:
    return [name for name in REQUIRED_FILES if not os.path.exists(os.path.join(folder, name))]


def iterations_present(root: str) -> list[int]:
    """Every `iter_N` folder under `root` (complete or not), sorted."""
    if not os.path.isdir(root):
        return []
    return sorted(n for n in (iteration_of(name) for name in os.listdir(root)) if n is not None)


def complete_iterations(root: str) -> list[int]:
    """The `iter_N` folders under `root` that hold every required file (not checksum-verified)."""
    return [n for n in iterations_present(root) if not missing_files(iteration_dir(root, n))]


def _choices(root: str) -> str:
    complete = complete_iterations(root)
    if not complete:
        return f"{root} holds no complete iteration folder"
    listed = ", ".join(str(n) for n in complete[-10:])
    return (f"complete iterations in {root}: {listed}; resume one with --load {root} --ckpt-step N "
            f"(or point --load at a fresh folder to start from scratch)")


def read_latest(root: str) -> int | None:
    """The iteration the latest marker names, or None when `root` holds no checkpoint at all.

    Never silently "no checkpoint": a marker that is unreadable, names a missing or incomplete
    folder, or is absent while `iter_*` folders exist, is an error that lists the choices.
    """
    marker = os.path.join(root, LATEST)
    if not os.path.exists(marker):
        if iterations_present(root):
            raise CheckpointError(f"{marker} is missing but {root} holds iteration folders; {_choices(root)}")
        return None
    try:
        text = open(marker, encoding="utf-8").read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{marker}: unreadable ({e}); {_choices(root)}") from None
    if not text.isdigit():
        raise CheckpointError(f"{marker}: expected an iteration number, found {text[:40]!r}; {_choices(root)}")
    iteration = int(text)
    folder = iteration_dir(root, iteration)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{marker} names iteration {iteration} but {folder} is missing; {_choices(root)}")
    missing = missing_files(folder)
    if missing:
        raise CheckpointError(f"{folder} is incomplete (no {', '.join(missing)}); {_choices(root)}")
    return iteration


def resolve(path: str, iteration: int | None = None) -> tuple[str, int]:
    """(iteration folder, iteration) for a run root (its latest, or `iteration`) or an `iter_N` folder."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    own = iteration_of(path)
    if own is not None:
        if iteration is not None and iteration != own:
            raise CheckpointError(f"{path} is iteration {own}, not the requested {iteration}")
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"{path} is not a complete torch_dist checkpoint (no {', '.join(missing)})")
        return path, own
    if iteration is not None:
        folder = iteration_dir(path, iteration)
        missing = missing_files(folder) if os.path.isdir(folder) else ["folder"]
        if missing:
            raise CheckpointError(f"{folder} is missing or incomplete; {_choices(path)}")
        return folder, iteration
    latest = read_latest(path)
    if latest is None:
        raise CheckpointError(f"{path} holds no checkpoint (no {LATEST} and no iter_N folder)")
    return iteration_dir(path, latest), latest


def holds_checkpoint(root: str) -> bool:
    """Whether `root` holds anything checkpoint-like (a marker or an iteration folder)."""
    return os.path.exists(os.path.join(root, LATEST)) or bool(iterations_present(root))


def write_latest(root: str, iteration: int) -> None:
    atomic_write(os.path.join(root, LATEST), str(iteration))
