"""Check a grown checkpoint: the grown model (masks at lambda 0) must compute the old model's logits."""
from __future__ import annotations

import torch

from flm_ext.checkpoint import open_checkpoint
from flm_ext.checkpoint.model_state import load_model_weights
from flm_ext.growth.masks import GrowthState, attach_growth
from flm_ext.model.flm_model import build_model_chunks


def verify_growth(old_path: str, new_path: str, *, batch: int = 2, seq_length: int | None = None, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> float:
    """Max abs difference of the logits of the old model and the grown one (masks at lambda 0).

    Both models are built whole at TP=PP=1 on this machine and loaded with megatron's
    dist_checkpointing, then run in `dtype`: float64 by default, so the number measures the growth
    and not rounding (in fp32 a wider hidden size alone sums in another order: ~1e-6 to 1e-5 on
    trained tiny models, while an exact growth gives ~1e-14 in float64). It needs memory for both
    models: meant for small and medium models and for tests, not for 101B on a login node. The
    probe is random tokens from a fixed seed. Needs megatron's parallel state at TP=PP=1
    (`flm_ext.runtime.init_single_process`).
    """
    old_ckpt, new_ckpt = open_checkpoint(old_path), open_checkpoint(new_path)
    if not new_ckpt.growth_record:
        raise ValueError(f"{new_path}: no flm.growth record; not a grown checkpoint")
    models = []
    for ckpt in (old_ckpt, new_ckpt):
        [model] = build_model_chunks(ckpt.config)
        load_model_weights(ckpt.folder, [model])
        models.append(model.to(dtype).eval())
    attach_growth([models[1]], GrowthState.from_dict(new_ckpt.growth_record), 0.0)
    cfg = old_ckpt.config
    seq = seq_length or min(cfg.seq_length, 256)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(seq).expand_as(ids)
    with torch.no_grad():
        before = models[0](ids, positions, None)
        after = models[1](ids, positions, None)
    return float((before.double() - after.double()).abs().max())
