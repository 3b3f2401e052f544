"""Training datasets: a weighted language blend plus FreeLM teacher-signal samples in every batch.

Language data: megatron-core's ``GPTDataset`` over each ``IndexedDataset`` prefix, blended by
``BlendedMegatronDatasetBuilder`` with Megatron's ``weight prefix weight prefix ...`` list.
Every token of a language sample is trained on (``loss_mask`` 1, except megatron's padding).

Teacher-signal data: ``tools/preprocess_data.py --teacher-signal --output-prefix P`` writes
two datasets with identical document lengths: ``P_teacher_document`` (the token ids) and
``P_teacher_loss_mask_document`` (1 on each label's tokens, 0 on text, proposition and EOD).
Design choice: instead of guessing where labels sit inside a packed sample, we build two
``GPTDataset``s, one per file, with the same seed, split and sample count. A GPTDataset's
document, sample and shuffle indices depend only on those and on the document lengths, so
sample ``k`` of the mask dataset lines up token by token with sample ``k`` of the text dataset
(checked at build time: the three index arrays must be equal). The loss mask of a teacher
sample is then the mask sample's ``labels``, so it covers exactly the label tokens of every
teacher document packed in it, wherever the packing cut falls.

Mixing: within every global batch of ``global_batch_size`` samples, ``round(teacher_fraction *
global_batch_size)`` positions hold teacher samples; they are spread evenly over the batch
(position ``j`` is a teacher slot when ``floor((j+1)t/g) > floor(jt/g)``), so every
micro-batch and data-parallel rank gets its share, and the same positions in every batch.

``torch.distributed``: works with no process group (single process), and under any process
group (gloo or nccl): the builder then has rank 0 build the index cache first, a barrier, then
the other ranks load it (megatron-core's own protocol; all ranks must call this function).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy
import torch

from flm_ext.data.preprocess import TEACHER_MASK_STREAM, TEACHER_STREAM


def teacher_dataset_paths(prefix: str) -> Tuple[str, str]:
    """(token ids, loss mask) dataset paths written by ``--teacher-signal --output-prefix prefix``."""
    return f"{prefix}_{TEACHER_STREAM}_document", f"{prefix}_{TEACHER_MASK_STREAM}_document"


@dataclasses.dataclass
class DataConfig:
    """Where the training data is and how it is mixed; validated once, here."""

    data_path: List[str]  # Megatron form: ["0.535", "en_text_document", "0.465", "zh_text_document"] or prefixes
    split: str = "969,30,1"  # train, valid, test shares of each dataset's documents
    teacher_data_path: Optional[str] = None  # the --output-prefix given to --teacher-signal preprocessing
    teacher_fraction: float = 0.0  # share of every global batch made of teacher samples
    data_cache_path: Optional[str] = None  # megatron's index cache; default: next to each dataset
    mmap_bin_files: bool = True

    def __post_init__(self) -> None:
        from megatron.core.datasets.utils import get_blend_from_list

        if isinstance(self.data_path, str):
            self.data_path = self.data_path.split()
        if not self.data_path:
            raise ValueError("data_path needs at least one dataset prefix")
        self.blend = get_blend_from_list(list(self.data_path))
        if self.blend[1] is not None and any(w <= 0 for w in self.blend[1]):
            raise ValueError(f"blend weights must be positive, got {self.blend[1]}")
        parts = self.split.replace("/", ",").split(",")
        if len(parts) != 3 or any(not p.strip().replace(".", "", 1).isdigit() for p in parts):
            raise ValueError(f"split must be three numbers like '969,30,1', got {self.split!r}")
        if not 0.0 <= self.teacher_fraction < 1.0:
            raise ValueError(f"teacher_fraction must be in [0, 1), got {self.teacher_fraction}")
        if self.teacher_fraction > 0 and not self.teacher_data_path:
            raise ValueError("teacher_fraction > 0 needs teacher_data_path")


def teacher_slots(global_batch_size: int, teacher_fraction: float) -> int:
    """How many samples of every global batch are teacher samples."""
    n = round(teacher_fraction * global_batch_size)
    if teacher_fraction > 0 and n == 0:
        raise ValueError(
            f"teacher_fraction {teacher_fraction} of a global batch of {global_batch_size} rounds to 0 samples"
        )
    if n >= global_batch_size:
        raise ValueError("teacher samples would fill the whole batch: lower teacher_fraction")
    return n


class TeacherMixDataset(torch.utils.data.Dataset):
    """``num_samples`` samples; in each global batch, the teacher slots come from the teacher
    datasets and the others from the language blend, each source consumed in order."""

    def __init__(self, language, teacher_text, teacher_mask, global_batch_size: int, n_teacher: int, num_samples: int):
        self.language = language
        self.teacher_text = teacher_text
        self.teacher_mask = teacher_mask
        self.global_batch_size = global_batch_size
        self.n_teacher = n_teacher
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def source(self, idx: int) -> Tuple[str, int]:
        """("teacher" | "language", index into that source) of sample ``idx``."""
        if not 0 <= idx < self.num_samples:
            raise IndexError(idx)
        g, t = self.global_batch_size, self.n_teacher
        batch, j = divmod(idx, g)
        teachers_before = j * t // g
        if (j + 1) * t // g > teachers_before:
            return "teacher", batch * t + teachers_before
        return "language", batch * (g - t) + j - teachers_before

    def __getitem__(self, idx: int) -> Dict[str, torch.Tensor]:
        kind, k = self.source(int(idx))
        if kind == "language":
            item = self.language[k]
            return {key: item[key] for key in ("tokens", "labels", "loss_mask", "position_ids")}
        item = self.teacher_text[k]
        mask = self.teacher_mask[k]["labels"].to(torch.float32)
        return {
            "tokens": item["tokens"],
            "labels": item["labels"],
            "loss_mask": item["loss_mask"] * mask,  # megatron's padding stays masked too
            "position_ids": item["position_ids"],
        }


def _gpt_config(data_config: DataConfig, tokenizer, seq_length: int, seed: int, blend):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=data_config.split,
        path_to_cache=data_config.data_cache_path,
        mmap_bin_files=data_config.mmap_bin_files,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )


def _build(config, sizes: Sequence[int]) -> List:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    builder = BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return builder.build()
    # The one patch here: megatron-core 0.16.1's BlendedDataset asks torch.distributed.get_rank()
    # when it builds a cached blend index, without checking for a process group (GPTDataset does
    # check). With no process group this process is the only one: rank 0.
    with mock.patch.object(torch.distributed, "get_rank", lambda group=None: 0):
        return builder.build()


def _check_aligned(text, mask, split: str) -> None:
    if (text is None) != (mask is None):
        raise RuntimeError(f"teacher {split}: text and loss-mask datasets differ in presence")
    if text is None:
        return
    for name in ("document_index", "sample_index", "shuffle_index"):
        if not numpy.array_equal(getattr(text, name), getattr(mask, name)):
            raise RuntimeError(
                f"teacher {split}: the loss-mask dataset's {name} differs from the text dataset's: "
                "were both written by the same --teacher-signal run?"
            )


def build_pretraining_datasets(
    data_config: DataConfig,
    tokenizer,
    seq_length: int,
    global_batch_size: int,
    train_samples: int,
    valid_samples: int,
    test_samples: int,
    seed: int,
) -> Tuple[Optional[TeacherMixDataset], Optional[TeacherMixDataset], Optional[TeacherMixDataset]]:
    """(train, valid, test); each item is ``{"tokens", "labels", "loss_mask", "position_ids"}``
    of shape [seq_length] (int64, int64, float32, int64). A split asked for 0 samples is None.

    ``tokenizer`` is a ``flm_ext.data.tokenizers.Tokenizer`` (megatron reads ``eod``,
    ``vocab_size`` and ``unique_identifiers``). Call on every rank when distributed.
    """
    if seq_length < 1 or global_batch_size < 1:
        raise ValueError("seq_length and global_batch_size must be >= 1")
    n_teacher = teacher_slots(global_batch_size, data_config.teacher_fraction) if data_config.teacher_data_path else 0
    samples = (train_samples, valid_samples, test_samples)
    batches = [math.ceil(n / global_batch_size) for n in samples]
    lang_sizes = [b * (global_batch_size - n_teacher) for b in batches]
    teacher_sizes = [b * n_teacher for b in batches]

    language = _build(_gpt_config(data_config, tokenizer, seq_length, seed, data_config.blend), lang_sizes)
    teacher_text = teacher_mask = [None, None, None]
    if n_teacher:
        text_path, mask_path = teacher_dataset_paths(data_config.teacher_data_path)
        teacher_text = _build(_gpt_config(data_config, tokenizer, seq_length, seed, ([text_path], None)), teacher_sizes)
        teacher_mask = _build(_gpt_config(data_config, tokenizer, seq_length, seed, ([mask_path], None)), teacher_sizes)

    out = []
    for i, split in enumerate(("train", "valid", "test")):
        if samples[i] == 0:
            out.append(None)
            continue
        if language[i] is None or (n_teacher and teacher_text[i] is None):
            raise ValueError(f"the {split} split {data_config.split!r} leaves no documents for {samples[i]} samples")
        _check_aligned(teacher_text[i], teacher_mask[i], split)
        out.append(TeacherMixDataset(language[i], teacher_text[i], teacher_mask[i], global_batch_size, n_teacher, samples[i]))
    return tuple(out)
