"""tools/grow_checkpoint.py end to end: checkpoints written by pretrain_flm.py are grown offline
(width at TP=2 -> loaded at PP=2 and TP=1; depth -> TP=1), the grown model computes the old
function (logits and the next training loss on the same batch), training goes on through the mask
ramp, and bad requests are refused with nothing written."""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flm_ext.checkpoint import manifest_for_tree, write_latest

from distributed import run_then_sigkill
from tiny_data import run_tool, train  # `data`, the tiny bilingual set, is a session fixture (conftest.py)

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
TOOL = str(REPO / "tools" / "grow_checkpoint.py")
TRAIN_ITERS = 12  # every run uses the same total, so the data order and LR schedule are shared
GROWN_AT = 4
WIDE = dict(hidden_size=128, num_attention_heads=8, ffn_hidden_size=512)


def _train(nproc: int, data: dict, out: Path, **flags) -> dict[int, float]:
    """pretrain_flm.py as the trainer tests run it, with the shared total of iterations."""
    return train(nproc, data, out, train_iters=TRAIN_ITERS, **flags)


def _grow_cli(*args: str) -> subprocess.CompletedProcess:
    return run_tool("grow_checkpoint.py", *args, env=ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("grow_runs")


@pytest.fixture(scope="module")
def old_run(data, runs):
    """The pre-growth model: 2 x 64, 4 heads, FFN 256, trained 4 steps at TP=2 and saved, then one step
    on: that step's loss is the old model's on batch 5, the batch the grown runs see first (the same
    weights, Adam state and batch as a resume from the save)."""
    losses = _train(2, data, runs / "old", tensor_model_parallel_size=2, save=str(runs / "old" / "run"),
                    save_interval=GROWN_AT, exit_interval=GROWN_AT + 1)
    assert sorted(losses) == list(range(1, GROWN_AT + 2))
    # the checkpoint of step GROWN_AT alone in a folder of its own, as a run that stopped there leaves it
    root = runs / "old" / "ckpt"
    root.mkdir()
    shutil.move(str(runs / "old" / "run" / f"iter_{GROWN_AT:07d}"), str(root))
    write_latest(str(root), GROWN_AT)
    return root, losses[GROWN_AT + 1]


@pytest.fixture(scope="module")
def old(old_run):
    return old_run[0]


@pytest.fixture(scope="module")
def next_loss(old_run):
    return old_run[1]


@pytest.fixture(scope="module")
def wide(runs, old):
    """Width growth through the CLI, with --verify."""
    out = runs / "wide"
    proc = _grow_cli("--load", str(old), "--save", str(out), "--hidden-size", "128", "--num-attention-heads", "8",
                     "--ffn-hidden-size", "512", "--growth-ramp-steps", "3", "--verify", "--progress-interval", "0")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out, proc.stdout


def test_width_growth_preserves_the_logits_and_reports_progress(wide):
    out, stdout = wide
    diff = float(re.search(r"^max abs logit diff: (\S+)$", stdout, re.M).group(1))
    assert diff <= 1e-10  # float64: exact up to rounding
    assert re.search(r"grow: [\d.]+/[\d.]+ GiB \(\d+%\) \| [\d.]+ MiB/s \| .* ETA .* \| chunk \d+/\d+ ", stdout)
    assert (out / "latest_checkpointed_iteration.txt").read_text() == str(GROWN_AT)
    assert not os.path.exists(str(out) + ".partial")
    common = torch.load(out / f"iter_{GROWN_AT:07d}" / "common.pt", weights_only=False)
    assert common["iteration"] == GROWN_AT and common["parallel_layout"] is None
    assert common["flm"]["model_config"]["hidden_size"] == 128
    hidden = [c for c in common["flm"]["growth"]["changes"] if c["axis"] == "hidden"]
    assert [(c["old"], c["new"]) for c in hidden] == [(64, 128)] and common["flm"]["growth"]["ramp_steps"] == 3
    assert common["flm"]["growth"]["start_iteration"] == GROWN_AT


def test_training_continues_after_width_growth_at_pp2_and_round_trips(data, runs, wide, next_loss):
    """Saved at TP=2, grown, trained at PP=2: the first loss is the old model's on the same batch;
    the loss falls through the ramp; after it the masks are gone and a TP=1 resume matches."""
    grown, _ = wide
    ckpt = runs / "wide_train" / "ckpt"
    losses = _train(2, data, runs / "wide_train", pipeline_model_parallel_size=2, load=str(grown), save=str(ckpt),
                    save_interval=8, keep_last=0, **WIDE)
    assert sorted(losses) == list(range(GROWN_AT + 1, TRAIN_ITERS + 1))
    first = losses[GROWN_AT + 1]
    assert abs(first - next_loss) <= 1e-5, (first, next_loss)
    assert losses[TRAIN_ITERS] < first - 0.05, losses
    log = (runs / "wide_train" / "stdout.log").read_text()
    assert "growth masks ramped to 1 and dropped" in log
    after_ramp = torch.load(ckpt / "iter_0000008" / "common.pt", weights_only=False)
    assert "growth" not in after_ramp["flm"]

    resumed = _train(1, data, runs / "wide_resume", load=str(ckpt / "iter_0000008"), **WIDE)
    assert sorted(resumed) == list(range(9, TRAIN_ITERS + 1))
    for step, loss in resumed.items():
        assert abs(loss - losses[step]) <= 1e-5, (step, loss, losses[step])


def test_depth_growth_preserves_logits_and_the_next_loss(data, runs, old, next_loss, megatron_single_process):
    from flm_ext.growth.offline import grow_checkpoint
    from flm_ext.growth.verify import verify_growth

    deep = runs / "deep"
    lines = []
    grow_checkpoint(str(old), str(deep), dict(num_layers=4), depth_init="stack", ramp_steps=2, log=lines.append)
    assert verify_growth(str(old), str(deep)) <= 1e-10
    losses = _train(1, data, runs / "deep_train", load=str(deep), num_layers=4, exit_interval=1)
    assert abs(losses[GROWN_AT + 1] - next_loss) <= 1e-5, (losses, next_loss)

    # The check can fail: without the gates of the new layers (a wrong growth record that says no
    # layer is new) the logits move.
    bad = runs / "deep_no_gates"
    shutil.copytree(deep, bad)
    common_pt = bad / f"iter_{GROWN_AT:07d}" / "common.pt"
    common = torch.load(common_pt, weights_only=False)
    (layers,) = [c for c in common["flm"]["growth"]["changes"] if c["axis"] == "layers"]
    layers.update(old=layers["new"], positions=[])
    torch.save(common, common_pt)
    manifest_for_tree(str(common_pt.parent))  # a consistent (wrong) checkpoint, not a damaged one
    assert verify_growth(str(old), str(bad)) > 1e-3


@pytest.mark.parametrize("sizes, error, message", [
    (dict(hidden_size=32, num_attention_heads=2), "GrowthError", "cannot shrink hidden_size: 64 -> 32"),
    (dict(num_layers=1), "GrowthError", "cannot shrink num_layers: 2 -> 1"),
    (dict(hidden_size=100, num_attention_heads=8), "ConfigError", "hidden_size=100 is not divisible by"),
    (dict(hidden_size=128, num_attention_heads=4), "GrowthError", "keeps the head size fixed: head_dim 16 -> 32"),
])
def test_impossible_shapes_are_refused(runs, old, sizes, error, message):
    from flm_ext.growth.offline import grow_checkpoint

    out = runs / f"refused_{'_'.join(map(str, sizes.values()))}"
    with pytest.raises(Exception) as info:
        grow_checkpoint(str(old), str(out), sizes, log=lambda _: None)
    assert type(info.value).__name__ == error and message in str(info.value)
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_cli_refusal_names_the_problem_and_exits_2(runs, old):
    out = runs / "cli_refused"
    proc = _grow_cli("--load", str(old), "--save", str(out), "--hidden-size", "32", "--num-attention-heads", "2")
    assert proc.returncode == 2
    assert "grow_checkpoint: error: growth cannot shrink hidden_size: 64 -> 32" in proc.stderr
    assert not out.exists()


def test_bad_input_and_existing_output_are_refused(runs, old, wide):
    from flm_ext.growth.offline import GrowCheckpointError, grow_checkpoint

    grow = lambda load, save: grow_checkpoint(str(load), str(save), WIDE, log=lambda _: None)  # noqa: E731
    with pytest.raises(GrowCheckpointError, match="no such file"):
        grow(runs / "missing", runs / "x1")
    (runs / "empty").mkdir()
    with pytest.raises(GrowCheckpointError, match=r"empty holds no checkpoint \(no latest_checkpointed"):
        grow(runs / "empty", runs / "x2")
    broken = runs / "broken"
    shutil.copytree(old, broken)
    os.remove(broken / f"iter_{GROWN_AT:07d}" / ".metadata")
    with pytest.raises(GrowCheckpointError, match=r"iter_0000004 is incomplete \(no \.metadata\)"):
        grow(broken, runs / "x3")
    existing = runs / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(GrowCheckpointError, match="existing already exists"):
        grow(old, existing)
    assert os.listdir(existing) == ["keep.txt"]
    # A checkpoint still inside its mask ramp cannot be grown again (its masks would be lost).
    with pytest.raises(GrowCheckpointError, match="still inside the previous growth's mask ramp"):
        grow_checkpoint(str(wide[0]), str(runs / "x4"), dict(num_layers=4), log=lambda _: None)
    for name in ("x1", "x2", "x3", "x4"):
        assert not (runs / name).exists() and not (runs / (name + ".partial")).exists()


def test_an_error_during_growth_leaves_nothing(runs, old, monkeypatch):
    """E.g. a full disk half-way (a Ctrl-C there is wrapped the same way by torch's checkpoint writer)."""
    import flm_ext.growth.offline as gc
    import flm_ext.growth.methods.msg as msg

    calls = {"n": 0}
    real = msg.grow_layer

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(msg, "grow_layer", failing)
    out = runs / "interrupted"
    with pytest.raises(Exception, match="No space left on device"):
        gc.grow_checkpoint(str(old), str(out), WIDE, log=lambda _: None)
    assert calls["n"] == 10
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_a_killed_growth_leaves_no_checkpoint_and_the_rerun_succeeds(tmp_path):
    from flm_ext.config import get_preset
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    src, out = tmp_path / "src", tmp_path / "grown"
    cfg = get_preset("tiny-stage1", num_layers=4, hidden_size=256, num_attention_heads=4, ffn_hidden_size=1024)
    write_synthetic_checkpoint(str(src), cfg, iteration=7)
    args = [sys.executable, TOOL, "--load", str(src), "--save", str(out), "--num-layers", "8",
            "--progress-interval", "0", "--bucket-mb", "4"]
    returncode, _ = run_then_sigkill(args, ENV, lambda line: "| chunk 20/" in line)
    assert returncode == -signal.SIGKILL
    assert not out.exists() and Path(str(out) + ".partial").is_dir()
    rerun = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "left by an interrupted run" in rerun.stdout
    assert not Path(str(out) + ".partial").exists()
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "7"


def test_bf16_weights_and_their_fp32_main_copies_grow_alike(tmp_path):
    """Grown separately (weight chunk, then main-copy chunk), new entries must agree: bf16 = bf16(fp32)."""
    from flm_ext.config import get_preset
    from flm_ext.growth import GrowthPlan, is_layer_key
    from flm_ext.checkpoint import CheckpointReader
    from flm_ext.growth.offline import grow_checkpoint
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    cfg = get_preset("tiny-stage1", num_layers=2, vocab_size=512)
    plan = GrowthPlan(cfg, cfg.replace(num_layers=3, **WIDE))
    write_synthetic_checkpoint(str(tmp_path / "src"), cfg, dtype=torch.bfloat16, iteration=3)
    grow_checkpoint(str(tmp_path / "src"), str(tmp_path / "grown"), dict(WIDE, num_layers=3), depth_init="random",
                    log=lambda _: None)
    reader = CheckpointReader(str(tmp_path / "grown" / "iter_0000003"))
    model_keys = [k for k in reader.tensors if not k.startswith("optimizer.")]
    assert len(model_keys) == 15
    for key in model_keys:
        weight, main = reader.read(key), reader.read("optimizer.state.fp32_param." + key)
        assert weight.dtype == torch.bfloat16 and main.dtype == torch.float32
        new_shape = plan.shapes(key)[1]
        assert tuple(weight.shape) == ((3,) + new_shape if is_layer_key(key) else new_shape), key
        assert torch.equal(weight, main.to(torch.bfloat16)), key


def test_workers_write_the_same_bytes_as_one_process(tmp_path):
    """--workers 2 grows disjoint buckets in two processes; every file, .metadata and the manifest
    included, equals the single-process output (and the growth imports no megatron)."""
    from flm_ext.config import get_preset
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    src = tmp_path / "src"
    write_synthetic_checkpoint(str(src), get_preset("tiny-stage1", num_layers=3, vocab_size=512), iteration=5)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        proc = subprocess.run([sys.executable, "-X", "importtime", TOOL, "--load", str(src), "--save", str(out),
                               "--num-layers", "5", "--hidden-size", "128", "--num-attention-heads", "8",
                               "--ffn-hidden-size", "512", "--bucket-mb", "1", "--workers", str(workers),
                               "--progress-interval", "0"], capture_output=True, text=True, env=ENV, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "| chunk " in proc.stdout and "grow: wrote" in proc.stdout
        assert not re.search(r"\| megatron\b", proc.stderr)  # -X importtime lists every import
        files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        outputs[workers] = {str(f): (out / f).read_bytes() for f in files}
    assert len([f for f in outputs[1] if f.endswith(".distcp")]) > 4  # several buckets to share out
    assert outputs[1].keys() == outputs[2].keys()
    for name, data in outputs[1].items():
        assert outputs[2][name] == data, name


@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_input_shard_found_while_growing_leaves_nothing(tmp_path, workers):
    """The input shards' checksums are checked while the output is written (one disk pass, not a
    serial one before): tensor bytes damaged in a shard still stop the growth with the checksum
    error naming that shard, exit 2, and nothing at --save or its .partial folder."""
    from flm_ext.checkpoint import CheckpointReader
    from flm_ext.config import get_preset
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    src, out = tmp_path / "src", tmp_path / "grown"
    write_synthetic_checkpoint(str(src), get_preset("tiny-stage1", num_layers=3, vocab_size=512), iteration=5)
    folder = src / "iter_0000005"
    reader = CheckpointReader(str(folder))
    stored = reader.reader.storage_data
    info = max((stored[i] for i in stored if i.fqn in reader.tensors), key=lambda info: info.length)
    shard = info.relative_path
    with open(folder / shard, "r+b") as f:  # inside the largest tensor record: no byte object is touched
        f.seek(info.offset + info.length // 2)
        f.write(bytes(64))
    proc = _grow_cli("--load", str(src), "--save", str(out), "--num-layers", "4", "--bucket-mb", "1",
                     "--workers", str(workers), "--progress-interval", "0")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{folder / shard}: checksum mismatch (checkpoint damaged)" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_prefetch_and_worker_checksums_write_the_same_bytes(tmp_path, workers):
    """Making the next chunk while the current one is written (prefetch), skipping the per-file fsync,
    writing the records ourselves (records.py) and taking the manifest entries from the writers must
    not change a byte against the plain serial writer (torch's FileSystemWriter and torch.save, every
    file hashed at the end); `produce` is never run concurrently."""
    import threading
    import zlib

    from flm_ext.checkpoint import CheckpointRecord, Chunk, finish_iteration_folder, tensor_chunks
    from flm_ext.checkpoint.writer import write_chunks
    from flm_ext.config import get_preset

    record = CheckpointRecord(iteration=1, model_config=get_preset("tiny-stage1"))

    chunks = [c for i in range(3) for c in tensor_chunks(f"t{i}", f"t{i}", "param", (64, 32 + i), torch.float32, 4)]
    chunks += tensor_chunks("emb", "emb", "param", (100, 16), torch.bfloat16, None)
    chunks += [Chunk(f"obj{i}/shard_0_1", None, None, None, (), (), (), None, f"obj{i}") for i in range(2)]
    busy, seen = threading.Lock(), []

    def produce(c):
        assert busy.acquire(blocking=False), "produce ran concurrently"
        try:
            seen.append((c.key, c.layer))
            if c.dtype is None:  # a byte object (the trainer's _extra_state, RNG state)
                return io.BytesIO(c.key.encode() * 50)
            g = torch.Generator().manual_seed(zlib.crc32(f"{c.key}/{c.layer}".encode()))
            return torch.randn(c.sizes, generator=g).to(c.dtype)
        finally:
            busy.release()

    outputs = {}
    for name, kwargs in {"plain": dict(direct=False),  # torch's own writer: torch.save per tensor
                         "fast": dict(prefetch=True, sync_files=False, workers=workers)}.items():
        folder = tmp_path / name
        folder.mkdir()
        seen.clear()
        checksums = write_chunks(str(folder), chunks, produce, bucket_bytes=20_000, **kwargs)
        assert workers > 1 and name == "fast" or sorted(seen) == sorted((c.key, c.layer) for c in chunks)
        finish_iteration_folder(str(folder), record, checksums if name == "fast" else None)
        outputs[name] = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len([n for n in outputs["plain"] if n.endswith(".distcp")]) > 3
    assert outputs["plain"] == outputs["fast"]
