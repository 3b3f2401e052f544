"""The resume contract: a resume continues the run its checkpoint recorded, or says in one line
which flag would change it, the saved and the new value, and how to override.

What a resume may change, and how it continues:
- the global batch size, when the schedule in samples is unchanged: the LR schedule, the data
  position and the end of the run all count samples, so the run continues at the same sample with
  the new batch (the end iteration is recomputed from the samples left);
- the train samples (or iterations), when the LR decay is fixed by --lr-decay-samples: the
  schedule is unchanged, the run just ends elsewhere (never before the checkpoint);
- the LR schedule (--lr, --min-lr, warm-up, decay) only with Megatron's
  --override-opt_param-scheduler: the flags' schedule applies from the checkpoint's sample on.

Refused: µP on/off or its base shape (changes the model's function and its optimizer groups;
--finetune loads the weights alone), --seq-length (the saved data position counts samples of the
old length; --start-new-stage restarts the data), train samples below the checkpoint's. A new
stage or fine-tune (--start-new-stage, --finetune) restarts iteration, data and schedule, so only
µP is checked there.
"""
from __future__ import annotations

import math

from flm_ext.checkpoint.schema import CheckpointRecord
from flm_ext.checkpoint.run_record import RunContract
from flm_ext.config import ConfigError

_MUP_MULTS = (("mup_input_mult", "--mup-input-mult"), ("mup_output_mult", "--mup-output-mult"))
_SCHEDULE_FLAGS = (("lr", "--lr"), ("min_lr", "--min-lr"), ("lr_decay_style", "--lr-decay-style"))


def contract_of(cfg) -> RunContract:
    """The record of a TrainConfig."""
    s = cfg.schedule
    return RunContract(global_batch_size=s.global_batch_size, train_samples=s.train_samples, lr=cfg.optim.lr,
                       min_lr=cfg.optim.min_lr, lr_warmup_init=s.lr_warmup_init,
                       lr_warmup_samples=s.lr_warmup_samples,
                       lr_decay_samples=s.lr_decay_samples or s.train_samples, lr_decay_style=s.lr_decay_style)


def check_mup(saved, model, folder: str, *, finetune: bool) -> list[str]:
    """µP on/off, its width multiplier m and its multipliers must match between the saved FLMConfig and
    the flags' one, except for --finetune (weights only), which warns. m, not the base width, is
    compared: an imported checkpoint records m itself."""
    if saved.use_mup != model.use_mup:
        old = saved.use_mup
        flag, keep, what = "--use-mup", "--use-mup" if old else "--no-use-mup", (
            f"{folder} was trained {'with µP (--use-mup)' if old else 'without µP'} but the flags turn it "
            f"{'off' if old else 'on'}")
    elif not model.use_mup:
        return []
    elif not math.isclose(saved.mup_width_mult, model.mup_width_mult):
        m = saved.mup_width_mult
        base = model.hidden_size / m
        flag, keep, what = "--mup-base-width", (f"--mup-base-width {base:g}" if base == int(base) else "the same m"), (
            f"{folder} was trained with the µP width multiplier m = {m:g} but the flags give "
            f"{model.mup_width_mult:g} (--hidden-size {model.hidden_size} / --mup-base-width {model.mup_base_width})")
    else:
        wrong = [(flag, getattr(saved, name), getattr(model, name)) for name, flag in _MUP_MULTS
                 if getattr(saved, name) != getattr(model, name)]
        if not wrong:
            return []
        flag, old, new = wrong[0]
        keep, what = f"{flag} {old}", f"{folder} was trained with {flag} {old} but the flags give {new}"
    if finetune:
        return [f"warning: --finetune: {what}: µP changes the model's function, expect the loss to jump"]
    raise ConfigError(f"{flag}: {what}: µP changes the model's function and its optimizer groups; pass {keep} to "
                      f"continue the run, or --finetune to load only its weights into the new model (the loss "
                      f"will jump)")


