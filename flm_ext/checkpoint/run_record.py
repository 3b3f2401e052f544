"""Typed records a training checkpoint carries in its common state (`common["flm"]`), beside the
model config and the tokenizer record:

- `RunContract` (`flm.run`): what defines the run besides the model (global batch, train samples,
  the LR schedule in samples). A resume compares it with the flags (flm_ext.training.contract), so
  a changed batch or schedule is either continued correctly or refused in one line.
- `LossLedger` (`flm.health`): the training loss measured on the step right after each save, i.e.
  the loss of the saved weights on the next batch. After a non-finite stop the trainer names the
  newest checkpoint whose weights were still healthy, instead of advising to resume weights that
  already diverge.

Both are plain data (ints, floats, strings); the checkpoint record (schema.py) stores them with
`to_dict` and reads them with `from_dict`, which raises ValueError naming a bad entry.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

# A saved checkpoint is "exploded" when the loss right after it is more than this many times the
# lowest loss seen before it (or not finite). Diverging runs go from ~3 to 1e3..1e9 within a few
# steps; ordinary batch-to-batch noise is far below 2x.
EXPLODED_FACTOR = 2.0
LEDGER_ENTRIES = 64  # the newest saves kept in the record (older ones are long gone with --keep-last)


@dataclass(frozen=True)
class RunContract:
    """The batch and LR schedule of a run, in samples (as the scheduler counts them)."""

    global_batch_size: int
    train_samples: int
    lr: float
    min_lr: float
    lr_warmup_init: float
    lr_warmup_samples: int
    lr_decay_samples: int  # resolved: the train samples when --lr-decay-samples is not given
    lr_decay_style: str


    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record) -> RunContract:
        if not isinstance(record, dict):
            raise ValueError(f"expected a dict, found {type(record).__name__}")
        for f in fields(cls):
            if f.name not in record:
                raise ValueError(f"lacks {f.name!r}")
            if not _is(record[f.name], f.type):
                raise ValueError(f"{f.name} {record[f.name]!r} is not {f.type}")
        return cls(**{f.name: record[f.name] for f in fields(cls)})


def _is(value, type_name: str) -> bool:
    """Whether a stored value is of a field's type (`from __future__ import annotations`: a name)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, {"int": int, "float": (int, float), "str": str}[type_name])


@dataclass
class SavedLoss:
    loss: float | None = None  # the loss of the step after the save; None until that step ran
    best_before: float | None = None  # the lowest finite loss of any step before that one

    @property
    def healthy(self) -> bool | None:
        """None when not known yet (no step after the save)."""
        if self.loss is None:
            return None
        if not math.isfinite(self.loss):
            return False
        return self.best_before is None or self.loss <= EXPLODED_FACTOR * self.best_before


@dataclass
class LossLedger:
    """Losses right after saves, carried from checkpoint to checkpoint."""

    saves: dict[int, SavedLoss] = field(default_factory=dict)
    best: float | None = None  # the lowest finite training loss so far


    def saved(self, iteration: int) -> None:
        """A checkpoint of `iteration` was written (or loaded): its loss comes with the next step
        (measured again: after a rollback or resume the step may see other weights than before)."""
        self.saves[iteration] = SavedLoss()
        for old in sorted(self.saves)[:-LEDGER_ENTRIES]:
            del self.saves[old]

    def observe(self, iteration: int, loss: float) -> None:
        """The step that produced `iteration` had `loss` (the loss of the weights of iteration - 1)."""
        entry = self.saves.get(iteration - 1)
        if entry is not None and entry.loss is None:
            entry.loss, entry.best_before = loss, self.best
        if math.isfinite(loss) and (self.best is None or loss < self.best):
            self.best = loss

    def newest_healthy(self, candidates) -> int | None:
        """The newest of `candidates` (iterations on disk) known to be healthy."""
        healthy = [n for n in candidates if n in self.saves and self.saves[n].healthy]
        return max(healthy) if healthy else None

    def to_dict(self) -> dict:
        return {"saves": {n: asdict(s) for n, s in self.saves.items()}, "best": self.best}

    @classmethod
    def from_dict(cls, record) -> LossLedger:
        if not isinstance(record, dict):
            raise ValueError(f"expected a dict, found {type(record).__name__}")
        try:
            saves = {int(n): SavedLoss(**s) for n, s in (record.get("saves") or {}).items()}
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"saves: {e}") from None
        return cls(saves, record.get("best"))
