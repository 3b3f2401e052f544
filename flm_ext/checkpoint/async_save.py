"""Checkpoint saves for long runs: asynchronous (`--async-save`) and fully parallel
(`--ckpt-fully-parallel-save`), with the same crash guarantees as a synchronous save.

Async: megatron-core's torch_dist strategy plans the save and hands back an `AsyncRequest`; its
`AsyncCallsQueue` (non-persistent: one forked writer per save) writes the shards while training
goes on. Training is blocked only for the planning, megatron's copy of tensors that are views of
a larger buffer (DDP's parameter buffer), and the fork; on a GPU also the copy to host memory.
The writer child checksums the files it wrote (off the training process's critical path) into a
side file. Finalisation runs on every rank at a later step (polled each step, without waiting) or
before the next save / at the end (waiting): megatron's own finalisation (torch's `.metadata`,
`metadata.json`), then `training_io.publish_save`: the manifest of every rank's checksums, the
rename of `iter_N.partial` and the latest marker. A crash before that leaves `iter_N.partial`
unpublished and the previous checkpoint the latest; a write error on any rank raises
CheckpointError on every rank. One save is in flight at a time.

Fully parallel: megatron's `FullyParallelSaveStrategyWrapper` over the data-parallel group
gives each DP replica a share of the replicated tensors to write (without it DP rank 0 of every
model-parallel group writes everything). It caches the distribution across saves.

Writer processes die with the trainer (`flm_ext.processes.die_with_parent`): see
`writer_processes_die_with_trainer`.

Synchronous: written in the trainer process itself (`in_process_save_strategy`), not by the
per-bucket processes megatron-core 0.16 forks for every save, synchronous ones included.
"""
from __future__ import annotations

import functools
import json
import os
import queue

import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy
from torch.distributed.checkpoint.api import CheckpointException

from flm_ext.processes import die_with_parent, forked_children_die_with_parent
from flm_ext.checkpoint import training_io
from flm_ext.checkpoint.schema import CheckpointRecord

CHECKSUM_SIDE_FILE = ".flm_files_{rank}.json"  # written by a rank's writer child, read and removed at publish


