"""The trainer's operational side for long runs, in one place so the loop stays short: asynchronous
/ fully parallel saves (flm_ext.training.async_save), the hang watchdog (watchdog), per-rank step
times, loss spikes and `--exit-duration-in-mins` (monitoring), MFU and per-rank throughput
scalars, W&B. The trainer calls `start`, `before_step`, `after_step`, `skip_batch`,
`log_interval`, `saving` and `finish`; every method that communicates is called on every rank.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch.distributed as dist

from flm_ext.checkpoint import training_io
from flm_ext.checkpoint.async_save import CheckpointSaver
from flm_ext.training.monitoring import LossSpikeDetector, StepTimer, TimeLimit, describe_spread
from flm_ext.training.watchdog import Watchdog

SPIKES_FILE = "loss_spikes.jsonl"  # in --save: one JSON line per spike, with every sample id of the batch


def _log(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, flush=True)


class RunOperations:
    def __init__(self, trainer):
        self.t = trainer
        ops, ck = trainer.cfg.ops, trainer.cfg.checkpoint
        self.ops = ops
        self.saver = CheckpointSaver(async_save=ops.async_save, fully_parallel=ops.ckpt_fully_parallel_save,
                                     writers_die_with_trainer=bool(ck.save))
        self.timer = StepTimer(trainer.model)
        self.time_limit = TimeLimit(ops.exit_duration_in_mins)
        self.spikes = LossSpikeDetector(ops.loss_spike_factor, ops.loss_spike_window) if ops.loss_spike_factor \
            else None
        self.skip_starts: dict[int, int] = {}  # first sample of a batch to skip -> the step it spiked at
        self.watchdog = None

    def start(self) -> None:
        ops, t = self.ops, self.t
        if ops.hang_timeout_s > 0:
            self.watchdog = Watchdog(ops.hang_timeout_s, paused_limit_s=ops.save_hang_timeout_s).start(t.iteration)
        if ops.wandb_project and dist.get_rank() == 0:
            from dataclasses import asdict

            from flm_ext.training.metrics import WandbSink

            t.writer.add_sink(WandbSink(ops.wandb_project, ops.wandb_exp_name, ops.wandb_save_dir,
                                        config=json.loads(json.dumps(asdict(t.cfg), default=str))))

    @contextlib.contextmanager
    def saving(self):
        """Around a save: publish the one still in flight first; a long synchronous save is not a hang
        until it nears the process-group timeout (`save_hang_timeout_s`)."""
        with self.watchdog.paused("saving") if self.watchdog else contextlib.nullcontext():
            self._log_published(self.saver.finalize(blocking=True))
            yield

    def before_step(self) -> None:
        self.timer.start_step()

    def after_step(self, result) -> bool:
        """Bookkeeping after a step; True when a loss spike rolled the run back (the caller rebuilds
        its data iterator from the restored position)."""
        t = self.t
        if self.watchdog:
            self.watchdog.progress(t.iteration)
        self._log_published(self.saver.finalize(blocking=False))
        if self.spikes is None:
            return False
        median = self.spikes.check(result.loss)
        if median is None:
            return False
        return self._on_spike(result.loss, median)

    def _on_spike(self, loss: float, median: float) -> bool:
        t, ops, ck = self.t, self.ops, self.t.cfg.checkpoint
        gbs = t.cfg.schedule.global_batch_size
        first = t.consumed - gbs
        _log(f"step {t.iteration}: loss spike: {loss:.4f} > {ops.loss_spike_factor} x running median "
             f"{median:.4f}; the batch is samples [{first:,}, {t.consumed:,}) of the training set"
             + (f" (ids and sources in {os.path.join(ck.save, SPIKES_FILE)})" if ck.save else ""))
        if ck.save and dist.get_rank() == 0:
            os.makedirs(ck.save, exist_ok=True)
            ids = list(range(first, t.consumed))
            source = getattr(t.train_ds, "source", None)
            record = {"iteration": t.iteration, "loss": loss, "median": median, "sample_ids": ids,
                      "sources": [list(source(i)) for i in ids] if source else None}
            with open(os.path.join(ck.save, SPIKES_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        t.writer.scalars(t.iteration, {"train/loss_spike": loss, "train/loss_spike_median": median})
        if not ops.loss_spike_rollback:
            return False
        self._log_published(self.saver.finalize(blocking=True))
        try:
            folder, _ = training_io.resolve(ck.save)
        except training_io.CheckpointError:
            _log(f"step {t.iteration}: no checkpoint in {ck.save} to roll back to yet; going on")
            return False
        t.scheduler.num_steps = 0  # megatron's scheduler load *adds* the saved step count to its own
        record = training_io.load_checkpoint(folder, t.model, t.optimizer, t.scheduler,
                                             verify=ck.verify_checkpoint).record
        spiked_at = t.iteration
        t.iteration, t.consumed = record.iteration, record.consumed_train_samples
        for hook in t.hooks:
            hook.on_load(record, restart=False, train_iters=t.cfg.schedule.train_iters)
        t.scheduler.step(increment=0)
        self.skip_starts[first] = spiked_at
        _log(f"step {spiked_at}: rolled back to {folder} (iteration {t.iteration}); samples [{first:,}, "
             f"{first + gbs:,}) will be skipped when the run gets there")
        if self.watchdog:
            self.watchdog.progress(t.iteration)
        return True

    def skip_batch(self) -> bool:
        """True (and the step counted, without an update) when the next batch spiked before a rollback."""
        t = self.t
        spiked_at = self.skip_starts.pop(t.consumed, None)
        if spiked_at is None:
            return False
        gbs = t.cfg.schedule.global_batch_size
        _log(f"step {t.iteration + 1}: skipping samples [{t.consumed:,}, {t.consumed + gbs:,}) (a loss spike at "
             f"step {spiked_at}); no update")
        t.iteration += 1
        t.consumed += gbs
        t.skips.total += 1
        if self.watchdog:
            self.watchdog.progress(t.iteration)
        return True

    def log_interval(self, step_time: float, tflops: float, peak: float | None) -> None:
        """Every --log-interval, on every rank: per-rank compute times (logged by rank 0), per-rank
        throughput and MFU as scalars."""
        t = self.t
        times = self.timer.spread()
        values = {"train/mfu": tflops / peak if peak else None}
        if all(x == x for x in times):  # NaN: some rank has no timed step in this interval
            _log(f"step {t.iteration:>7d} | {describe_spread(times)}")
            tokens_per_replica = t.cfg.schedule.global_batch_size * t.cfg.model.seq_length / t.dp
            for rank, seconds in enumerate(times):
                values[f"ranks/compute_s/rank_{rank}"] = seconds
                values[f"ranks/tokens_per_s/rank_{rank}"] = tokens_per_replica / seconds if seconds > 0 else None
            values["ranks/compute_spread"] = max(times) / min(times) if min(times) > 0 else None
        t.writer.scalars(t.iteration, values)

    def finish(self) -> None:
        """End of the loop: publish the save in flight, stop the watchdog."""
        self._log_published(self.saver.finalize(blocking=True))
        self.stop_watchdog()

    def stop_watchdog(self) -> None:
        """Also on an error out of the loop: a watchdog left running in a process that goes on (a tool's
        main() called in-process) would later name a hang that is not one and exit that process."""
        if self.watchdog:
            self.watchdog.stop()
            self.watchdog = None

    @staticmethod
    def _log_published(folders: list[str]) -> None:
        for folder in folders:
            _log(f"saved checkpoint {folder} (asynchronous save complete: every rank's files written and "
                 f"checksummed, now the latest)")
