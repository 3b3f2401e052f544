"""The FLM pre-training loop on megatron-core (what `pretrain_flm.py` runs).

Order of events: process groups and seeds -> tokenizer (pads the vocabulary) -> model chunks,
DDP, optimizer, LR scheduler -> resume from `--load` if it holds a checkpoint -> datasets ->
steps. Every step runs megatron's schedule over this rank's micro-batches, skips the update if
the loss or gradient norm is not finite (stopping after `--max-consecutive-skips` in a row),
logs at `--log-interval`, evaluates at `--eval-interval`, and saves at `--save-interval`, on
SIGTERM / SIGINT (after the current step) and at the end.
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

from flm_ext.config import describe
from flm_ext.growth import apply_growth_schedule
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.runtime import initialize_distributed
from flm_ext.training import checkpointing
from flm_ext.training.arguments import TrainConfig, with_vocab
from flm_ext.training.data import GlobalBatchSampler, micro_batches
from flm_ext.training.engine import build_optimizer, eval_step, train_step, wrap_ddp
from flm_ext.training.metrics import MetricsWriter, default_peak_tflops, flops_per_token, format_duration


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


def check_checkpoint_shape(path: str, model) -> None:
    """Refuse, naming the field, to load a checkpoint of another shape (e.g. forgot the grown flags)."""
    saved = checkpointing.load_common(path).get("flm", {}).get("model_config")
    if not saved:
        return
    fields = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size", "kv_channels")
    wrong = [f"{f}: checkpoint {saved.get(f)} vs flags {getattr(model, f)}" for f in fields
             if f in saved and saved[f] != getattr(model, f)]
    if wrong:
        raise checkpointing.CheckpointError(f"--load {path} holds a model of another shape ({'; '.join(wrong)}); "
                                            f"pass the matching --model-preset / shape flags")


def growth_from_checkpoint(common: dict, cfg: TrainConfig, restart: bool):
    """The MSG mask ramp a grown checkpoint carries, or None. `--growth-ramp-steps` overrides its
    length; a restarted stage counts the ramp from its own iteration 0."""
    from flm_ext.growth import GrowthState

    record = common.get("flm", {}).get("growth")
    if not record:
        return None
    state = GrowthState.from_dict(record)
    if cfg.growth_ramp_steps is not None:
        state = state.replace(ramp_steps=cfg.growth_ramp_steps)
    if restart:
        state = state.replace(start_iteration=0)
    log(f"growth: masks ramp from 0 to 1 over {state.ramp_steps} steps from iteration {state.start_iteration}")
    return state


class SkipTracker:
    """Counts skipped steps; raises once `limit` happen in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

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
                                f"updated by these steps; resume from the last checkpoint with a lower --lr "
                                f"or check the data.")


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


