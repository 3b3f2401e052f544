"""The checkpoint format without training: layout rules, the manifest, and the metadata unpickler
(checked against pickles made here: what torch writes, and what an attacker could write)."""
from __future__ import annotations

import io
import os
import pickle

import pytest

from flm_ext.checkpoint import (CheckpointError, complete_iterations, iteration_dir, manifest_for_tree, read_latest,
                                resolve, verify_files, write_latest)
from flm_ext.checkpoint.integrity import _MetadataUnpickler


def _iteration(root, n):
    folder = iteration_dir(str(root), n)
    os.makedirs(folder)
    for name in ("metadata.json", "common.pt", ".metadata"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(os.urandom(64))
    return folder


def test_layout_lists_complete_iterations_and_never_guesses(tmp_path):
    assert read_latest(str(tmp_path)) is None  # nothing at all: a fresh run
    _iteration(tmp_path, 5)
    os.makedirs(iteration_dir(str(tmp_path), 7))  # incomplete
    assert complete_iterations(str(tmp_path)) == [5]
    with pytest.raises(CheckpointError, match="is missing but .* holds iteration folders; complete iterations"):
        read_latest(str(tmp_path))
    write_latest(str(tmp_path), 7)
    with pytest.raises(CheckpointError, match=r"iter_0000007 is incomplete \(no metadata.json"):
        read_latest(str(tmp_path))
    write_latest(str(tmp_path), 5)
    assert resolve(str(tmp_path)) == (iteration_dir(str(tmp_path), 5), 5)
    assert resolve(iteration_dir(str(tmp_path), 5)) == (iteration_dir(str(tmp_path), 5), 5)
    with pytest.raises(CheckpointError, match="--ckpt-step N"):
        resolve(str(tmp_path), 6)


def test_manifest_names_the_damaged_file(tmp_path):
    folder = _iteration(tmp_path, 1)
    manifest_for_tree(folder)
    assert verify_files(folder) == 3 * 64
    path = os.path.join(folder, "common.pt")
    with open(path, "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))  # one flipped byte, same size
    with pytest.raises(CheckpointError, match=r"common.pt: checksum mismatch \(checkpoint damaged\)"):
        verify_files(folder)


def _unpickle(obj_or_bytes):
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else pickle.dumps(obj_or_bytes)
    return _MetadataUnpickler(io.BytesIO(data)).load()


def test_metadata_unpickler_admits_torch_metadata():
    import torch
    from torch.distributed.checkpoint.metadata import (_MEM_FORMAT_ENCODING, ChunkStorageMetadata, Metadata,
                                                       TensorProperties, TensorStorageMetadata)

    md = Metadata({"w": TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16), torch.Size([4, 2]),
                                              [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([4, 2]))])})
    assert _unpickle(md) == md

    class ByName:  # how Python 3.11.2 pickles enum members: getattr(Enum class, member name)
        def __reduce__(self):
            return (getattr, (_MEM_FORMAT_ENCODING, "TORCH_CONTIGUOUS_FORMAT"))

    assert _unpickle(ByName()) is _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


class _GetattrEscape:
    def __reduce__(self):
        return (getattr, (object, "__subclasses__"))


class _NotAMember:
    def __reduce__(self):
        from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING

        return (getattr, (_MEM_FORMAT_ENCODING, "__class__"))


@pytest.mark.parametrize("payload,message", [(_System(), "posix.system is not a checkpoint-metadata type"),
                                             (_GetattrEscape(), "builtins.object is not a checkpoint-metadata"),
                                             (_NotAMember(), "is not a member of that enum")])
def test_metadata_unpickler_refuses_anything_else(payload, message):
    with pytest.raises(pickle.UnpicklingError, match=message):
        _unpickle(payload)
