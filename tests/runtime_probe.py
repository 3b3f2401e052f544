"""Exercises each megatron-core path the CPU runtime patches, in a fresh process.

Run as `python runtime_probe.py OUT_DIR`; FLM_CPU_RUNTIME_SKIP leaves patches out. Prints one
`ok <stage>` line per stage that worked: seeding, DDP buffers, a scheduled train step, a
torch_dist checkpoint save.
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from flm_ext.config import FLMConfig, ParallelConfig  # noqa: E402
from flm_ext.runtime import initialize_distributed  # noqa: E402


def main(out_dir: str) -> None:
    cfg = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=128)
    initialize_distributed(ParallelConfig(), seed=1, rank=0, world_size=1)
    print("ok seed", flush=True)
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.training.engine import build_optimizer, train_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig

    chunks = build_model_chunks(cfg)
    model = wrap_ddp(chunks)
    print("ok ddp", flush=True)
    optimizer = build_optimizer(model, cfg, OptimConfig())
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1))
    batch = {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(2, cfg.seq_length),
             "position_ids": torch.arange(cfg.seq_length).expand(2, -1)}
    train_step(model, optimizer, iter([batch]), num_microbatches=1, seq_length=cfg.seq_length, micro_batch_size=2)
    print("ok train", flush=True)
    from megatron.core import dist_checkpointing

    os.makedirs(os.path.join(out_dir, "ckpt"))
    dist_checkpointing.save(chunks[0].sharded_state_dict(), os.path.join(out_dir, "ckpt"))
    print("ok checkpoint", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