def pretrain(cfg: TrainConfig) -> dict:
    """Train; returns a summary dict (iterations, final losses, skipped steps)."""
    from flm_ext.data.datasets import DataConfig, build_pretraining_datasets
    from flm_ext.data.tokenizers import build_tokenizer

    initialize_distributed(cfg.parallel, seed=cfg.seed)
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, world_size=dist.get_world_size()))
    tokenizer = build_tokenizer(cfg.data.tokenizer_type, cfg.data.vocab_file, cfg.data.merge_file,
                                cfg.data.tokenizer_model)
    cfg = with_vocab(cfg, tokenizer.vocab_size)
    cfg.validate()
    p, s = cfg.parallel, cfg.schedule
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    num_micro = s.num_microbatches(dp)
    log(f"FLM pre-training: {describe(cfg.model)}\n  TP {p.tensor_model_parallel_size} x PP "
        f"{p.pipeline_model_parallel_size} x DP {dp}, global batch {s.global_batch_size}, micro-batch "
        f"{s.micro_batch_size} x {num_micro}, {s.train_iters} steps, tokenizer {tokenizer.name} "
        f"({tokenizer.vocab_size} tokens, padded to {cfg.model.vocab_size})")

    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    chunks = build_model_chunks(cfg.model, p, params_dtype=dtype, **_recompute_overrides(cfg))
    model = wrap_ddp(chunks, use_distributed_optimizer=cfg.optim.use_distributed_optimizer)
    optimizer = build_optimizer(model, cfg.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg)

    iteration, consumed, growth = 0, 0, None
    ck = cfg.checkpoint
    if ck.load and checkpointing.has_checkpoint(ck.load):
        check_checkpoint_shape(ck.load, cfg.model)
        restart = ck.finetune or ck.start_new_stage
        common = checkpointing.load_checkpoint(ck.load, model, optimizer, scheduler,
                                               load_optimizer=not (ck.no_load_optim or ck.finetune),
                                               load_scheduler=not restart)
        if not restart:
            iteration, consumed = common["iteration"], common["consumed_train_samples"]
        log(f"loaded {ck.load} (iteration {common['iteration']}); continuing at iteration {iteration}, "
            f"{consumed:,} samples consumed")
        growth = growth_from_checkpoint(common, cfg, restart)
        scheduler.step(increment=0)  # the loaded param groups carry the saved LR: recompute it for now
    elif ck.load and os.path.abspath(ck.load) == os.path.abspath(ck.save or ""):
        log(f"--load {ck.load} holds no checkpoint yet: starting from scratch")
    elif ck.load:  # an explicit checkpoint of another run (e.g. a grown one) must exist
        raise checkpointing.CheckpointError(f"--load {ck.load}: no complete checkpoint there "
                                            f"(no {checkpointing.LATEST} and not an iter_N folder)")

    valid_samples = 0
    if cfg.logging.eval_interval:
        valid_samples = cfg.logging.eval_iters * s.global_batch_size
    data_config = DataConfig(data_path=list(cfg.data.data_path), split=cfg.data.split,
                             teacher_data_path=cfg.data.teacher_data_path, teacher_fraction=cfg.data.teacher_fraction,
                             data_cache_path=cfg.data.data_cache_path)
    train_ds, valid_ds, _ = build_pretraining_datasets(data_config, tokenizer, cfg.model.seq_length,
                                                       s.global_batch_size, s.train_samples, valid_samples, 0, cfg.seed)

    def iterators(dataset, start, wrap):
        """One iterator, or with interleaved PP one per model chunk over the same micro-batches
        (megatron's schedule calls each chunk's step function once per micro-batch, in order)."""
        def one():
            sampler = GlobalBatchSampler(len(dataset), start, s.global_batch_size, s.micro_batch_size, dp_rank, dp,
                                         wrap=wrap)
            return micro_batches(dataset, sampler, cfg.data.num_workers)
        return one() if len(model) == 1 else [one() for _ in model]

    train_iter = iterators(train_ds, consumed, wrap=False)
    writer = MetricsWriter(cfg.logging.tensorboard_dir, cfg.logging.metrics_jsonl, dist.get_rank())
    peak = cfg.logging.peak_tflops or default_peak_tflops()
    tokens_per_step = s.global_batch_size * cfg.model.seq_length
    flops_per_step = tokens_per_step * flops_per_token(cfg.model)
    skips = SkipTracker(cfg.max_consecutive_skips)
    stop = _StopFlag()
    world = dist.get_world_size()
    start_iteration, interval_start, interval_steps = iteration, time.time(), 0
    run_start = time.time()
    last_loss, last_valid = math.nan, None
    extra = lambda: checkpointing.common_extra(  # noqa: E731
        cfg.model, consumed, growth=growth.to_dict() if growth is not None else None)

    def save(reason: str):
        if ck.save:
            path = checkpointing.save_checkpoint(ck.save, iteration, model, optimizer, scheduler, extra=extra(),
                                                 keep=ck.keep_last)
            log(f"saved checkpoint {path} ({reason})")

    while iteration < s.train_iters:
        if growth is not None:
            lam = apply_growth_schedule(model, growth, iteration)
            if lam is None:
                log(f"step {iteration + 1}: growth masks ramped to 1 and dropped; full-speed model from here")
                growth = None
        result = train_step(model, optimizer, train_iter, num_microbatches=num_micro,
                            seq_length=cfg.model.seq_length, micro_batch_size=s.micro_batch_size)
        iteration += 1
        consumed += s.global_batch_size
        interval_steps += 1
        if result.update_successful:
            scheduler.step(increment=s.global_batch_size)
        skips.record(not result.update_successful, iteration, result.loss, result.grad_norm)
        last_loss = result.loss
        if iteration % cfg.logging.log_interval == 0 or iteration == s.train_iters:
            elapsed = time.time() - interval_start
            step_time = elapsed / interval_steps
            tflops = flops_per_step / step_time / world / 1e12
            lr = optimizer.param_groups[0]["lr"]
            remaining = (s.train_iters - iteration) * (time.time() - run_start) / (iteration - start_iteration)
            mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
            gn = f"{result.grad_norm:.3f}" if result.grad_norm is not None else "n/a"
            log(f"step {iteration:>7d}/{s.train_iters} | samples {consumed:,} | loss {result.loss:.4f} | lr {lr:.3e} | "
                f"grad norm {gn} | skipped {skips.total} | {tokens_per_step / step_time:,.0f} tokens/s | "
                f"{tflops:.2f} TFLOP/s/device | MFU {mfu} | {step_time:.2f} s/step | ETA {format_duration(remaining)}")
            writer.scalars(iteration, {"train/loss": result.loss, "train/lr": lr, "train/grad_norm": result.grad_norm,
                                       "train/tokens_per_s": tokens_per_step / step_time, "train/tflops": tflops,
                                       "train/skipped_steps": skips.total, "train/consumed_samples": consumed,
                                       "train/tokens": consumed * cfg.model.seq_length,
                                       "train/flops": consumed * cfg.model.seq_length * flops_per_token(cfg.model),
                                       "time/elapsed_s": time.time() - run_start})
            interval_start, interval_steps = time.time(), 0
        if cfg.logging.eval_interval and (iteration % cfg.logging.eval_interval == 0 or iteration == s.train_iters):
            eval_iter = iterators(valid_ds, 0, wrap=True)
            last_valid = eval_step(model, eval_iter, num_microbatches=num_micro * cfg.logging.eval_iters,
                                   seq_length=cfg.model.seq_length, micro_batch_size=s.micro_batch_size)
            log(f"step {iteration:>7d} | validation loss {last_valid:.4f} | ppl {math.exp(min(last_valid, 50)):.2f}")
            writer.scalars(iteration, {"valid/loss": last_valid, "train/tokens": consumed * cfg.model.seq_length,
                                       "train/flops": consumed * cfg.model.seq_length * flops_per_token(cfg.model),
                                       "time/elapsed_s": time.time() - run_start})
        if ck.save_interval and iteration % ck.save_interval == 0:
            save(f"every {ck.save_interval} steps")
        if stop.any_rank():
            log(f"signal received: saving and stopping at iteration {iteration}")
            break
        if cfg.logging.exit_interval and iteration - start_iteration >= cfg.logging.exit_interval:
            log(f"--exit-interval {cfg.logging.exit_interval} reached at iteration {iteration}")
            break
    if ck.save and not (ck.save_interval and iteration % ck.save_interval == 0):
        save("end of run")
    writer.close()
    return {"iteration": iteration, "consumed_train_samples": consumed, "train_loss": last_loss,
            "valid_loss": last_valid, "skipped_steps": skips.total}
