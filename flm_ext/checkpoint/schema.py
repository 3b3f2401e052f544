"""The typed record of a checkpoint's `common.pt`: the one definition of what a checkpoint stores
besides its tensors. Every writer (trainer, growth, import, synthetic inputs) builds a
`CheckpointRecord`, every reader gets one from `read_record` / `open_checkpoint`; nothing outside
this package takes `common.pt` apart by hand.

On disk (Megatron-LM's top-level names, then ours under `flm`):

    iteration, consumed_train_samples, parallel_layout   Megatron-LM's keys
    opt_param_scheduler, optimizer                        megatron's own state: kept, never interpreted
    flm.version                                           RECORD_VERSION (absent: an older layout, 0)
    flm.model_config  flm.tokenizer  flm.optimizer.distributed  flm.run  flm.health
    flm.growth  flm.grown_from  flm.imported_from

Each field of `CheckpointRecord` names its place and its reader (`stored`), and `to_dict` /
`from_dict` walk the fields, so a new field is one line (docs/extending.md). Megatron-LM's keys are
always written (`parallel_layout` None: written by a tool, no RNG state to restore); an `flm` entry
only when it is set. Sub-records that
another package owns are stored as the plain dicts that package serialises itself: the MSG growth
state (`flm_ext.growth.state.GrowthState.to_dict`) and the growth provenance (`grown_from`).

Older layouts this project wrote are read as version 0: every entry but `iteration` and
`flm.model_config` is optional (the first trainer checkpoints stored the model config alone;
tools never store a tokenizer, run contract or loss ledger). A bad, missing or unknown field
raises CheckpointError naming the file and the field, in one line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from flm_ext.checkpoint.integrity import load_common
from flm_ext.checkpoint.layout import CheckpointError
from flm_ext.checkpoint.run_record import LossLedger, RunContract
from flm_ext.config import ConfigError, FLMConfig, validate

RECORD_VERSION = 1
_TOP_LEVEL_OURS = ("iteration", "consumed_train_samples", "parallel_layout", "flm")


# --- readers of plain values: raise ValueError saying what was expected --------------------------

def count(value) -> int:
    """A non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, found {value!r}")
    return value


def text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, found {value!r}")
    return value


def flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, found {value!r}")
    return value


def plain_dict(value) -> dict:
    """A sub-record another package owns (it validates the contents when it reads them)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a dict, found {type(value).__name__}")
    return dict(value)


def layout(value) -> tuple[int, int]:
    """[TP, PP] of the run that saved the checkpoint."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"expected [tensor parallel, pipeline parallel], found {value!r}")
    return count(value[0]), count(value[1])


def model_config(value) -> FLMConfig:
    """The FLMConfig (fields this version does not know are refused by name)."""
    fields_ = plain_dict(value)
    unknown = sorted(set(fields_) - {f.name for f in dataclasses.fields(FLMConfig)})
    if unknown:
        raise ValueError(f"fields this version does not know: {unknown}")
    try:
        config = FLMConfig(**fields_)
        validate(config)
    except (TypeError, ConfigError) as e:
        raise ValueError(f"unusable model config ({e})") from None
    return config


@dataclass(frozen=True)
class TokenizerRecord:
    """What the trainer stores about its tokenizer, so tools can refuse another one."""

    type: str | None
    name: str
    vocab_size: int
    fingerprint: str

    @classmethod
    def of(cls, tokenizer, tokenizer_type: str | None) -> TokenizerRecord:
        return cls(tokenizer_type, tokenizer.name, tokenizer.vocab_size, tokenizer.vocab_fingerprint)

    @classmethod
    def from_dict(cls, value) -> TokenizerRecord:
        data = plain_dict(value)
        return cls(type=None if data.get("type") is None else text(data["type"]),
                   name=text(_required(data, "name")), vocab_size=count(_required(data, "vocab_size")),
                   fingerprint=text(_required(data, "fingerprint")))

    def to_dict(self) -> dict:
        return asdict(self)


def _required(data: dict, key: str):
    if key not in data:
        raise ValueError(f"lacks {key!r}")
    return data[key]


def _to_dict(value):
    return value.to_dict()


def _same(value):
    return value


def stored(path: str, read: Callable[[Any], Any], write: Callable[[Any], Any] = _same, **kwargs):
    """A record field stored at `path` in common.pt ("flm.run": common["flm"]["run"]); `read` turns
    the stored plain data into the field's value (ValueError: why not), `write` the reverse."""
    return field(metadata={"path": tuple(path.split(".")), "read": read, "write": write}, **kwargs)


