"""The O_DIRECT sequential writer of the offline checkpoint tools (flm_ext/checkpoint/direct_io.py):
the file holds exactly the bytes appended, whatever the pieces' sizes against the staging buffers and
the alignment, and a file system that refuses O_DIRECT gets the buffered writer with the same bytes."""
from __future__ import annotations

import os
import random

import pytest
import torch

from flm_ext.checkpoint import direct_io
from flm_ext.checkpoint.direct_io import ALIGN, STAGING_BYTES, open_sequential


def _direct(path):
    out = open_sequential(str(path))
    if out is None:
        pytest.skip(f"{path.parent}: this file system refuses O_DIRECT (the buffered path is tested below)")
    return out


@pytest.mark.parametrize("sizes", [
    [1, ALIGN - 1, 3, STAGING_BYTES + 17, 5 * ALIGN, 2 * STAGING_BYTES - 9, 0, 123457],  # across buffers
    [STAGING_BYTES, STAGING_BYTES],  # whole buffers, nothing left to pad
    [7],                             # one partial block
    [],                              # an empty file
])
def test_the_file_holds_exactly_the_bytes_appended(tmp_path, sizes):
    rng = random.Random(len(sizes))
    pieces = [rng.randbytes(n) for n in sizes]
    for name in ("a", "b"):  # the second file reuses the first one's staging buffers
        out = _direct(tmp_path / name)
        assert [out.write(piece) for piece in pieces] == sizes
        out.close(sync=True)
        assert (tmp_path / name).read_bytes() == b"".join(pieces)
    assert len(direct_io._STAGING) >= 2


def test_a_tensor_is_written_from_its_own_memory(tmp_path):
    tensor = torch.arange(3 * STAGING_BYTES // 4 + 11, dtype=torch.float32)
    out = _direct(tmp_path / "t")
    out.write(memoryview(tensor.numpy()).cast("B"))
    out.close()
    assert (tmp_path / "t").read_bytes() == tensor.numpy().tobytes()


def test_an_aborted_file_closes_and_frees_its_buffers(tmp_path):
    out = _direct(tmp_path / "x")
    out.write(b"x" * (STAGING_BYTES + 1))
    free = len(direct_io._STAGING)
    out.abort()
    out.abort()  # a second call does nothing
    assert out.fd == -1 and len(direct_io._STAGING) == free + 2


def test_a_file_system_without_o_direct_gets_the_buffered_writer_with_the_same_bytes(tmp_path, monkeypatch):
    """write_chunks with O_DIRECT refused (as on tmpfs) writes the same folder, byte for byte."""
    from flm_ext.checkpoint import tensor_chunks
    from flm_ext.checkpoint.writer import write_chunks

    chunks = tensor_chunks("w", "w", "param", (300, 77), torch.float32, 3)
    produce = lambda c: torch.full(c.sizes, float(c.layer) + 0.5)  # noqa: E731
    outputs = {}
    for mode in ("direct", "refused"):
        if mode == "refused":
            real_open = os.open

            def no_direct(path, flags, *args):
                if flags & getattr(os, "O_DIRECT", 0):
                    raise OSError(22, "Invalid argument")
                return real_open(path, flags, *args)

            monkeypatch.setattr(direct_io.os, "open", no_direct)
            assert open_sequential(str(tmp_path / "probe")) is None
        else:
            _direct(tmp_path / "probe").abort()  # O_DIRECT is there: the first folder is written with it
        folder = tmp_path / mode
        folder.mkdir()
        checksums = write_chunks(str(folder), chunks, produce, bucket_bytes=100_000)
        outputs[mode] = ({p.name: p.read_bytes() for p in folder.iterdir()}, checksums)
    assert outputs["direct"] == outputs["refused"]
    assert len(outputs["direct"][0]) > 2
