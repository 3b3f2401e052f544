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

Checks (``checks.py``): ``check_training_data`` (the trainer calls it before building the model)
stops with one line on data made by another tokenizer, ids outside the padded vocabulary, or a
split asked for samples that gets no document; splits asked for no samples are not built (an
empty one would hang megatron). The index cache key includes each file's identity, so a prefix
preprocessed again in place is indexed afresh.

``torch.distributed``: works with no process group (single process), and under any process
group (gloo or nccl): the builder then has rank 0 build the index cache first, a barrier, then
the other ranks load it (megatron-core's own protocol; all ranks must call this function).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from flm_ext.data.checks import DataError, check_data_matches, check_indexed, check_splits, data_identity, epochs_note
from flm_ext.data.config import DataConfig, teacher_dataset_paths  # noqa: F401  (re-exported)


def teacher_slots(global_batch_size: int, teacher_fraction: float) -> int:
    """How many samples of every global batch are teacher samples."""
    n = round(teacher_fraction * global_batch_size)
    if teacher_fraction > 0 and n == 0:
        raise DataError(f"--teacher-fraction {teacher_fraction} of a --global-batch-size of {global_batch_size} "
                        f"rounds to 0 samples: raise one of them")
    if n >= global_batch_size:
        raise DataError(f"--teacher-fraction {teacher_fraction}: teacher samples would fill the whole batch")
    return n


def _split_sizes(data_config: DataConfig, global_batch_size: int, samples: Sequence[int]) -> Tuple[int, List[int], List[int]]:
    """(teacher slots per batch, language samples per split, teacher samples per split)."""
    n_teacher = teacher_slots(global_batch_size, data_config.teacher_fraction) if data_config.teacher_data_path else 0
    batches = [math.ceil(n / global_batch_size) for n in samples]
    return n_teacher, [b * (global_batch_size - n_teacher) for b in batches], [b * n_teacher for b in batches]


def check_training_data(data_config: DataConfig, tokenizer, padded_vocab_size: int, global_batch_size: int,
                        samples: Sequence[int], seq_length: Optional[int] = None) -> List[str]:
    """Before any model is built: every dataset was made with ``tokenizer`` and fits the padded
    vocabulary, and every split asked for samples has data (``samples``: train, valid, test).
    Raises ``DataError`` (one line); returns lines to print (unverifiable data; with
    ``seq_length``, training data read more than once)."""
    n_teacher, lang_sizes, teacher_sizes = _split_sizes(data_config, global_batch_size, samples)
    prefixes, weights = weighted_blend(data_config.blend)
    datasets = [("--data-path", p) for p in prefixes]
    notes = [w for flag, p in datasets for w in check_data_matches(p, tokenizer, padded_vocab_size, flag)]
    check_splits(datasets, data_config.split, lang_sizes)
    shares = [w / sum(weights) for w in weights] if weights else [1.0]
    asked = [(p, math.ceil(lang_sizes[0] * share)) for p, share in zip(prefixes, shares)]
    if n_teacher:
        text, mask = teacher_dataset_paths(data_config.teacher_data_path)
        notes += check_data_matches(text, tokenizer, padded_vocab_size, "--teacher-data-path")
        check_splits([("--teacher-data-path", text), ("--teacher-data-path", mask)], data_config.split, teacher_sizes)
        asked.append((text, teacher_sizes[0]))
    if seq_length:
        notes += [n for p, k in asked for n in [epochs_note(p, data_config.split, k, seq_length)] if n]
    return notes


def weighted_blend(blend: Tuple[List[str], Optional[List[float]]]) -> Tuple[List[str], Optional[List[float]]]:
    """Several prefixes without weights: weighted by their token counts. megatron would build one
    epoch of each and cap the blend there, fewer samples than asked (an IndexError mid-run)."""
    prefixes, weights = blend
    if weights is not None or len(prefixes) == 1:
        return blend
    infos = [check_indexed(p, "--data-path") for p in prefixes]
    return prefixes, [float(max(1, os.path.getsize(p + ".bin") // i.dtype.itemsize)) for p, i in zip(prefixes, infos)]


@dataclasses.dataclass
class IdentifiedGPTDatasetConfig(GPTDatasetConfig):
    """megatron's config plus the identity of the data files (``checks.data_identity``)."""

    data_identity: Optional[Dict[str, str]] = None


class FLMGPTDataset(GPTDataset):
    """megatron's GPTDataset whose index cache key also covers the data files themselves, so a
    prefix preprocessed again in place gets fresh indices instead of stale ones."""

    @staticmethod
    def _key_config_attributes() -> List[str]:
        return GPTDataset._key_config_attributes() + ["data_identity"]


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


def _gpt_config(data_config: DataConfig, tokenizer, seq_length: int, seed: int, blend, sizes: Sequence[int]):
    config = IdentifiedGPTDatasetConfig(
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
        data_identity={p: data_identity(p) for p in blend[0]},
    )
    # A split asked for no samples is not built: megatron would still count its epochs, forever
    # when it holds no document (see checks.py).
    config.split_matrix = [m if n > 0 else None for m, n in zip(config.split_matrix, sizes)]
    return config


def _build(config, sizes: Sequence[int]) -> List:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    builder = BlendedMegatronDatasetBuilder(FLMGPTDataset, list(sizes), lambda: True, config)
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
    samples = (train_samples, valid_samples, test_samples)
    n_teacher, lang_sizes, teacher_sizes = _split_sizes(data_config, global_batch_size, samples)
    check_splits([("--data-path", p) for p in data_config.blend[0]], data_config.split, lang_sizes)

    blend = weighted_blend(data_config.blend)
    language = _build(_gpt_config(data_config, tokenizer, seq_length, seed, blend, lang_sizes), lang_sizes)
    teacher_text = teacher_mask = [None, None, None]
    if n_teacher:
        text_path, mask_path = teacher_dataset_paths(data_config.teacher_data_path)
        check_splits([("--teacher-data-path", p) for p in (text_path, mask_path)], data_config.split, teacher_sizes)
        teacher_text, teacher_mask = (
            _build(_gpt_config(data_config, tokenizer, seq_length, seed, ([path], None), teacher_sizes), teacher_sizes)
            for path in (text_path, mask_path))

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
