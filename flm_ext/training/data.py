"""Micro-batches for this data-parallel rank, resumable from a sample count.

Global batch `b` is dataset samples [b * G, (b + 1) * G); data-parallel rank r takes the r-th
contiguous block of G / DP samples, in micro-batches of M. The position in the data is just the
number of samples consumed, which checkpoints record, so a resumed run sees exactly the samples
an uninterrupted run would have seen (the datasets themselves are deterministic).
"""
from __future__ import annotations

from typing import Iterator

import torch


class GlobalBatchSampler:
    """Yields index lists (one per micro-batch) for one data-parallel rank, forever or `num_batches` times."""

    def __init__(self, total_samples: int, consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, wrap: bool = False):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not divisible by micro batch {micro_batch_size} "
                             f"x data-parallel size {dp_size}")
        self.total, self.start = total_samples, consumed_samples
        self.gbs, self.mbs, self.rank, self.dp = global_batch_size, micro_batch_size, dp_rank, dp_size
        self.wrap = wrap

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.gbs // self.dp
        batch_start = self.start
        while self.wrap or batch_start + self.gbs <= self.total:
            first = batch_start + self.rank * per_rank
            for micro in range(0, per_rank, self.mbs):
                yield [(first + micro + i) % self.total for i in range(self.mbs)]
            batch_start += self.gbs


def micro_batches(dataset, sampler: GlobalBatchSampler, num_workers: int = 0) -> Iterator[dict]:
    """An iterator of collated micro-batches (dicts of [mbs, seq] tensors)."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                         persistent_workers=num_workers > 0)
    return iter(loader)
