#!/usr/bin/env python3
"""How long a save blocks training: `--async-save` against a synchronous save, on a >= 1 GiB trainer
checkpoint (fp32 weights + Adam moments), in one process, alternating the two.

Synchronous: the trainer's save (megatron's dist_checkpointing.save, checksums, manifest, rename,
latest marker): training waits for all of it. Asynchronous (flm_ext.training.async_save): training
waits for the save call (planning, megatron's copy of the tensors that are views of DDP's buffer,
the fork of the writer) and later for the one finalisation call that publishes the checkpoint
(torch's .metadata, the manifest from the writer's checksums, rename, marker); in between it runs
training steps while the writer child writes and checksums. "Blocked" for async = save call +
publishing call; the steps taken meanwhile, and their time against steps without a writer, are
printed too (on a loaded 2-core machine the writer competes with them for the CPU).

  python benchmarks/async_save.py --workdir /tmp/async_bench --layers 12 --hidden 768 --vocab 32768 --repeats 5
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
    args = shape_parser(__doc__, repeats=5).parse_args()

    import torch

    from flm_ext.config import num_parameters
    from flm_ext.checkpoint import training_io
    from flm_ext.training.async_save import CheckpointSaver

    torch.set_num_threads(1)
    cfg, model, optimizer, step = model_with_adam_state(args, seq_length=64)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    sync_saver = CheckpointSaver(async_save=False, fully_parallel=False)
    async_saver = CheckpointSaver(async_save=True, fully_parallel=False)
    rows = {"sync": [], "async_call": [], "async_publish": [], "async_blocked": [], "async_until_latest": [],
            "steps_meanwhile": [], "step_alone": [], "step_meanwhile": []}
    size = 0
    iteration = 0
    for r in range(args.repeats):
        for variant in ("sync", "async") if r % 2 == 0 else ("async", "sync"):
            iteration += 1
            root = os.path.join(args.workdir, variant)
            rows["step_alone"].append(statistics.median(step() for _ in range(3)))
            if variant == "sync":
                t = time.perf_counter()
                folder = sync_saver.save(root, iteration, model, optimizer, None, keep=1,
                                         record=training_io.trainer_record(iteration, cfg, 0, optimizer))
                rows["sync"].append(time.perf_counter() - t)
            else:
                t0 = time.perf_counter()
                folder = async_saver.save(root, iteration, model, optimizer, None, keep=1,
                                          record=training_io.trainer_record(iteration, cfg, 0, optimizer))
                call = time.perf_counter() - t0
                steps, publish = [], 0.0
                while True:
                    steps.append(step())
                    t = time.perf_counter()
                    done = async_saver.finalize(blocking=False)
                    spent = time.perf_counter() - t
                    if done:
                        publish = spent
                        break
                rows["async_call"].append(call)
                rows["async_publish"].append(publish)
                rows["async_blocked"].append(call + publish)
                rows["async_until_latest"].append(time.perf_counter() - t0)
                rows["steps_meanwhile"].append(len(steps))
                rows["step_meanwhile"].append(statistics.median(steps))
            assert training_io.resolve(root)[0] == folder
            size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
            print(f"repeat {r} {variant}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()
                                                        if v and (k.startswith(variant) or k == "step_alone" or
                                                                  (variant == "async" and k.startswith("step")))),
                  flush=True)

    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"\n{num_parameters(cfg) / 1e6:.1f}M parameters, checkpoint {size / 2 ** 30:.2f} GiB "
          f"({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}); median of {args.repeats}:")
    print(f"  synchronous save (training blocked):          {med['sync']:.3f} s")
    print(f"  async: save call                              {med['async_call']:.3f} s")
    print(f"  async: publishing call                        {med['async_publish']:.3f} s")
    print(f"  async: training blocked (call + publishing)   {med['async_blocked']:.3f} s = "
          f"{100 * med['async_blocked'] / med['sync']:.1f}% of the synchronous save")
    print(f"  async: until it is the latest checkpoint      {med['async_until_latest']:.3f} s, "
          f"{med['steps_meanwhile']:.0f} training steps meanwhile")
    print(f"  step time without a writer / while writing    {med['step_alone']:.3f} s / {med['step_meanwhile']:.3f} s")
    ratios = [b / s for b, s in zip(rows["async_blocked"], rows["sync"])]
    print(f"  blocked ratio per repeat: {', '.join(f'{100 * x:.1f}%' for x in ratios)}")


if __name__ == "__main__":
    main()
