"""tests/distributed.py's own contract: workers rendezvous on a port the OS gave at bind time, and a
rank that hangs fails the test at one shared deadline with its Python stack, not after N x 600 s."""
import time

import pytest

import distributed


def _sum_of_ranks(rank, world_size, out_dir):
    import torch
    import torch.distributed as dist

    from flm_ext.config import ParallelConfig
    from flm_ext.runtime import initialize_distributed

    initialize_distributed(ParallelConfig(world_size=world_size), seed=1)
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    torch.save(value, f"{out_dir}/sum_{rank}.pt")


def test_workers_meet_on_the_store_the_parent_bound(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(distributed, "free_port", lambda: pytest.fail("spawn probed for a free port"))
    distributed.spawn(_sum_of_ranks, 3, tmp_path, timeout=240)
    assert [torch.load(tmp_path / f"sum_{r}.pt").item() for r in range(3)] == [6.0] * 3  # 1 + 2 + 3


def _rank_1_never_returns(rank, world_size, out_dir):
    if rank == 1:
        _wait_for_a_message_that_never_comes()


def _wait_for_a_message_that_never_comes():
    while True:
        time.sleep(0.05)


def test_a_hung_rank_fails_at_the_deadline_with_its_stack(tmp_path):
    # A short deadline; on a loaded machine rank 1 may still be importing torch at 10 s (its stack then
    # shows the import, which spawn() rightly reports): only then once more with a longer one.
    for deadline in (10, 40):
        start = time.monotonic()
        with pytest.raises(AssertionError) as failure:
            distributed.spawn(_rank_1_never_returns, 2, tmp_path, timeout=deadline)
        elapsed = time.monotonic() - start
        message = str(failure.value)
        assert f"still running after {deadline} s" in message
        assert "rank 1 was still running" in message  # (rank 0 too, only if a loaded machine had not started it)
        assert deadline <= elapsed < deadline + 30, elapsed  # one deadline for all ranks, then a kill
        if "_wait_for_a_message_that_never_comes" in message:  # the hung rank's own frame, from faulthandler
            return
    pytest.fail(f"the hung rank's own frame is not in its reported stack:\n{message}")
