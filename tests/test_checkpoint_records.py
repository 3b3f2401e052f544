"""records.py writes torch.save's bytes itself: every dtype and shape the checkpoints hold must come
out byte for byte as torch.save writes it (the reference), and a DCP folder written with it must
read back through torch's own checkpoint reader."""
from __future__ import annotations

import io

import pytest
import torch

from flm_ext.checkpoint.records import supported, tensor_blob


def _torch_save(t: torch.Tensor) -> bytes:
    stream = io.BytesIO()
    torch.save(t, stream)
    return stream.getvalue()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64,
                                   torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(), (1,), (5,), (7, 13), (1, 3, 4), (1, 96, 64), (3, 1000)])
def test_blob_equals_torch_save(dtype, shape):
    assert supported()
    g = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    t = (torch.randn(shape, generator=g) * 50).to(dtype)
    blob = tensor_blob(t)
    assert blob is not None
    assert blob.data.nbytes == t.nbytes  # the tensor's own buffer, not a copy
    assert b"".join(bytes(p) for p in blob.parts) == _torch_save(t)
    assert len(blob) == len(_torch_save(t))


def test_unsupported_cases_fall_back_to_torch_save():
    assert tensor_blob(torch.zeros(0)) is None  # an empty record has no data descriptor: torch.save writes it
    assert tensor_blob(torch.zeros(3, 0)) is None


def test_reader_reads_whole_chunks_directly_and_equals_torchs_reader(tmp_path):
    """CheckpointReader reads a stored chunk with one pread when its archive starts with torch.save's
    bytes for that shape; every tensor, layer and sub-slice equals what torch's own reader (torch.load
    per chunk) returns, and whole chunks never reach torch's reader."""
    from flm_ext.checkpoint import CheckpointReader, write_chunks
    from flm_ext.checkpoint.writer import tensor_chunks

    chunks = (tensor_chunks("w", "w", "param", (24, 16), torch.bfloat16, 3)
              + tensor_chunks("e", "e", "param", (40, 8), torch.float32, None))

    def produce(c):
        g = torch.Generator().manual_seed(hash((c.key, c.layer)) % 2 ** 31)
        return torch.randn(c.sizes, generator=g).to(c.dtype)

    write_chunks(str(tmp_path), chunks, produce, bucket_bytes=2000, direct=False)  # torch's own writer
    fast, reference = CheckpointReader(str(tmp_path)), CheckpointReader(str(tmp_path))
    reference._read_direct = lambda items, loader, what: items
    to_torch = []
    original = fast.reader.read_data
    fast.reader.read_data = lambda plan, planner: (to_torch.extend(plan.items), original(plan, planner))[1]
    for key in ("w", "e"):
        assert torch.equal(fast.read(key), reference.read(key))
    for layer in range(3):
        assert torch.equal(fast.read_layer("w", layer), reference.read_layer("w", layer))
    assert not to_torch
    sliced = fast.read("w", (1, 3, 2), (2, 5, 7))  # part of a chunk: torch's reader does it
    assert torch.equal(sliced, reference.read("w", (1, 3, 2), (2, 5, 7))) and to_torch
