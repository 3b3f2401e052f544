"""`tools/export_hf.py --verify`: the exported model's logits against the training model's.

The training model is megatron's (TP=PP=1 on this machine, loaded by the trainer's own loader,
growth masks at the checkpoint's lambda, as evaluation runs it); the export is loaded the way a
user loads it, from its config.json and safetensors (with this package's model code, which the
folder's copies must equal: flm_ext/export/loading.py; no code from the folder runs). Both run
a random probe batch in float32 and the number is the max abs difference over the true
vocabulary. It holds both models in memory: meant for small and medium models (the demo, tests),
not for 101B on a login node. A bfloat16 export is compared after casting to float32, so its
number includes bf16 rounding.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def verify_export(ckpt, folder: str, *, batch: int = 2, seq_length: int | None = None, seed: int = 0) -> float:
    """Max abs logit difference of the export at `folder` and the open checkpoint `ckpt`."""
    from transformers.utils import logging as hf_logging

    from flm_ext.checkpoint.model_state import load_model_weights
    from flm_ext.export.convert import growth_of
    from flm_ext.growth import attach_growth
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import init_single_process

    hf_logging.disable_progress_bar()
    init_single_process()
    chunks = build_model_chunks(ckpt.config)
    load_model_weights(ckpt.folder, chunks)
    growth, lam = growth_of(ckpt)  # (None, 1.0) outside a ramp: the masks the export folded in
    if growth is not None:
        attach_growth(chunks, growth, lam)
    from flm_ext.export.loading import load_export_model

    model = load_export_model(folder).float().eval()
    vocab = model.config.vocab_size
    seq = seq_length or min(ckpt.config.seq_length, 256)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    reference = chunks[0].eval()(ids, torch.arange(seq).expand_as(ids), None)[..., :vocab]
    return float((model(ids).logits.float() - reference.float()).abs().max())
