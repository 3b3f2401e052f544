"""The O_DIRECT sequential writer of the offline checkpoint tools (flm_ext/checkpoint/direct_io.py):
the file holds exactly the bytes appended, whatever the pieces' sizes against the staging buffers and
the alignment, and a file system that refuses O_DIRECT gets the buffered writer with the same bytes.
The input image: each file's exact bytes and xxh3 checksum, within its limit, with or without O_DIRECT."""
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


def _refuse_o_direct(monkeypatch) -> None:
    """direct_io's os.open fails with EINVAL for O_DIRECT, as on tmpfs."""
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_io.os, "open", no_direct)


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
            _refuse_o_direct(monkeypatch)
            assert open_sequential(str(tmp_path / "probe")) is None
        else:
            _direct(tmp_path / "probe").abort()  # O_DIRECT is there: the first folder is written with it
        folder = tmp_path / mode
        folder.mkdir()
        checksums = write_chunks(str(folder), chunks, produce, bucket_bytes=100_000)
        outputs[mode] = ({p.name: p.read_bytes() for p in folder.iterdir()}, checksums)
    assert outputs["direct"] == outputs["refused"]
    assert len(outputs["direct"][0]) > 2


@pytest.mark.parametrize("o_direct", [True, False])
def test_the_input_image_holds_each_files_bytes_and_checksum_within_its_limit(tmp_path, monkeypatch, o_direct):
    """Files of odd sizes (across the alignment and the 32 MiB read size) read whole, their
    checksums equal integrity.file_checksum's; a missing file is skipped, and the files past the
    limit are left to their reader (view None), as is everything while O_DIRECT is refused."""
    from flm_ext.checkpoint.direct_io import InputImage
    from flm_ext.checkpoint.integrity import file_checksum

    if not o_direct:
        _refuse_o_direct(monkeypatch)
    rng = random.Random(3)
    sizes = [ALIGN + 3, STAGING_BYTES + 5, 1, 2 * ALIGN, 1000]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(str(tmp_path / f"f{i}"))
        with open(paths[-1], "wb") as f:
            f.write(rng.randbytes(size))
    limit = sum(-(-size // ALIGN) * ALIGN for size in sizes[:4])  # each file's memory is aligned; the last one does not fit
    image = InputImage([paths[0], str(tmp_path / "missing"), *paths[1:]], limit=limit).wait()
    assert image.nbytes == sum(sizes[:4])
    for path in paths[:4]:
        with open(path, "rb") as f:
            assert image.view(path) == f.read(), path
        assert image.checksums[path] == file_checksum(path)
    assert image.view(paths[4]) is None and paths[4] not in image.checksums
    assert image.view(str(tmp_path / "missing")) is None


def test_a_growth_from_the_input_image_writes_the_same_bytes_as_one_from_the_files(tmp_path):
    """grow_checkpoint with the shards in an InputImage (as tools/grow_checkpoint.py runs it) and
    without one (plain reads, checksums read from the files) write the same folder, byte for byte."""
    from flm_ext.checkpoint import resolve
    from flm_ext.checkpoint.direct_io import InputImage
    from flm_ext.config import get_preset
    from flm_ext.growth.offline import grow_checkpoint
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    src = tmp_path / "src"
    write_synthetic_checkpoint(str(src), get_preset("tiny-stage1", num_layers=2, vocab_size=512), iteration=2)
    folder, _ = resolve(str(src))
    shards = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".distcp"))
    outputs = {}
    for mode in ("image", "files"):
        image = InputImage(shards, limit=2 ** 40) if mode == "image" else None
        out = tmp_path / mode
        grow_checkpoint(str(src), str(out), {"hidden_size": 96, "num_attention_heads": 6, "num_layers": 3},
                        bucket_bytes=2 ** 20, log=lambda message: None, progress_interval=0, input_image=image)
        if image is not None:
            assert len(image.checksums) == len(shards)  # every shard came from memory
        outputs[mode] = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert outputs["image"].keys() == outputs["files"].keys() and len(outputs["image"]) > 3
    for name, data in outputs["image"].items():
        assert outputs["files"][name] == data, name
