"""The one data configuration: where the training data is, how it is split and mixed, and which
tokenizer reads it; Megatron-LM's flag names in every message.

Three steps, all before any process group exists: construction checks the flags' form (blend
pairs, split, teacher fraction, workers), ``validate`` that training has data and a tokenizer,
``check_files`` the files (each prefix's ``.bin``/``.idx`` whole, the tokenizer files present;
the trainer's first step, so that ``--dry-run`` needs no data). Errors are ``DataError`` (a
``ConfigError``): ``pretrain_flm.py`` prints the one line and exits 2.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Tuple

from flm_ext.data.checks import DataError, check_indexed
from flm_ext.data.tokenizers import TOKENIZER_TYPES, TokenizerConfig
from flm_ext.flags import flag


def teacher_dataset_paths(prefix: str) -> Tuple[str, str]:
    """(token ids, loss mask) dataset paths written by ``--teacher-signal --output-prefix prefix``."""
    from flm_ext.data.preprocess import TEACHER_MASK_STREAM, TEACHER_STREAM

    return f"{prefix}_{TEACHER_STREAM}_document", f"{prefix}_{TEACHER_MASK_STREAM}_document"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_blend(items: List[str]) -> Tuple[List[str], Optional[List[float]]]:
    """``prefix ...`` or ``weight prefix weight prefix ...`` -> (prefixes, weights or None), as
    megatron-core's ``get_blend_from_list`` reads them, with errors naming ``--data-path``."""
    shown = " ".join(items)
    if not any(_is_number(x) for x in items):
        return list(items), None
    if len(items) % 2:
        raise DataError(f"--data-path {shown}: a weighted blend is weight/prefix pairs, but {len(items)} items "
                        f"were given (an odd number): add the missing weight or prefix")
    weights, prefixes = items[0::2], items[1::2]
    bad = [w for w in weights if not _is_number(w)] + [p for p in prefixes if _is_number(p)]
    if bad:
        raise DataError(f"--data-path {shown}: expected weight prefix weight prefix ..., but {bad[0]!r} is out of "
                        f"place")
    values = [float(w) for w in weights]
    if any(not w > 0 for w in values):
        raise DataError(f"--data-path {shown}: blend weights must be positive")
    return prefixes, values


def parse_split(split: str) -> List[float]:
    parts = split.replace("/", ",").split(",")
    if len(parts) != 3 or not all(_is_number(p) and float(p) >= 0 for p in parts) or not sum(map(float, parts)) > 0:
        raise DataError(f"--split {split!r}: give three non-negative shares for train,valid,test like 969,30,1")
    return [float(p) for p in parts]


@dataclasses.dataclass(frozen=True)
class DataConfig(TokenizerConfig):
    """Data and tokenizer flags (Megatron-LM's names); the tokenizer's come from TokenizerConfig."""

    data_path: List[str] = flag(default_factory=list, help="[weight] prefix [weight] prefix ...")  # or one string
    split: str = flag("969,30,1")  # train, valid, test shares of each dataset's documents
    teacher_data_path: Optional[str] = flag(None, help="prefix written by preprocess_data.py --teacher-signal")
    teacher_fraction: float = flag(0.0, help="share of every global batch")
    data_cache_path: Optional[str] = flag(None)  # megatron's index cache; default: next to each dataset
    mmap_bin_files: bool = True
    make_vocab_size_divisible_by: int = flag(128)
    vocab_from_tokenizer: bool = True  # False when --vocab-size is given
    num_workers: int = flag(0)

    def __post_init__(self) -> None:
        paths = self.data_path.split() if isinstance(self.data_path, str) else list(self.data_path)
        object.__setattr__(self, "data_path", paths)
        if paths:
            parse_blend(paths)
        parse_split(self.split)
        if not 0.0 <= self.teacher_fraction < 1.0:
            raise DataError(f"--teacher-fraction {self.teacher_fraction}: must be in [0, 1) (a share of every "
                            f"global batch)")
        if self.teacher_fraction > 0 and not self.teacher_data_path:
            raise DataError("--teacher-fraction needs --teacher-data-path")
        if self.num_workers < 0:
            raise DataError(f"--num-workers {self.num_workers}: must be >= 0 (0 loads data in the training process)")
        if self.make_vocab_size_divisible_by < 1:
            raise DataError(f"--make-vocab-size-divisible-by {self.make_vocab_size_divisible_by}: must be >= 1")
        if self.tokenizer_type is not None and self.tokenizer_type not in TOKENIZER_TYPES:
            raise DataError(f"--tokenizer-type {self.tokenizer_type}: choose one of {', '.join(TOKENIZER_TYPES)}")

    @property
    def blend(self) -> Tuple[List[str], Optional[List[float]]]:
        """megatron's ``(prefixes, weights or None)``."""
        return parse_blend(self.data_path)

    def validate(self, train: bool = True) -> None:
        """With ``train`` (not a dry run), data and tokenizer flags are required."""
        if train and not self.data_path:
            raise DataError("--data-path is required (or use --dry-run to check a configuration)")
        if train and not self.tokenizer_type:
            raise DataError("--tokenizer-type is required to train")

    def check_files(self) -> None:
        """The tokenizer files exist and every dataset is whole (the trainer's first step)."""
        self.validate(train=True)
        self._validate_tokenizer_files()
        for prefix in self.blend[0]:
            check_indexed(prefix, "--data-path")
        if self.teacher_data_path and self.teacher_fraction > 0:
            for path in teacher_dataset_paths(self.teacher_data_path):
                if not os.path.isfile(path + ".idx") and not os.path.isfile(path + ".bin"):
                    raise DataError(f"--teacher-data-path {self.teacher_data_path}: no {path}.bin/.idx (give the "
                                    f"--output-prefix used with tools/preprocess_data.py --teacher-signal)")
                check_indexed(path, "--teacher-data-path")

    def _validate_tokenizer_files(self) -> None:
        kind = self.tokenizer_type
        if kind == "HuggingFaceTokenizer" and not self.tokenizer_model:
            raise DataError("--tokenizer-type HuggingFaceTokenizer needs --tokenizer-model FILE (a tokenizer.json)")
        if kind == "GPT2BPETokenizer" and (self.vocab_file is None) != (self.merge_file is None):
            raise DataError("--tokenizer-type GPT2BPETokenizer needs both --vocab-file and --merge-file, or neither "
                            "(the bundled GPT-2 files)")
        for option, path in (("--tokenizer-model", self.tokenizer_model), ("--vocab-file", self.vocab_file),
                             ("--merge-file", self.merge_file)):
            if path is not None and not os.path.isfile(path):
                raise DataError(f"{option} {path}: no such file")
