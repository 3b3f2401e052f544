#!/usr/bin/env python3
"""What the checkpoint manifest costs: save and load times of a >= 1 GiB trainer checkpoint with and
without checksums (xxh3 manifest written by the saving ranks, verified before a load).

One process, TP = PP = 1, fp32 model + Adam moments (a trainer checkpoint: weights, exp_avg,
exp_avg_sq). Each measurement is repeated `--repeats` times, alternating the variants, from the page
cache (the files were just written), which is the hardest case for the checksum: reading is cheap,
so hashing is the larger share. Save "without" is megatron's dist_checkpointing.save alone; "with"
adds hashing every written file and the manifest (what save_checkpoint does). Load "without" is
`--no-verify-checkpoint` (the safety checks only); "with" adds the checksum of every file.

  python benchmarks/checkpoint_verify.py --workdir /tmp/ckpt_bench --layers 12 --hidden 768
"""
import argparse
import os
import platform
import shutil
import statistics
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch
    from megatron.core import dist_checkpointing

    from flm_ext.checkpoint.integrity import describe_files, verify_files
    from flm_ext.config import FLMConfig, num_parameters
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import init_single_process
    from flm_ext.training import checkpointing
    from flm_ext.training.engine import OptimConfig, build_optimizer, train_step, wrap_ddp

    cfg = FLMConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.hidden // 64,
                    seq_length=256, vocab_size=args.vocab)
    init_single_process(seed=0)
    model = wrap_ddp(build_model_chunks(cfg))
    optimizer = build_optimizer(model, cfg, OptimConfig())
    seq = cfg.seq_length
    ids = torch.randint(0, cfg.vocab_size, (1, seq + 1), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(1, seq),
             "position_ids": torch.arange(seq)[None]}
    train_step(model, optimizer, iter([batch]), num_microbatches=1, seq_length=seq, micro_batch_size=1)  # Adam state
    root = os.path.join(args.workdir, "ckpt")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    extra = checkpointing.common_extra(cfg, 0, optimizer)

    times = {k: [] for k in ("save_plain", "save_manifest", "load_plain", "load_verified", "checksums")}
    size = 0
    for r in range(args.repeats):
        plain = os.path.join(args.workdir, f"plain_{r}")
        os.makedirs(plain)
        state = checkpointing._sharded_state(model, optimizer, None, is_loading=False, extra={"iteration": r, **extra})
        t = time.perf_counter()
        dist_checkpointing.save(state, plain)
        times["save_plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        describe_files(plain, sorted(os.listdir(plain)))  # what the manifest adds to a save
        times["save_manifest"].append(times["save_plain"][-1] + time.perf_counter() - t)
        shutil.rmtree(plain)
        folder = checkpointing.save_checkpoint(root, r + 1, model, optimizer, None, extra=extra, keep=1)
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        for verify in (False, True) if r % 2 == 0 else (True, False):
            t = time.perf_counter()
            checkpointing.load_checkpoint(root, model, optimizer, None, verify=verify)
            times["load_verified" if verify else "load_plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        verify_files(folder)  # the checksum work alone
        times["checksums"].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"checkpoint: {cfg.num_layers} x {cfg.hidden_size}, vocab {cfg.vocab_size}: {num_parameters(cfg) / 1e6:.1f}M "
          f"params, fp32 weights + Adam moments = {size / 2 ** 30:.2f} GiB; median of {args.repeats}")
    print("| | without checksums | with checksums | added |")
    print("|---|---|---|---|")
    for what, a, b in (("save", "save_plain", "save_manifest"), ("load", "load_plain", "load_verified")):
        print(f"| {what} | {med[a]:.2f} s | {med[b]:.2f} s | {100 * (med[b] - med[a]) / med[a]:+.1f}% |")
    print("all runs (s): " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    print(f"checksums alone (xxh3 of every file, {size / 2 ** 30:.2f} GiB): {med['checksums']:.3f} s = "
          f"{100 * med['checksums'] / med['load_plain']:.1f}% of a load without checksums "
          f"({size / 2 ** 30 / med['checksums']:.1f} GiB/s)")


if __name__ == "__main__":
    main()