@dataclass(frozen=True)
class CheckpointRecord:
    """Everything a checkpoint stores besides its tensors (see the module docstring for the layout)."""

    iteration: int = stored("iteration", count)
    model_config: FLMConfig = stored("flm.model_config", model_config, asdict)
    consumed_train_samples: int = stored("consumed_train_samples", count, default=0)
    parallel_layout: tuple[int, int] | None = stored("parallel_layout", layout, list, default=None)
    tokenizer: TokenizerRecord | None = stored("flm.tokenizer", TokenizerRecord.from_dict, _to_dict, default=None)
    distributed_optimizer: bool | None = stored("flm.optimizer.distributed", flag, default=None)
    run: RunContract | None = stored("flm.run", RunContract.from_dict, _to_dict, default=None)
    health: LossLedger | None = stored("flm.health", LossLedger.from_dict, _to_dict, default=None)
    growth: dict | None = stored("flm.growth", plain_dict, default=None)  # GrowthState.to_dict()
    grown_from: dict | None = stored("flm.grown_from", plain_dict, default=None)  # growth tool: method, old config
    imported_from: str | None = stored("flm.imported_from", text, default=None)
    # megatron's own top-level entries (opt_param_scheduler, optimizer param groups), passed through.
    megatron: Mapping = field(default_factory=dict)
    version: int = RECORD_VERSION  # the layout version it was read from (older files: 0)

    # --- building ----------------------------------------------------------------------------------
    def replace(self, **changes) -> CheckpointRecord:
        """A copy with `changes` (e.g. a training hook's `checkpoint_state()`); unknown names are refused."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise CheckpointError(f"checkpoint record: no field {', '.join(unknown)} (fields: "
                                  f"{', '.join(f.name for f in _stored_fields())}; add one in "
                                  f"flm_ext/checkpoint/schema.py)")
        return dataclasses.replace(self, **changes)

    @property
    def scheduler_state(self) -> dict | None:
        """megatron's OptimizerParamScheduler state (None in checkpoints written by tools before a step)."""
        return self.megatron.get("opt_param_scheduler")

    # --- to and from common.pt -------------------------------------------------------------------
    def to_dict(self, where: str = "the record being written") -> dict:
        """The plain dict `common.pt` stores; checked by reading it back, so a record that could not
        be read is never written (CheckpointError naming `where` and the field)."""
        out: dict = dict(self.megatron)
        out["flm"] = {"version": RECORD_VERSION}
        for f in _stored_fields():
            value = getattr(self, f.name)
            *parents, leaf = f.metadata["path"]
            if value is None and parents:  # an flm entry the checkpoint does not have (Megatron's keys stay)
                continue
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = None if value is None else f.metadata["write"](value)
        CheckpointRecord.from_dict(out, where)
        return out

    @classmethod
    def from_dict(cls, common, where: str) -> CheckpointRecord:
        """The record of a `common.pt` dict (`where`: the file, for messages), any layout this project wrote."""
        if not isinstance(common, Mapping):
            raise CheckpointError(f"{where}: expected a dict, found {type(common).__name__} (not a checkpoint "
                                  f"written by this project's trainer or tools)")
        flm = common.get("flm")
        if not isinstance(flm, Mapping):
            raise CheckpointError(f"{where}: field flm: missing (not a checkpoint written by this project's "
                                  f"trainer or tools)")
        version = flm.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version > RECORD_VERSION:
            raise CheckpointError(f"{where}: field flm.version: {version!r} is not a layout this version reads "
                                  f"(up to {RECORD_VERSION}); written by a newer flm_ext?")
        values, known = {}, {"version"}
        for f in _stored_fields():
            path = f.metadata["path"]
            if path[0] == "flm":
                known.add(path[1])
            try:
                found, value = _lookup(common, path)
                if not found or (value is None and f.default is None):  # absent, or stored as None
                    if f.default is dataclasses.MISSING:
                        raise ValueError("missing")
                    continue
                values[f.name] = f.metadata["read"](value)
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"{where}: field {'.'.join(path)}: {e}") from None
        unknown = sorted(set(flm) - known)
        if unknown:
            raise CheckpointError(f"{where}: field flm.{unknown[0]}: not a field of the checkpoint record "
                                  f"(version {version}); written by a newer flm_ext?")
        megatron = {k: v for k, v in common.items() if k not in _TOP_LEVEL_OURS}
        return cls(**values, megatron=megatron, version=version)


def _stored_fields():
    return [f for f in fields(CheckpointRecord) if "path" in f.metadata]


def _lookup(common: Mapping, path: tuple[str, ...]) -> tuple[bool, Any]:
    node = common
    for i, key in enumerate(path):
        if not isinstance(node, Mapping):
            raise ValueError(f"{'.'.join(path[:i])} is not a dict but {type(node).__name__}")
        if key not in node:
            return False, None
        node = node[key]
    return True, node


def read_record(folder: str) -> CheckpointRecord:
    """The record of an iteration folder's `common.pt` (loaded with weights_only: never runs code)."""
    return CheckpointRecord.from_dict(load_common(folder), os.path.join(folder, "common.pt"))


def check_tokenizer(record: CheckpointRecord, tokenizer, where: str) -> None:
    """Refuse a tokenizer other than the one the checkpoint was trained with: the same vocabulary
    size is not enough (another BPE of that size gives plausible but meaningless perplexities).
    Checkpoints without the record (older ones, tool outputs) are not checked."""
    saved = record.tokenizer
    if saved is None or saved.fingerprint == tokenizer.vocab_fingerprint:
        return
    raise CheckpointError(f"{where} was trained with another tokenizer ({saved.type or saved.name}, "
                          f"{saved.vocab_size} tokens, vocabulary {saved.fingerprint[:12]}) than the "
                          f"one given ({tokenizer.name}, {tokenizer.vocab_size} tokens, vocabulary "
                          f"{tokenizer.vocab_fingerprint[:12]}): pass the training run's --tokenizer-type / "
                          f"--tokenizer-model / --vocab-file")
