"""Shared fixtures: a single-process megatron parallel state for in-process model tests, and the
tiny bilingual training set (built once per session, not once per module that trains on it)."""
from __future__ import annotations

import os

import pytest

from distributed import free_port


@pytest.fixture(scope="session")
def megatron_single_process():
    """torch.distributed (gloo, world size 1) + megatron TP=PP=1, set up once per test session."""
    from flm_ext.config import ParallelConfig
    from flm_ext.runtime import destroy_distributed, initialize_distributed

    os.environ["MASTER_PORT"] = str(free_port())
    initialize_distributed(ParallelConfig(), seed=1234, rank=0, world_size=1)
    yield
    destroy_distributed()


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """tests/tiny_data.py's set: {"tokenizer", "en", "zh", "teacher", "cache"} paths. Read-only for
    tests (megatron's index cache under "cache" is keyed by the dataset settings, so sharing is safe)."""
    import tiny_data

    return tiny_data.build(str(tmp_path_factory.mktemp("tiny_data")))
