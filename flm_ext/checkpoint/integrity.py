"""Checkpoint integrity: a manifest of sizes and checksums, and loading that never runs code.

Manifest: `manifest.json` in each iteration folder lists every file the save wrote with its size
and xxh3-64 checksum (xxhash: several GB/s, so verifying costs a small part of a load; numbers in
docs/BENCHMARKS.md). Each rank hashes the files it wrote right after writing them; a load verifies
each file before anything is unpickled from it and names the first damaged one. Folders written
before manifests existed load with a one-line warning.

Safety: torch's checkpoint reader unpickles `.metadata` with plain pickle, and its default load
planner reads byte objects with `torch.load(weights_only=False)`: either runs code from a crafted
file. Before any of that, `check_safe` reads `.metadata` with an unpickler that admits only the
checkpoint-metadata types, `common.pt` with `weights_only=True`, and every byte object with
`weights_only=True`; a file that needs anything else is refused.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import torch
import xxhash

from flm_ext.checkpoint.layout import CheckpointError
from flm_ext.fileio import atomic_write_json

MANIFEST = "manifest.json"
ALGORITHM = "xxh3_64"
_BLOCK = 4 * 2 ** 20


def file_checksum(path: str) -> str:
    """xxh3-64 of a file, read into one reused buffer (no allocation per block)."""
    h = xxhash.xxh3_64()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def describe_files(folder: str, names: list[str]) -> dict:
    """{name: {"size", "xxh3_64"}} for files in `folder` (what the rank that wrote them contributes)."""
    return {name: {"size": os.path.getsize(os.path.join(folder, name)),
                   ALGORITHM: file_checksum(os.path.join(folder, name))} for name in names}


def write_manifest(folder: str, files: dict) -> None:
    atomic_write_json(os.path.join(folder, MANIFEST), {"version": 1, "algorithm": ALGORITHM,
                                                       "files": dict(sorted(files.items()))})


def manifest_for_tree(folder: str, known: dict | None = None) -> None:
    """Write the manifest of every file in `folder` (single-process writers: growth, import), hashing
    those whose entries `known` does not already hold."""
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and n != MANIFEST)
    known = {n: known[n] for n in names if known and n in known}
    write_manifest(folder, {**known, **describe_files(folder, [n for n in names if n not in known])})


def read_manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("algorithm") != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f"unknown algorithm {manifest.get('algorithm')!r}")
        return files
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e}) (checkpoint damaged)") from None


def verify_files(folder: str, names: list[str] | None = None) -> int:
    """Check sizes and checksums of the manifest's files (or of `names` among them); returns bytes
    checked. Raises CheckpointError naming the first missing or damaged file."""
    files = read_manifest(folder)
    if files is None:
        return 0
    checked, names = 0, (sorted(files) if names is None else names)
    for name in names:
        entry, path = files[name], os.path.join(folder, name)
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: missing (checkpoint damaged)")
        size = os.path.getsize(path)
        if size != entry["size"]:
            raise CheckpointError(f"{path}: size {size} bytes, the manifest says {entry['size']} "
                                  f"(checkpoint damaged)")
        checked += size
    # Two files at a time: one is read while the other is hashed (reads release the GIL).
    with ThreadPoolExecutor(2) as pool:
        sums = pool.map(file_checksum, [os.path.join(folder, name) for name in names])
        for name, checksum in zip(names, sums):
            if checksum != files[name][ALGORITHM]:
                raise CheckpointError(f"{os.path.join(folder, name)}: checksum mismatch (checkpoint damaged)")
    return checked


def manifest_names(folder: str) -> list[str] | None:
    files = read_manifest(folder)
    return None if files is None else sorted(files)


# --- loading without running code -----------------------------------------------------------------

_METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {"SavePlan", "LoadPlan", "WriteItem", "ReadItem", "TensorWriteData",
                                             "WriteItemType", "LoadItemType"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},  # checkpoint ids
    "builtins": {"set", "frozenset", "slice"},
}


def _enum_member(cls, name):
    """`getattr` as some Python versions pickle enum members (getattr(Enum class, member name)), but
    only for the admitted enum classes and their members: nothing else can be reached through it."""
    import enum

    if not (isinstance(cls, type) and issubclass(cls, enum.Enum)
            and cls.__name__ in _METADATA_TYPES.get(cls.__module__, ())):
        raise pickle.UnpicklingError(f"getattr on {cls!r} is not a checkpoint-metadata enum member")
    if not isinstance(name, str) or name not in cls.__members__:
        raise pickle.UnpicklingError(f"{cls.__name__}.{name} is not a member of that enum")
    return cls.__members__[name]


class _MetadataUnpickler(pickle.Unpickler):
    """Admits the checkpoint-metadata classes, their enum members, torch.Size and torch
    dtypes / layouts / memory formats."""

    def find_class(self, module, name):
        if (module, name) == ("builtins", "getattr"):
            return _enum_member
        if name in _METADATA_TYPES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                          torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint-metadata type")


def load_metadata(folder: str):
    """torch's checkpoint Metadata of `folder`, read without running code from it."""
    path = os.path.join(folder, ".metadata")
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (checkpoint incomplete)") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: {e} (crafted or foreign file)") from None
    except (EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}) (checkpoint damaged)") from None


def load_common(folder: str) -> dict:
    """megatron's `common.pt` (iteration, flm config, scheduler...), with weights_only=True."""
    path = os.path.join(folder, "common.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (checkpoint incomplete)") from None
    except pickle.UnpicklingError:
        with open(path, "rb") as f:
            needs = _refused_globals(f.read())
        raise CheckpointError(f"{path}: refused to load: it needs {needs}, which could run code "
                              f"(crafted or foreign checkpoint)") from None
    except (EOFError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]}) (checkpoint damaged)") from None


def _numpy_array_globals() -> list:
    """What a pickled numpy array (numpy's RNG state in megatron's saved RNG) needs: data, not code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _refused_globals(data: bytes) -> str:
    try:
        return ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - only used to word the message
        return "unknown"


def check_byte_object(folder: str, key: str, data: bytes) -> None:
    """A byte object (RNG state, extra state) must load with weights_only=True (numpy arrays allowed)."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{folder}: object {key!r} refused: it needs {_refused_globals(data)}, "
                              f"which could run code (crafted or foreign checkpoint)") from None
    except Exception as e:  # noqa: BLE001 - any other failure means the bytes are damaged
        raise CheckpointError(f"{folder}: object {key!r} unreadable ({type(e).__name__}) (checkpoint damaged)") \
            from None
