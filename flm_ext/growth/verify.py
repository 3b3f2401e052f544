"""Check a grown checkpoint against the one it was grown from: logits (a function-preserving
method must keep them; MSG with its masks at lambda 0) and the loss on a probe batch (the jump a
method that is not function-preserving causes)."""
from __future__ import annotations

import torch

from flm_ext.checkpoint import open_checkpoint
from flm_ext.checkpoint.model_state import load_model_weights
from flm_ext.growth.masks import GrowthState, attach_growth
from flm_ext.growth.methods import method_of
from flm_ext.model.flm_model import build_model_chunks


def verify_report(old_path: str, new_path: str, *, batch: int = 2, seq_length: int | None = None, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> dict:
    """{method, function_preserving, max_abs_logit_diff, old_loss, new_loss, loss_jump} on a probe batch.

    Both models are built whole at TP=PP=1 on this machine and loaded with megatron's
    dist_checkpointing, then run in `dtype`: float64 by default, so the number measures the growth
    and not rounding (in fp32 a wider hidden size alone sums in another order: ~1e-6 to 1e-5 on
    trained tiny models, while an exact growth gives ~1e-14 in float64). A checkpoint with an MSG
    record runs with its masks at lambda 0. It needs memory for both models: meant for small and
    medium models and for tests, not for 101B on a login node. The probe is random tokens from a
    fixed seed (the loss is their next-token cross entropy: a measure of the jump, not of quality).
    Needs megatron's parallel state at TP=PP=1 (`flm_ext.runtime.init_single_process`).
    """
    old_ckpt, new_ckpt = open_checkpoint(old_path), open_checkpoint(new_path)
    method, growth = method_of(new_ckpt.record), GrowthState.of_checkpoint(new_ckpt)
    if method is None and growth is None:
        raise ValueError(f"{new_path}: no flm.grown_from or flm.growth record; not a grown checkpoint")
    models = []
    for ckpt in (old_ckpt, new_ckpt):
        [model] = build_model_chunks(ckpt.config)
        load_model_weights(ckpt.folder, [model])
        models.append(model.to(dtype).eval())
    if growth is not None:
        attach_growth([models[1]], growth, 0.0)
    cfg = old_ckpt.config
    seq = seq_length or min(cfg.seq_length, 256)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))
    tokens, labels = ids[:, :-1], ids[:, 1:]
    positions = torch.arange(seq).expand_as(tokens)
    with torch.no_grad():
        logits = [m(tokens, positions, None).double() for m in models]
        losses = [float(m(tokens, positions, None, labels=labels).double().mean()) for m in models]
    return {"method": method.name if method else "msg",
            "function_preserving": method.preserving if method else True,
            "max_abs_logit_diff": float((logits[0] - logits[1]).abs().max()),
            "old_loss": losses[0], "new_loss": losses[1], "loss_jump": losses[1] - losses[0]}


def verify_growth(old_path: str, new_path: str, **kwargs) -> float:
    """Max abs difference of the logits of the old model and the grown one (see `verify_report`)."""
    return verify_report(old_path, new_path, **kwargs)["max_abs_logit_diff"]
