"""Model weights <-> checkpoint through megatron's dist_checkpointing (resharding at any TP/PP).

The keys of a model's sharded state dict are the checkpoint's keys: `model` for one chunk, or
`model0`, `model1`, ... for virtual pipeline chunks (Megatron-LM's convention).
"""
from __future__ import annotations

import copy

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

from flm_ext.model.flm_model import unwrap


def model_sharded_state(chunks) -> dict:
    modules = [unwrap(c) for c in chunks]
    if len(modules) == 1:
        return {"model": modules[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(modules)}


def apply_model_state(chunks, loaded: dict) -> None:
    modules = [unwrap(c) for c in chunks]
    if len(modules) == 1:
        modules[0].load_state_dict(loaded["model"], strict=True)
        return
    for i, module in enumerate(modules):
        module.load_state_dict(loaded[f"model{i}"], strict=True)


class _CommonAlreadyRead(TorchCommonLoadStrategy):
    """megatron's common-state strategy handed the `common.pt` dict its caller has read (with
    weights_only), so that megatron does not read the file again."""

    def __init__(self, common: dict):
        super().__init__()
        self.common = common

    def load_common(self, checkpoint_dir):
        return copy.deepcopy(self.common)  # megatron merges the loaded tensors into it: the caller's stays as read


def load_sharded(state: dict, folder: str, common: dict | None = None) -> dict:
    """megatron's load of a sharded state dict from a folder already verified by `verify_checkpoint`;
    `common`: its `common.pt` as already read (`integrity.load_common`), else megatron reads it."""
    return dist_checkpointing.load(state, folder, sharded_strategy=get_default_load_sharded_strategy(folder),
                                   common_strategy=None if common is None else _CommonAlreadyRead(common))


def load_model_weights(folder: str, chunks) -> None:
    """Load only the weights of a verified iteration folder into built model chunks (any saved TP/PP).

    Needs megatron's parallel state (`flm_ext.runtime.init_single_process` for one process).
    """
    apply_model_state(chunks, load_sharded(model_sharded_state(chunks), folder))
