"""The FLM pre-training loop on megatron-core (what `pretrain_flm.py` runs).

Order of events: process groups and seeds -> tokenizer (pads the vocabulary) -> model chunks,
DDP, optimizer, LR scheduler -> resume from `--load` -> datasets (checked against the tokenizer
and the vocabulary) -> steps. Every step runs megatron's schedule over this rank's micro-batches,
skips the update if the loss or gradient norm is not finite (stopping after
`--max-consecutive-skips` in a row), logs at `--log-interval`, evaluates at `--eval-interval`, and
saves at `--save-interval`, on SIGTERM / SIGINT (after the current step) and at the end. Features
that change the model while it trains (an MSG growth ramp) come in as hooks
(flm_ext.training.hooks); the loop itself knows nothing about them.

Before it reads or writes `--save`, rank 0 takes the folder's lock (flm_ext.checkpoint.lock); a
resume must keep the run its checkpoint recorded (flm_ext.training.contract) and never starts below
newer iterations of `--save`; the loss right after each save is recorded, so a divergence names the
last checkpoint with healthy weights.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from flm_ext.checkpoint import (LATEST, CheckpointError, CheckpointRecord, TokenizerRecord, check_tokenizer,
                                complete_iterations, holds_checkpoint, iteration_of, iterations_present, read_record,
                                resolve)
from flm_ext.checkpoint import lock as save_lock
from flm_ext.checkpoint.run_record import LossLedger
from flm_ext.config import ConfigError, describe
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.progress import format_duration
from flm_ext.runtime import initialize_distributed
from flm_ext.checkpoint import training_io
from flm_ext.training.arguments import TrainConfig, with_vocab
from flm_ext.training.contract import check_mup, check_resume, contract_of
from flm_ext.training.data import GlobalBatchSampler, micro_batches
from flm_ext.training.engine import build_optimizer, eval_step, train_step, wrap_ddp
from flm_ext.training.metrics import MetricsWriter, default_peak_tflops, flops_per_token
from flm_ext.training.operations import RunOperations


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row); the message says why."""