def writer_processes_die_with_trainer() -> None:
    """Make megatron-core's checkpoint writer processes die when this trainer process dies.

    Without this, every SIGKILL of a worker leaves behind megatron's results-queue Manager (a
    spawned interpreter with torch imported, ~250 MB, started at the first save by
    `filesystem_async._get_write_results_queue`; it serves forever) and, during a save, the forked
    writers. We start that Manager ourselves with `die_with_parent` as its initializer and put
    its queue where megatron looks for it (a private module global of megatron-core 0.16.1), and
    give every forked child the same rule.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch import multiprocessing as mp

    forked_children_die_with_parent()
    if getattr(filesystem_async, "_results_queue", None) is None:
        from multiprocessing.managers import SyncManager

        manager = SyncManager(ctx=mp.get_context("spawn"))
        manager.start(initializer=die_with_parent, initargs=(os.getpid(),))
        filesystem_async._results_queue = manager.Queue()
        filesystem_async._flm_manager = manager  # keep it referenced for the life of the process


class _InProcessSave(TorchDistSaveShardedStrategy):
    """megatron's torch_dist save strategy whose synchronous save writes its buckets in this process.

    megatron-core 0.16's writer forks one process per bucket at every save (`write_preloaded_data
    _multiproc`), from a trainer running other threads (gloo's, the watchdog's): a fork copies
    any lock another thread holds at that instant, with no thread left to release it in the
    child, which then waits forever (a PP=2 test run once hung where only a save or the start-up
    keeps the watchdog silent). Later megatron versions write in the main process for such
    reasons. Here each bucket is written, one after another, by `write_preloaded_data`, the
    function the forked writers run: the same files and write results. An async save is
    unchanged (its writer process is megatron's design)."""

    def save(self, sharded_state_dict, checkpoint_dir):
        request = self.async_save(sharded_state_dict, checkpoint_dir)
        fn = request.async_fn
        if getattr(fn, "func", None) == FileSystemWriterAsync.write_preloaded_data_multiproc:
            request = request._replace(async_fn=functools.partial(_write_buckets_here, *fn.args, **fn.keywords))
        request.execute_sync()


def _write_buckets_here(transform_list, use_msc, rank, write_buckets, results_queue) -> None:
    """`write_preloaded_data_multiproc` without the processes: {bucket index: write results}, or the
    first bucket's exception, on `results_queue`, where megatron's finalisation reads it."""
    results: dict | Exception = {}
    for index, bucket in enumerate(write_buckets):
        local, done = queue.Queue(), queue.Queue()
        done.put(index)  # the writer takes its token and marks it done, as in the forked case
        FileSystemWriterAsync.write_preloaded_data(transform_list, index, bucket, local, done, True, use_msc=use_msc)
        _, result = local.get_nowait()
        if isinstance(result, Exception):
            results = result
            break
        results[index] = result
    results_queue.put(results)


def in_process_save_strategy() -> TorchDistSaveShardedStrategy:
    """The default torch_dist save strategy (backend, version, threads: megatron's defaults),
    writing synchronous saves in this process (`_InProcessSave`)."""
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    default = get_default_save_sharded_strategy()
    return _InProcessSave(default.backend, default.version, thread_count=default.thread_count)


class CheckpointSaver:
    """Saves a run's checkpoints: synchronously, or asynchronously with `finalize` to publish them."""

    def __init__(self, *, async_save: bool, fully_parallel: bool, writers_die_with_trainer: bool = True):
        self.async_save, self.fully_parallel = async_save, fully_parallel
        self._strategy = None
        self._queue = None
        self.in_flight: tuple[str, int, int | None] | None = None  # (root, iteration, keep)
        self.published: list[str] = []  # folders made the latest by `finalize` since the last look
        self._guard_writers = writers_die_with_trainer  # done at the first save, when megatron would start them

    def strategy(self):
        """megatron's torch_dist save strategy (synchronous saves written in this process), fully
        parallel over the DP group when asked (built once)."""
        if self._strategy is None:
            from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
            from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

            strategy = get_default_save_sharded_strategy() if self.async_save else in_process_save_strategy()
            if self.fully_parallel:
                strategy = FullyParallelSaveStrategyWrapper(
                    strategy, parallel_state.get_data_parallel_group(with_context_parallel=True),
                    do_cache_distribution=True)
            self._strategy = strategy
        return self._strategy

    def save(self, root: str, iteration: int, chunks, optimizer, scheduler, *, record: CheckpointRecord,
             keep: int | None, discard_newer: bool = False) -> str:
        """Save `iteration`; returns its final folder. Async: returns once the writer runs; the folder
        becomes the latest when `finalize` publishes it. Waits for a save still in flight first."""
        if self._guard_writers:  # not at start-up: a run that never saves starts no Manager
            writer_processes_die_with_trainer()
            self._guard_writers = False
        if not self.async_save:
            return training_io.save_checkpoint(root, iteration, chunks, optimizer, scheduler, record=record,
                                               keep=keep, sharded_strategy=self.strategy(),
                                               discard_newer=discard_newer)
        self.finalize(blocking=True)
        state = training_io.sharded_save_state(iteration, chunks, optimizer, scheduler, record)
        final, partial = training_io.begin_save(root, iteration)
        error = request = None
        try:
            request = dist_checkpointing.save(state, partial, sharded_strategy=self.strategy(),
                                              validate_access_integrity=True, async_sharded_save=True)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - planning failed: every rank raises below
            error = training_io.save_error(partial, e)
        if training_io._collect_errors(error) is not None:
            training_io.publish_save(root, iteration, None, error, keep)  # raises everywhere
        if self._queue is None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue(persistent=False)
        rank = dist.get_rank()
        write = request.async_fn

        def write_then_checksum(*args, **kwargs):  # runs in the forked writer
            if write is not None:
                write(*args, **kwargs)
            _write_side_file(partial, rank)

        megatron_finalize = list(request.finalize_fns)

        def finish():  # every rank, once every rank's writer is done
            error = files = None
            try:
                for fn in megatron_finalize:
                    fn()
                files = _read_side_file(partial, rank)
                if rank == 0:
                    files.update(training_io.describe_files(partial, [n for n in ("common.pt", "metadata.json")
                                                                      if os.path.exists(os.path.join(partial, n))]
                                                            + [".metadata"]))
            except (Exception, CheckpointException) as e:  # noqa: BLE001 - a write failed on some rank
                error = training_io.save_error(partial, e)
            training_io.publish_save(root, iteration, files, error, keep, discard_newer=discard_newer)
            self.published.append(final)

        if write is None:  # this rank has nothing to write (fully parallel): the side file now
            request = request._replace(async_fn=None)
            _write_side_file(partial, rank)
        else:
            request = request._replace(async_fn=write_then_checksum)
        self._queue.schedule_async_request(request._replace(finalize_fns=[finish]))
        self.in_flight = (root, iteration, keep)
        return final

    def finalize(self, *, blocking: bool) -> list[str]:
        """Publish the save in flight if every rank's writer is done (or wait for it); on every rank.
        Returns the folders published by this call."""
        if self._queue is None or not self._queue.get_num_unfinalized_calls():
            return []
        self.published = []
        try:
            self._queue.maybe_finalize_async_calls(blocking=blocking)
        finally:
            if not self._queue.get_num_unfinalized_calls():
                self.in_flight = None
        return list(self.published)

    def close(self) -> None:
        """Wait for and publish the save in flight (end of run)."""
        self.finalize(blocking=True)


def _write_side_file(partial: str, rank: int) -> None:
    """This rank's shard sizes and checksums, computed by the writer child after its writes."""
    files = {}
    try:
        names = [n for n in os.listdir(partial) if n.startswith(f"__{rank}_")]
        files = training_io.describe_files(partial, names)
    finally:
        with open(os.path.join(partial, CHECKSUM_SIDE_FILE.format(rank=rank)), "w") as f:
            json.dump(files, f)


def _read_side_file(partial: str, rank: int) -> dict:
    path = os.path.join(partial, CHECKSUM_SIDE_FILE.format(rank=rank))
    with open(path) as f:
        files = json.load(f)
    os.remove(path)
    return files
