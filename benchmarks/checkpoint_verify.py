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
import os
import platform
import shutil
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

from checkpoint_model import model_with_adam_state, shape_parser  # noqa: E402  (this folder)


def main() -> None:
    args = shape_parser(__doc__, repeats=3).parse_args()

    import torch
    from megatron.core import dist_checkpointing

    from flm_ext.checkpoint.integrity import describe_files, verify_files
    from flm_ext.config import num_parameters
    from flm_ext.checkpoint import training_io

    cfg, model, optimizer, _ = model_with_adam_state(args, seq_length=256)
    root = os.path.join(args.workdir, "ckpt")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    times = {k: [] for k in ("save_plain", "save_manifest", "load_plain", "load_verified", "checksums")}
    size = 0
    for r in range(args.repeats):
        plain = os.path.join(args.workdir, f"plain_{r}")
        os.makedirs(plain)
        record = training_io.trainer_record(r, cfg, 0, optimizer)
        state = training_io.sharded_save_state(r, model, optimizer, None, record)
        t = time.perf_counter()
        dist_checkpointing.save(state, plain)
        times["save_plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        describe_files(plain, sorted(os.listdir(plain)))  # what the manifest adds to a save
        times["save_manifest"].append(times["save_plain"][-1] + time.perf_counter() - t)
        shutil.rmtree(plain)
        folder = training_io.save_checkpoint(root, r + 1, model, optimizer, None, keep=1,
                                             record=training_io.trainer_record(r + 1, cfg, 0, optimizer))
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        for verify in (False, True) if r % 2 == 0 else (True, False):
            t = time.perf_counter()
            training_io.load_checkpoint(root, model, optimizer, None, verify=verify)
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
