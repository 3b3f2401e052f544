"""The trainer-checkpoint model the checkpoint benchmarks share (checkpoint_verify.py, async_save.py):
flags for its shape, and the model with Adam state after one training step on random tokens."""
import argparse


def shape_parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=repeats)
    return p


def model_with_adam_state(args, seq_length: int):
    """(config, DDP model chunks, optimizer, step) in one process; `step()` runs one training step on a
    fixed random batch and returns its seconds. One step has run, so Adam's moments exist."""
    import time

    import torch

    from flm_ext.config import FLMConfig
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import init_single_process
    from flm_ext.training.engine import build_optimizer, train_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig

    cfg = FLMConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.hidden // 64,
                    seq_length=seq_length, vocab_size=args.vocab)
    init_single_process(seed=0)
    model = wrap_ddp(build_model_chunks(cfg))
    optimizer = build_optimizer(model, cfg, OptimConfig())
    ids = torch.randint(0, cfg.vocab_size, (1, seq_length + 1), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(1, seq_length),
             "position_ids": torch.arange(seq_length)[None]}

    def step() -> float:
        t = time.perf_counter()
        train_step(model, optimizer, iter([batch]), num_microbatches=1, seq_length=seq_length, micro_batch_size=1)
        return time.perf_counter() - t

    step()
    return cfg, model, optimizer, step