def log(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


def build_scheduler(optimizer, cfg: TrainConfig) -> OptimizerParamScheduler:
    """Warm-up then cosine/linear decay to --min-lr, counted in samples (Megatron's convention)."""
    s = cfg.schedule
    return OptimizerParamScheduler(
        optimizer, init_lr=s.lr_warmup_init, max_lr=cfg.optim.lr, min_lr=cfg.optim.min_lr,
        lr_warmup_steps=s.lr_warmup_samples, lr_decay_steps=s.lr_decay_samples or s.train_samples,
        lr_decay_style=s.lr_decay_style, start_wd=cfg.optim.weight_decay, end_wd=cfg.optim.weight_decay,
        wd_incr_steps=s.train_samples, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True,
    )


def _recompute_overrides(cfg: TrainConfig) -> dict:
    if cfg.recompute_granularity is None:
        return {}
    if cfg.recompute_granularity == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    return {"recompute_granularity": "full", "recompute_method": cfg.recompute_method,
            "recompute_num_layers": cfg.recompute_num_layers}


def check_checkpoint_shape(record: CheckpointRecord, folder: str, model) -> None:
    """Refuse, naming the field, to load a checkpoint of another shape (e.g. forgot the grown flags)."""
    saved = record.model_config
    fields = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size", "kv_channels")
    wrong = [f"{f}: checkpoint {getattr(saved, f)} vs flags {getattr(model, f)}" for f in fields
             if getattr(saved, f) != getattr(model, f)]
    if wrong:
        raise CheckpointError(f"--load {folder} holds a model of another shape ({'; '.join(wrong)}); "
                              f"pass the matching --model-preset / shape flags")


class SkipTracker:
    """Counts skipped steps; raises once `limit` happen in a row (`advice`: what to do then)."""

    def __init__(self, limit: int, advice=None):
        self.limit, self.in_a_row, self.total = limit, 0, 0
        self.advice = advice or (lambda: "resume from the last checkpoint with a lower --lr or check the data.")

    def record(self, skipped: bool, iteration: int, loss: float, grad_norm: float | None) -> None:
        if not skipped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        log(f"step {iteration}: skipped (loss {loss}, grad norm {grad_norm}); {self.in_a_row} in a row, "
            f"{self.total} in total")
        if self.in_a_row >= self.limit:
            raise TrainingError(f"{self.in_a_row} consecutive steps had a non-finite loss or gradient norm "
                                f"(last at step {iteration}); stopping without saving. The weights were not "
                                f"updated by these steps; {self.advice()}")


class _StopFlag:
    """Set by SIGTERM / SIGINT: finish the current step, save, exit."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def any_rank(self) -> bool:
        flag = torch.tensor([1 if self.signal else 0], dtype=torch.int32,
                            device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Trainer:
    """One training run: built by the constructor, resumed by `resume`, run by `train`."""

    def __init__(self, cfg: TrainConfig, hooks=()):
        from flm_ext.data.datasets import check_training_data

        # Data errors (files, another tokenizer, ids outside the vocabulary, a split with no data)
        # stop the run with one line before any process group or model exists.
        cfg.data.check_files()
        self.tokenizer = cfg.data.build_tokenizer()
        cfg = with_vocab(cfg, self.tokenizer.vocab_size)
        s = cfg.schedule
        self.split_samples = (s.train_samples, cfg.logging.eval_iters * s.global_batch_size
                              if cfg.logging.eval_interval else 0, 0)  # train, validation, test
        data_warnings = check_training_data(cfg.data, self.tokenizer, cfg.model.vocab_size, s.global_batch_size,
                                            self.split_samples, cfg.model.seq_length)
        initialize_distributed(cfg.parallel, seed=cfg.seed, timeout_minutes=cfg.ops.distributed_timeout_minutes)
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, world_size=dist.get_world_size()))
        cfg.validate()
        self.cfg, self.hooks = cfg, list(hooks)
        p, s = cfg.parallel, cfg.schedule
        self.dp_rank, self.dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        self.num_micro = s.num_microbatches(self.dp)
        log(f"FLM pre-training: {describe(cfg.model)}\n  TP {p.tensor_model_parallel_size} x PP "
            f"{p.pipeline_model_parallel_size} x DP {self.dp}, global batch {s.global_batch_size}, micro-batch "
            f"{s.micro_batch_size} x {self.num_micro}, {s.train_iters} steps, tokenizer {self.tokenizer.name} "
            f"({self.tokenizer.vocab_size} tokens, padded to {cfg.model.vocab_size})")
        for warning in data_warnings:
            log(f"data: {warning}")
        dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        chunks = build_model_chunks(cfg.model, p, params_dtype=dtype, **_recompute_overrides(cfg))
        self.model = wrap_ddp(chunks, use_distributed_optimizer=cfg.optim.use_distributed_optimizer)
        self.optimizer = build_optimizer(self.model, cfg.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.iteration = self.consumed = 0
        self.ops = RunOperations(self)  # async saves, watchdog, stragglers, loss spikes, time limit, W&B
        self.end_iteration = s.train_iters  # recomputed from the samples left when a resume changes the batch
        self.ledger, self.loaded, self.discard_newer, self.holds_lock = LossLedger(), None, False, False

    # --- one writer per --save -----------------------------------------------------------------------
    def hold_save_folder(self) -> None:
        """Rank 0 takes --save's lock (only rank 0: the other ranks, on any host, are the same run);
        every rank stops, in one line, when another trainer holds it."""
        ck = self.cfg.checkpoint
        if not ck.save:
            return
        outcome = [None, None]
        if dist.get_rank() == 0:
            self.created_save = not os.path.exists(ck.save)  # removed again if the run ends before saving
            try:
                outcome[1] = save_lock.acquire(ck.save)
                self.holds_lock = True
            except CheckpointError as e:
                outcome[0] = str(e)
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0]:
            raise ConfigError(outcome[0])
        if outcome[1]:
            log(outcome[1])

    def release_save_folder(self) -> None:
        if self.holds_lock:
            save = self.cfg.checkpoint.save
            save_lock.release(save)
            self.holds_lock = False
            if self.created_save and not os.listdir(save):
                os.rmdir(save)

    def check_save_folder(self, start: int) -> None:
        """Never replace newer iterations of --save silently (e.g. --ckpt-step 4 with an iter_8 there)."""
        ck = self.cfg.checkpoint
        newer = [n for n in (iterations_present(ck.save) if ck.save else []) if n > start]
        if not newer:
            return
        listed = ", ".join(str(n) for n in newer[:10]) + (" ..." if len(newer) > 10 else "")
        if not ck.discard_newer_checkpoints:
            raise ConfigError(f"--save {ck.save} holds iterations newer than the one this run starts from "
                              f"({start}): {listed}; this run's saves would replace them. Resume the newest "
                              f"with --load {ck.save}{self._resume_hint()}, pass another --save, or add "
                              f"--discard-newer-checkpoints to remove them once this run saves")
        log(f"--discard-newer-checkpoints: iterations {listed} in {ck.save} are removed at this run's first save")
        self.discard_newer = True

    def _resume_hint(self) -> str:
        ck = self.cfg.checkpoint
        dropped = [flag for flag, given in (("--ckpt-step", ck.ckpt_step is not None),
                                            ("--start-new-stage", ck.start_new_stage), ("--finetune", ck.finetune))
                   if given]
        return f" (without {' / '.join(dropped)})" if dropped else ""

    def recovery_advice(self) -> str:
        """After a divergence: the newest checkpoint whose weights were still healthy, and how to resume it."""
        ck = self.cfg.checkpoint
        on_disk = complete_iterations(ck.save) if ck.save else []
        newest = self.ledger.newest_healthy(on_disk)
        if newest is None:
            if self.loaded and self.ledger.newest_healthy([self.loaded[1]]) is not None:
                return (f"the newest healthy checkpoint is the one this run loaded: resume it with a lower --lr: "
                        f"--load {self.loaded[0]} --lr <lower> --override-opt_param-scheduler (or check the data)")
            return (f"no checkpoint in {ck.save or 'this run'} is known to have healthy weights (none saved, or the "
                    f"loss was not finite right after each): check the data, or start again with a lower --lr")
        after = self.ledger.saves[newest].loss
        diverged = [n for n in on_disk if n > newest]
        known = [f"{n} (loss {self.ledger.saves[n].loss:.3g} right after it)" for n in diverged
                 if n in self.ledger.saves and self.ledger.saves[n].loss is not None]
        later = f"; later iterations are not: {', '.join(known or [str(n) for n in diverged])}" if diverged else ""
        discard = " --discard-newer-checkpoints" if diverged else ""
        return (f"the newest checkpoint with healthy weights is iteration {newest} in {ck.save} (loss {after:.4g} "
                f"right after it){later}. Resume from it with a lower --lr: --load {ck.save} --ckpt-step {newest}"
                f"{discard} --lr <lower> --override-opt_param-scheduler (or check the data)")

    # --- resume -----------------------------------------------------------------------------------
    def resume(self) -> None:
        """Load `--load` if it holds a checkpoint; starting from scratch only for an empty run folder."""
        ck = self.cfg.checkpoint
        if not ck.load:
            self.check_save_folder(0)
            return
        same_as_save = os.path.abspath(ck.load) == os.path.abspath(ck.save or "")
        if not holds_checkpoint(ck.load) and ck.ckpt_step is None and iteration_of(ck.load) is None:
            if same_as_save:
                log(f"--load {ck.load} holds no checkpoint yet (no iter_* folder): starting from scratch")
                self.check_save_folder(0)
                return
            raise CheckpointError(f"--load {ck.load}: no checkpoint there (no {LATEST} and no "
                                  f"iter_N folder)")
        folder, saved_iteration = resolve(ck.load, ck.ckpt_step)
        saved = read_record(folder).replace(iteration=saved_iteration)
        check_checkpoint_shape(saved, folder, self.cfg.model)
        restart = ck.finetune or ck.start_new_stage
        notes = check_mup(saved.model_config, self.cfg.model, folder, finetune=ck.finetune)
        if not restart:  # a new stage or fine-tune may change tokenizers on purpose; a resume may not
            check_tokenizer(saved, self.tokenizer, f"--load {folder}")
            notes += check_resume(saved, self.cfg, folder, override_schedule=ck.override_opt_param_scheduler)
        self.check_save_folder(0 if restart else saved_iteration)
        load_optim = not (ck.no_load_optim or ck.finetune)
        loaded = training_io.load_checkpoint(folder, self.model, self.optimizer, self.scheduler,
                                             load_optimizer=load_optim, load_scheduler=not restart,
                                             verify=ck.verify_checkpoint)
        record = loaded.record
        if not restart:
            self.iteration, self.consumed = record.iteration, record.consumed_train_samples
            s = self.cfg.schedule
            self.end_iteration = self.iteration + math.ceil(max(0, s.train_samples - self.consumed)
                                                            / s.global_batch_size)
            self.ledger = record.health or LossLedger()
            self.ledger.saved(self.iteration)  # the loaded weights' loss comes with the next step
            self.loaded = (folder, self.iteration)
        log(f"loaded {folder} (iteration {record.iteration}); continuing at iteration {self.iteration}, "
            f"{self.consumed:,} samples consumed")
        for note in notes:
            log(note)
        if not restart and self.iteration >= self.end_iteration:
            log(f"the run is complete at iteration {self.iteration}: nothing left to train")
        if ck.no_load_optim and not restart:
            log("--no-load-optim: Adam's moments start from zero; the LR schedule continues from the checkpoint"
                if loaded.loaded_scheduler else
                "--no-load-optim: Adam's moments start from zero; the checkpoint has no LR schedule state, so the "
                "schedule restarts at warm-up")
        for hook in self.hooks:
            hook.on_load(record, restart=restart, train_iters=self.end_iteration)
        self.scheduler.step(increment=0)  # the loaded param groups carry the saved LR: recompute it for now

    # --- data --------------------------------------------------------------------------------------
    def build_data(self) -> None:
        from flm_ext.data.datasets import build_pretraining_datasets

        cfg, s = self.cfg, self.cfg.schedule
        self.train_ds, self.valid_ds, _ = build_pretraining_datasets(
            cfg.data, self.tokenizer, cfg.model.seq_length, s.global_batch_size, *self.split_samples, cfg.seed)

    def _iterators(self, dataset, start: int, wrap: bool):
        """One iterator, or with interleaved PP one per model chunk over the same micro-batches
        (megatron's schedule calls each chunk's step function once per micro-batch, in order)."""
        s = self.cfg.schedule

        def one():
            sampler = GlobalBatchSampler(len(dataset), start, s.global_batch_size, s.micro_batch_size, self.dp_rank,
                                         self.dp, wrap=wrap)
            return micro_batches(dataset, sampler, self.cfg.data.num_workers)
        return one() if len(self.model) == 1 else [one() for _ in self.model]

    # --- saving ------------------------------------------------------------------------------------
    def save(self, reason: str) -> None:
        ck = self.cfg.checkpoint
        if not ck.save:
            return
        if not training_io.weights_finite(self.model):
            raise TrainingError(f"the weights are not finite at iteration {self.iteration}: not saving them; the "
                                f"latest checkpoint in {ck.save} is unchanged; {self.recovery_advice()}")
        self.ledger.saved(self.iteration)
        record = training_io.trainer_record(
            self.iteration, self.cfg.model, self.consumed, self.optimizer,
            tokenizer=TokenizerRecord.of(self.tokenizer, self.cfg.data.tokenizer_type), run=contract_of(self.cfg),
            health=self.ledger)
        for hook in self.hooks:
            record = record.replace(**hook.checkpoint_state())
        with self.ops.saving():
            path = self.ops.saver.save(ck.save, self.iteration, self.model, self.optimizer, self.scheduler,
                                       record=record, keep=ck.keep_last, discard_newer=self.discard_newer)
        self.discard_newer = False
        log(f"{'started asynchronous save of' if self.ops.saver.async_save else 'saved'} checkpoint {path} "
            f"({reason})")

    # --- the loop ----------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, s, ck = self.cfg, self.cfg.schedule, self.cfg.checkpoint
        train_iter = self._iterators(self.train_ds, self.consumed, wrap=False)
        self.writer = MetricsWriter(cfg.logging.tensorboard_dir, cfg.logging.metrics_jsonl, dist.get_rank())
        self.skips = SkipTracker(cfg.max_consecutive_skips, advice=self.recovery_advice)
        stop = _StopFlag()
        self.start_iteration, self.run_start = self.iteration, time.time()
        self.interval_start, self.interval_steps = time.time(), 0
        last_loss, last_valid = math.nan, None
        self.ops.start()
        while self.iteration < self.end_iteration:
            if self.ops.skip_batch():  # a batch that spiked before a rollback: no step on it
                train_iter = self._iterators(self.train_ds, self.consumed, wrap=False)
                continue
            for hook in self.hooks:
                hook.before_step(self.model, self.iteration)
            self.ops.before_step()
            result = train_step(self.model, self.optimizer, train_iter, num_microbatches=self.num_micro,
                                seq_length=cfg.model.seq_length, micro_batch_size=s.micro_batch_size)
            self.iteration += 1
            self.consumed += s.global_batch_size
            self.interval_steps += 1
            if result.update_successful:
                self.scheduler.step(increment=s.global_batch_size)
            self.ledger.observe(self.iteration, result.loss)
            self.skips.record(not result.update_successful, self.iteration, result.loss, result.grad_norm)
            last_loss = result.loss
            if self.ops.after_step(result):  # a loss spike rolled the run back to the latest checkpoint
                train_iter = self._iterators(self.train_ds, self.consumed, wrap=False)
                continue
            if self.iteration % cfg.logging.log_interval == 0 or self.iteration == self.end_iteration:
                self._log_step(result)
            if cfg.logging.eval_interval and (self.iteration % cfg.logging.eval_interval == 0
                                              or self.iteration == self.end_iteration):
                last_valid = self._evaluate()
            if ck.save_interval and self.iteration % ck.save_interval == 0:
                self.save(f"every {ck.save_interval} steps")
            if stop.any_rank():
                log(f"signal received: saving and stopping at iteration {self.iteration}")
                break
            if cfg.logging.exit_interval and self.iteration - self.start_iteration >= cfg.logging.exit_interval:
                log(f"--exit-interval {cfg.logging.exit_interval} reached at iteration {self.iteration}")
                break
            if self.ops.time_limit.reached():
                log(f"--exit-duration-in-mins {cfg.ops.exit_duration_in_mins} reached at iteration "
                    f"{self.iteration}: saving and stopping")
                break
        if ck.save and self.iteration > self.start_iteration and not (ck.save_interval and
                                                                       self.iteration % ck.save_interval == 0):
            self.save("end of run")
        self.ops.finish()
        self.writer.close()
        return {"iteration": self.iteration, "consumed_train_samples": self.consumed, "train_loss": last_loss,
                "valid_loss": last_valid, "skipped_steps": self.skips.total}

    def _progress_scalars(self) -> dict:
        tokens = self.consumed * self.cfg.model.seq_length
        return {"train/tokens": tokens, "train/flops": tokens * flops_per_token(self.cfg.model),
                "time/elapsed_s": time.time() - self.run_start}

    def _log_step(self, result) -> None:
        cfg, s = self.cfg, self.cfg.schedule
        tokens_per_step = s.global_batch_size * cfg.model.seq_length
        step_time = (time.time() - self.interval_start) / self.interval_steps
        tflops = tokens_per_step * flops_per_token(cfg.model) / step_time / dist.get_world_size() / 1e12
        peak = cfg.logging.peak_tflops or default_peak_tflops()
        lr = self.optimizer.param_groups[0]["lr"]
        remaining = ((self.end_iteration - self.iteration) * (time.time() - self.run_start)
                     / (self.iteration - self.start_iteration))
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        self.ops.log_interval(step_time, tflops, peak)
        gn = f"{result.grad_norm:.3f}" if result.grad_norm is not None else "n/a"
        log(f"step {self.iteration:>7d}/{self.end_iteration} | samples {self.consumed:,} | loss {result.loss:.4f} | "
            f"lr {lr:.3e} | grad norm {gn} | skipped {self.skips.total} | {tokens_per_step / step_time:,.0f} tokens/s "
            f"| {tflops:.2f} TFLOP/s/device | MFU {mfu} | {step_time:.2f} s/step | ETA {format_duration(remaining)}")
        self.writer.scalars(self.iteration, {
            "train/loss": result.loss, "train/lr": lr, "train/grad_norm": result.grad_norm,
            "train/tokens_per_s": tokens_per_step / step_time, "train/tflops": tflops,
            "train/skipped_steps": self.skips.total, "train/consumed_samples": self.consumed,
            **self._progress_scalars()})
        self.interval_start, self.interval_steps = time.time(), 0

    def _evaluate(self) -> float:
        cfg, s = self.cfg, self.cfg.schedule
        valid = eval_step(self.model, self._iterators(self.valid_ds, 0, wrap=True),
                          num_microbatches=self.num_micro * cfg.logging.eval_iters, seq_length=cfg.model.seq_length,
                          micro_batch_size=s.micro_batch_size)
        log(f"step {self.iteration:>7d} | validation loss {valid:.4f} | ppl {math.exp(min(valid, 50)):.2f}")
        self.writer.scalars(self.iteration, {"valid/loss": valid, **self._progress_scalars()})
        return valid


def pretrain(cfg: TrainConfig, hooks=()) -> dict:
    """Train; returns a summary dict (iterations, final losses, skipped steps)."""
    trainer = Trainer(cfg, hooks)
    try:
        trainer.hold_save_folder()  # before reading or writing it: one writer per --save
        trainer.resume()  # refuses to start below iterations already in --save
        trainer.build_data()
        return trainer.train()
    finally:
        if getattr(trainer, "ops", None) is not None:
            trainer.ops.stop_watchdog()
        trainer.release_save_folder()
