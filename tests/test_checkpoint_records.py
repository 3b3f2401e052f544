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
