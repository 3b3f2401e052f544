"""Tiny FLM smoke run on CPU: the model, megatron-core's schedules, DDP and optimizer, end to end.

    torchrun --nproc-per-node 2 examples/tiny_smoke.py --tensor-model-parallel-size 2

Trains the `tiny-test`-sized FLM (xPos, µP) on a synthetic corpus with learnable structure
(noisy repeated token patterns) and prints loss, tokens/s and ETA; exits non-zero if the loss
does not fall. The full recipe in miniature (real bilingual data, growth) is `make demo` once
the trainer and growth land; this is the stand-in the README names until then.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def synthetic_batches(vocab: int, seq: int, batch: int, seed: int):
    """A synthetic language: each token is followed by a fixed successor 90% of the time.

    A model that learns the bigram table reaches about 0.9 nats, far below the uniform ln(vocab).
    """
    successor = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.empty(batch, seq + 1, dtype=torch.long)
        ids[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(1, seq + 1):
            noise = torch.randint(0, vocab, (batch,), generator=gen)
            keep = torch.rand(batch, generator=gen) < 0.9
            ids[:, t] = torch.where(keep, successor[ids[:, t - 1]], noise)
        yield {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(batch, seq),
               "position_ids": torch.arange(seq).expand(batch, -1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--train-iters", type=int, default=60)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-interval", type=int, default=10)
    args = parser.parse_args()

    from flm_ext.config import FLMConfig, ParallelConfig, describe
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import initialize_distributed
    from flm_ext.training.engine import OptimConfig, build_optimizer, train_step, wrap_ddp

    model_cfg = FLMConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab_size=256,
                          use_mup=True, mup_base_width=32)
    parallel = ParallelConfig(tensor_model_parallel_size=args.tensor_model_parallel_size,
                              pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                              world_size=int(os.environ.get("WORLD_SIZE", 1)))
    initialize_distributed(parallel, seed=1234)
    rank = torch.distributed.get_rank()
    model = wrap_ddp(build_model_chunks(model_cfg, parallel))
    optimizer = build_optimizer(model, model_cfg, OptimConfig(lr=args.lr))
    from megatron.core import parallel_state

    data = synthetic_batches(model_cfg.vocab_size, model_cfg.seq_length, args.micro_batch_size,
                             seed=parallel_state.get_data_parallel_rank())
    if rank == 0:
        print(f"FLM smoke run: {describe(model_cfg)}; TP={parallel.tensor_model_parallel_size} "
              f"PP={parallel.pipeline_model_parallel_size} DP={parallel_state.get_data_parallel_world_size()}",
              flush=True)
    tokens_per_step = args.micro_batch_size * model_cfg.seq_length * parallel_state.get_data_parallel_world_size()
    losses = []
    start = time.time()
    for step in range(1, args.train_iters + 1):
        result = train_step(model, optimizer, data, num_microbatches=1, seq_length=model_cfg.seq_length,
                            micro_batch_size=args.micro_batch_size)
        losses.append(result.loss)
        if rank == 0 and (step % args.log_interval == 0 or step == 1):
            elapsed = time.time() - start
            eta = elapsed / step * (args.train_iters - step)
            print(f"step {step:4d}/{args.train_iters} | loss {result.loss:.4f} | grad norm {result.grad_norm:.3f} | "
                  f"{tokens_per_step * step / elapsed:,.0f} tokens/s | ETA {eta:.0f}s", flush=True)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    ok = last < first - 1.0
    if rank == 0:
        print(f"loss {first:.3f} -> {last:.3f}: {'OK' if ok else 'did not fall enough'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