def check_resume(saved_record: CheckpointRecord, cfg, folder: str, *, override_schedule: bool) -> list[str]:
    """Refuse a resume that would silently change the run (ConfigError naming the flag); returns notes
    on what changes legitimately and how it continues."""
    s, notes = cfg.schedule, []
    iteration, consumed = saved_record.iteration, saved_record.consumed_train_samples
    saved_seq = saved_record.model_config.seq_length
    if saved_seq != cfg.model.seq_length:
        raise ConfigError(f"--seq-length: {folder} was trained with --seq-length {saved_seq} but the "
                          f"flags give {cfg.model.seq_length}: its data position ({consumed:,} samples) counts "
                          f"samples of {saved_seq} tokens and would point at other data; pass "
                          f"--seq-length {saved_seq} to continue, or --start-new-stage to restart "
                          f"the data and schedule with the new length")
    if consumed > s.train_samples:
        raise ConfigError(f"{s.flag('train_samples')} ends before the checkpoint {folder} (iteration {iteration}, "
                          f"{consumed:,} samples): give at least "
                          f"{s.as_typed('train_samples', consumed)} to continue it, --ckpt-step N to resume an "
                          f"earlier iteration, or --start-new-stage to begin a new schedule from its weights")
    saved = saved_record.run
    if saved is None:  # written before the record (or by a tool): nothing more to compare
        return notes
    new = contract_of(cfg)
    changed = _schedule_changes(saved, new, s)
    if changed and not override_schedule:
        flag, label, old, new_value, _ = changed[0]
        also = f" (also changed: {', '.join(c[0] for c in changed[1:])})" if changed[1:] else ""
        typed = [c[0] for c in changed if c[0].endswith("-iters")]
        why = (f", because --global-batch-size changed from {saved.global_batch_size} to {new.global_batch_size} and "
               f"{' and '.join(typed)} count steps of it" if typed and saved.global_batch_size != new.global_batch_size
               else "")
        keep = " ".join(c[4] for c in changed if c[4])
        raise ConfigError(f"{flag}: {folder} was trained with {label} {old} but the flags give {new_value}{also}"
                          f"{why}; pass {keep} to continue its schedule (in samples: any --global-batch-size keeps "
                          f"it), or add --override-opt_param-scheduler to apply the new schedule from sample "
                          f"{consumed:,}")
    if changed:
        notes.append(f"--override-opt_param-scheduler: the LR schedule of the flags applies from sample "
                     f"{consumed:,} ({', '.join(f'{c[0]} {c[2]} -> {c[3]}' for c in changed)})")
    if saved.global_batch_size != new.global_batch_size:
        left = s.train_samples - consumed
        notes.append(f"--global-batch-size {saved.global_batch_size} -> {new.global_batch_size}: the LR schedule "
                     f"and the data position count samples, so the run continues at sample {consumed:,} and ends "
                     f"after {math.ceil(left / s.global_batch_size)} more steps ({left:,} samples)")
    elif saved.train_samples != new.train_samples:
        notes.append(f"{s.flag('train_samples')}: the run now ends at sample {new.train_samples:,} (was "
                     f"{saved.train_samples:,}); the LR schedule is unchanged")
    return notes


def _schedule_changes(saved: RunContract, new: RunContract, s) -> list[tuple[str, str, object, object, str]]:
    """(flag as typed, what, saved value, new value, the flag that keeps the saved value) per change."""
    changed = [(flag, flag, getattr(saved, name), getattr(new, name), f"{flag} {getattr(saved, name)}")
               for name, flag in _SCHEDULE_FLAGS if getattr(saved, name) != getattr(new, name)]
    if saved.lr_warmup_init != new.lr_warmup_init:
        changed.append(("the warm-up's initial LR", "a warm-up from", saved.lr_warmup_init, new.lr_warmup_init, ""))
    if saved.lr_warmup_samples != new.lr_warmup_samples:
        changed.append((s.typed_flag("lr_warmup_samples"), "a warm-up of", f"{saved.lr_warmup_samples} samples",
                        f"{new.lr_warmup_samples} samples", f"--lr-warmup-samples {saved.lr_warmup_samples}"))
    if saved.lr_decay_samples != new.lr_decay_samples:
        fixed = s.lr_decay_samples or saved.lr_decay_samples != saved.train_samples
        flag = "--lr-decay-samples" if s.lr_decay_samples else s.typed_flag("train_samples")
        changed.append((flag, "the LR decaying over", f"{saved.lr_decay_samples} samples",
                        f"{new.lr_decay_samples} samples",
                        f"--lr-decay-samples {saved.lr_decay_samples}" if fixed else
                        f"--train-samples {saved.train_samples}"))
    return changed
