"""Shared fixtures: a single-process megatron parallel state for in-process model tests, and the
tiny bilingual training set (built once per session, not once per module that trains on it)."""
from __future__ import annotations

import os
import sys

import pytest

# The suite starts hundreds of Python processes (trainers, tools, ranks) that import flm_ext from
# the source tree; where PYTHONDONTWRITEBYTECODE is set (as on some CI images) each of them would
# compile every module again (~0.5 s of CPU per process). The test session caches bytecode in the
# tree's __pycache__ folders (git-ignored) for itself and every process it starts.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

_megatron = {"wanted": False}


def _ensure_megatron_state() -> None:
    from megatron.core import parallel_state
    import torch.distributed as dist

    from flm_ext.runtime import init_single_process

    if not (dist.is_initialized() and parallel_state.model_parallel_is_initialized()):
        init_single_process(seed=1234)  # an in-process store: no port to take, none left in os.environ


@pytest.fixture(scope="session")
def megatron_single_process():
    """torch.distributed (gloo, world size 1) + megatron TP=PP=1, set up once per test session."""
    from flm_ext.runtime import destroy_distributed

    _ensure_megatron_state()
    _megatron["wanted"] = True
    yield
    _megatron["wanted"] = False
    destroy_distributed()


@pytest.fixture(autouse=True)
def _restore_megatron_state():
    """Tests that run a tool's main() in this process end with its destroy_distributed(), which
    would leave the session's state torn down under the next in-process test: set it up again."""
    yield
    if _megatron["wanted"]:
        _ensure_megatron_state()


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """tests/tiny_data.py's set: {"tokenizer", "en", "zh", "teacher", "cache"} paths. Read-only for
    tests (megatron's index cache under "cache" is keyed by the dataset settings, so sharing is safe)."""
    import tiny_data

    return tiny_data.build(str(tmp_path_factory.mktemp("tiny_data")))


def pytest_collection_modifyitems(config, items):
    """Tests listed in tests/tiers.py get the `slow` marker (`make test-fast` leaves them out); tests
    marked `gpu` need a CUDA device: skipped, with the reason, where there is none."""
    import torch

    from tiers import HEAVY, SLOW

    slow = set(SLOW) | set(HEAVY)
    for item in items:
        keys = (item.path.name, f"{item.path.name}::{getattr(item, 'originalname', item.name)}",
                f"{item.path.name}::{item.name}")
        if any(key in slow for key in keys):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
