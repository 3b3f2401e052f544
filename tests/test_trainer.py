"""pretrain_flm.py end to end on real (tiny) bilingual data: learning, parallel parity, resume,
resharding, crash safety of saves, non-finite steps and the 24-node launch scripts' dry runs."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_data
from flm_ext.training.metrics import default_peak_tflops
from distributed import lone_process_env, run_then_sigkill
from launchers import pretrain_main, recorded_calls, recorded_launch, run_launcher
from tiny_data import command as _command
from tiny_data import losses, train

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
# `data` (the tiny bilingual set) is a session fixture in conftest.py.


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


# µP on (m = hidden 64 / base 32 = 2) so its LR groups go through every save, load and resume below.
MUP = dict(use_mup=True, mup_base_width=32)
LAYOUTS = {
    "tp1": (1, {}),
    "tp2": (2, dict(tensor_model_parallel_size=2)),
    "tp2_sp": (2, dict(tensor_model_parallel_size=2, sequence_parallel=True)),
    "pp2": (2, dict(pipeline_model_parallel_size=2)),
    "dp2_distopt": (2, dict(use_distributed_optimizer=True)),
}


@pytest.fixture(scope="module")
def layout_runs(data, runs):
    """20 steps at each layout from the same seed and data, checkpoints at 10 and 20; each layout
    runs the first time a test asks for it (so a test that needs only TP=1 does not wait for all)."""
    class Runs(dict):
        def __missing__(self, name):
            nproc, flags = LAYOUTS[name]
            self[name] = train(nproc, data, runs / name, save=str(runs / name / "ckpt"), save_interval=10,
                               keep_last=0, **MUP, **flags)
            return self[name]
    return Runs()


@pytest.fixture(scope="module")
def tp1(layout_runs):
    return layout_runs["tp1"]


def test_tiny_flm_learns_from_the_bilingual_corpus(data, runs):
    out = runs / "learn"
    train(1, data, out, train_iters=30, eval_interval=10, eval_iters=2, tensorboard_dir=str(out / "tb"))
    valid = losses(out / "metrics.jsonl", "valid/loss")
    assert sorted(valid) == [10, 20, 30]
    assert valid[10] > valid[20] > valid[30], valid
    assert valid[30] < valid[10] - 0.3
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tb"))
    check_log_against_metrics_and_schedule((out / "stdout.log").read_text(), out / "metrics.jsonl",
                                           steps=30, global_batch=8, seq=64, lr=3e-3, min_lr=3e-4, warmup_iters=2)


STEP_LINE = re.compile(
    r"^step +(?P<step>\d+)/(?P<total>\d+) \| samples (?P<samples>[\d,]+) \| loss (?P<loss>\S+) \| lr (?P<lr>\S+) \| "
    r"grad norm (?P<gn>\S+) \| skipped (?P<skipped>\d+) \| (?P<tps>[\d,]+) tokens/s \| (?P<tflops>\S+) TFLOP/s/device "
    r"\| MFU (?P<mfu>\S+) \| (?P<spt>\S+) s/step \| ETA (?P<eta>\d+m\d\ds|\d+h\d\dm)$", re.M)
VALID_LINE = re.compile(r"^step +(?P<step>\d+) \| validation loss (?P<loss>\S+) \| ppl (?P<ppl>\S+)$", re.M)


def megatron_cosine_lr(samples: int, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """The schedule written out from its definition (linear warm-up from 0, then half a cosine from
    lr to min_lr over the remaining samples), to check the logged LR against."""
    if samples <= warmup:
        return lr * samples / warmup
    ratio = (samples - warmup) / (decay - warmup)
    return min_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (lr - min_lr)


def check_log_against_metrics_and_schedule(log: str, metrics: Path, *, steps: int, global_batch: int, seq: int,
                                           lr: float, min_lr: float, warmup_iters: int) -> None:
    """Every console step line, field by field, against the JSONL metrics (full precision), the LR
    schedule's formula, the step's token count and the FLOPs of the model shape counted by hand."""
    rows = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["iteration"], {}).update(row)
    padded_vocab = int(re.search(r"padded to (\d+)\)", log).group(1))
    h, f, layers = 64, 256, 2  # tiny-stage1 at --num-layers 2
    n = layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * h + padded_vocab * h  # tied embedding once
    flops_per_token = 6 * n + 12 * layers * h * seq
    tokens_per_step = global_batch * seq
    lines = [m.groupdict() for m in STEP_LINE.finditer(log)]
    assert [int(x["step"]) for x in lines] == list(range(1, steps + 1)), log[-3000:]
    for x in lines:
        step, row = int(x["step"]), rows[int(x["step"])]
        assert int(x["total"]) == steps and int(x["samples"].replace(",", "")) == step * global_batch
        loss = float(x["loss"])
        assert math.isfinite(loss) and abs(loss - row["train/loss"]) <= 5e-5, (step, loss, row["train/loss"])
        expected_lr = megatron_cosine_lr(step * global_batch, lr, min_lr, warmup_iters * global_batch,
                                         steps * global_batch)
        assert float(x["lr"]) == pytest.approx(expected_lr, rel=6e-4, abs=1e-12), step
        assert row["train/lr"] == pytest.approx(expected_lr, rel=1e-9, abs=1e-15), step
        assert abs(float(x["gn"]) - row["train/grad_norm"]) <= 5e-4 and row["train/grad_norm"] > 0
        assert x["skipped"] == "0"
        # MFU against the device's datasheet peak: none for a CPU ("n/a"), the table's for a known GPU.
        peak = default_peak_tflops() if tiny_data.ENV.get("CUDA_VISIBLE_DEVICES") != "" else None  # the run's device
        if peak is None:
            assert x["mfu"] == "n/a"
        else:
            assert abs(float(x["mfu"].rstrip("%")) - 100 * row["train/tflops"] / peak) <= 0.05 + 1e-9
        tps, spt = float(x["tps"].replace(",", "")), float(x["spt"])
        assert tps > 0 and abs(tps - row["train/tokens_per_s"]) <= 0.5
        # tokens/s x s/step = the step's tokens, within the rounding of "s/step" to 0.01
        assert tokens_per_step / (spt + 0.005) <= row["train/tokens_per_s"] * (1 + 1e-9)
        assert spt < 0.005 or row["train/tokens_per_s"] <= tokens_per_step / (spt - 0.005) * (1 + 1e-9)
        assert row["train/tflops"] == pytest.approx(row["train/tokens_per_s"] * flops_per_token / 1e12, rel=1e-9)
        assert abs(float(x["tflops"]) - row["train/tflops"]) <= 0.005
        assert row["train/tokens"] == step * tokens_per_step
    valid = [m.groupdict() for m in VALID_LINE.finditer(log)]
    assert [int(v["step"]) for v in valid] == sorted(k for k, r in rows.items() if "valid/loss" in r)
    for v in valid:
        loss = rows[int(v["step"])]["valid/loss"]
        assert abs(float(v["loss"]) - loss) <= 5e-5 and float(v["ppl"]) == pytest.approx(math.exp(loss), abs=0.006)


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "tp1"])
def test_parallel_layouts_give_the_tp1_loss_curve(layout_runs, layout):
    reference, got = layout_runs["tp1"], layout_runs[layout]
    assert sorted(got) == sorted(reference) == list(range(1, 21))
    for step, loss in got.items():
        assert abs(loss - reference[step]) <= 1e-4 * abs(reference[step]), f"{layout} step {step}"
    assert reference[20] < reference[1] - 0.5


def test_resume_after_sigkill_matches_uninterrupted_run_bitwise(data, runs, tp1):
    """SIGKILL once the checkpoint of iteration 8 is complete on disk (the latest marker names it),
    not at a log line that races a save; resume from whatever the marker names by then."""
    from flm_ext.checkpoint import LATEST

    reference = tp1
    out = runs / "killed"
    out.mkdir()
    ckpt = out / "ckpt"
    marker = ckpt / LATEST

    def latest() -> int:
        return int(marker.read_text()) if marker.exists() else 0  # replaced atomically: never half-written

    args = tiny_data.train_args(data, save=str(ckpt), load=str(ckpt), save_interval=4,
                                metrics_jsonl=str(out / "first.jsonl"), **MUP)
    returncode, lines = run_then_sigkill(_command(1, args), ENV, until=lambda: latest() >= 8)
    assert returncode == -signal.SIGKILL
    killed_at = latest()
    assert killed_at in (8, 12, 16), "".join(lines)[-3000:]  # the kill lands after 8 is saved and before the end
    first = losses(out / "first.jsonl")
    assert min(first) == 1 and max(first) >= killed_at  # the first run did train up to its last checkpoint
    resumed = train(1, data, out, save=str(ckpt), load=str(ckpt), save_interval=4, **MUP)
    assert sorted(resumed) == list(range(killed_at + 1, 21))
    for step, loss in resumed.items():
        assert loss == reference[step], f"step {step}: resumed {loss!r} != uninterrupted {reference[step]!r}"


@pytest.mark.parametrize("saved_at, resume_nproc, resume_flags", [
    ("tp2", 1, {}),
    ("tp1", 2, dict(tensor_model_parallel_size=2)),
    ("pp2", 2, dict(tensor_model_parallel_size=2)),
    ("dp2_distopt", 2, dict(use_distributed_optimizer=True)),
])
def test_resharding_on_resume_gives_the_same_next_loss(data, runs, layout_runs, saved_at, resume_nproc,
                                                       resume_flags):
    source = runs / saved_at
    expected = layout_runs[saved_at][11]
    out = runs / f"reshard_{saved_at}_to_{resume_nproc}"
    got = train(resume_nproc, data, out, load=str(source / "ckpt" / "iter_0000010"), train_iters=11,
                override_opt_param_scheduler=True, **MUP, **resume_flags)  # one step: the loss, not the LR, counts
    assert list(got) == [11]
    assert abs(got[11] - expected) <= 1e-5 * abs(expected), (got[11], expected)


def test_a_new_stage_takes_its_learning_rate_from_the_flags(data, runs, tp1):
    """--start-new-stage keeps the Adam moments but not the old run's LR range or schedule position."""
    out = runs / "new_stage"
    got = train(1, data, out, load=str(runs / "tp1" / "ckpt"), start_new_stage=True, train_iters=2, lr=1e-3,
                min_lr=1e-3, lr_warmup_iters=0, lr_decay_style="constant", **MUP)
    assert sorted(got) == [1, 2]
    lrs = losses(out / "metrics.jsonl", "train/lr")
    assert lrs == {1: pytest.approx(1e-3), 2: pytest.approx(1e-3)}
    assert "continuing at iteration 0" in (out / "stdout.log").read_text()


def test_mup_hidden_matrices_train_at_lr_over_m(megatron_single_process):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from flm_ext.config import FLMConfig
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.training.engine import build_optimizer, wrap_ddp
    from flm_ext.training.optim import OptimConfig

    cfg = FLMConfig(num_layers=1, hidden_size=64, num_attention_heads=4, seq_length=16, vocab_size=128,
                    use_mup=True, mup_base_width=16)  # m = 4
    model = wrap_ddp(build_model_chunks(cfg))
    optimizer = build_optimizer(model, cfg, OptimConfig(lr=8e-3, min_lr=8e-3))
    OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=8e-3, min_lr=8e-3, lr_warmup_steps=0, lr_decay_steps=10,
                            lr_decay_style="constant", start_wd=0.1, end_wd=0.1, wd_incr_steps=10,
                            wd_incr_style="constant")
    fc1 = model[0].module.decoder.layers[0].mlp.linear_fc1.weight
    embedding = model[0].module.embedding.word_embeddings.weight
    lr_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    main = {id(getattr(p, "main_param", p)) for p in (fc1,)}
    assert lr_of.get(id(fc1), lr_of.get(next(iter(main)))) == pytest.approx(8e-3 / 4)
    assert lr_of[id(embedding)] == pytest.approx(8e-3)


def test_a_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path, megatron_single_process):
    root = tmp_path / "ckpt"
    env = lone_process_env(ENV)
    _, seen = run_then_sigkill([sys.executable, str(Path(__file__).with_name("kill_during_save.py")), str(root)],
                               env, lambda line: line.startswith("hanging in save 2"))
    assert any(s.startswith("saved 1") for s in seen), "".join(seen)[-3000:]
    assert (root / "iter_0000002.partial").is_dir() and not (root / "iter_0000002").exists()
    # Here, not in the killed process: the latest checkpoint is iteration 1 and it loads, with its weights.
    import kill_during_save

    kill_during_save.check_iteration_1_loads(root)


def test_explicit_load_of_a_missing_checkpoint_is_an_error(data, tmp_path):
    args = tiny_data.train_args(data, load=str(tmp_path / "nothing"), train_iters=1, lr_warmup_iters=0)
    proc = subprocess.run(_command(1, args), capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 1
    assert re.search(r"no (complete )?checkpoint", proc.stderr) and str(tmp_path / "nothing") in proc.stderr


@pytest.mark.parametrize("stage, size", [(1, "15.8B"), (2, "51.4B"), (3, "101.7B")])
def test_stage_scripts_pass_dry_run_on_24_nodes(stage, size, tmp_path, capsys):
    argv = recorded_launch(tmp_path, f"flm101b_stage{stage}.sh", "--dry-run", NNODES="24", GPUS_PER_NODE="8")
    assert argv[0] == str(REPO / "pretrain_flm.py") and argv[-2:] == ["--world-size", "192"]
    assert pretrain_main()(argv[1:]) == 0
    out = capsys.readouterr().out
    layout = {1: "TP 2 x PP 1 x DP 96", 2: "TP 4 x PP 2 x DP 24", 3: "TP 4 x PP 4 x DP 12"}[stage]
    for text in (size, "world size   192 = " + layout, "tokens/step", "memory/GPU", "configuration OK"):
        assert text in out


def test_stage_script_dry_run_needs_no_python_on_path():
    """The launcher runs $PYTHON (else .venv/bin/python), never a `python` from PATH."""
    proc = run_launcher("flm101b_stage3.sh", "--dry-run", NNODES="24", GPUS_PER_NODE="8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "101.7B" in proc.stdout and "dry run: configuration OK" in proc.stdout


@pytest.mark.parametrize("given, venv", [(True, True), (False, True), (False, False)])
def test_launchers_pick_python_then_the_venv_then_python3(tmp_path, given, venv):
    repo = tmp_path / "repo"
    (repo / "examples").mkdir(parents=True)
    (repo / "examples" / "_python.sh").write_text((REPO / "examples" / "_python.sh").read_text())
    fakes = [tmp_path / "bin" / "python3", repo / ".venv" / "bin" / "python"]
    for fake in fakes[:1 + venv]:
        fake.parent.mkdir(parents=True)
        fake.write_text("")
        fake.chmod(0o755)
    env = dict(ENV, PYTHON=str(fakes[0]) if given else "", PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    proc = subprocess.run(["bash", "-c", f'source {repo}/examples/_python.sh; echo "${{TORCHRUN[*]}}"'],
                          capture_output=True, text=True, env=env, timeout=60)
    want = str(fakes[0]) if given else str(fakes[1]) if venv else "python3"
    assert proc.stdout.strip() == f"{want} {repo}/tools/torchrun.py", proc.stderr


@pytest.mark.parametrize("grace", [None, "1800"])
def test_stage_script_checks_the_flags_then_runs_torchrun_with_the_save_grace(tmp_path, grace):
    env = dict(NNODES="24", GPUS_PER_NODE="8", NODE_RANK="3")
    if grace:
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = grace
    (_, check), (seen, run) = recorded_calls(tmp_path, "flm101b_stage3.sh", **env)
    assert check[0] == str(REPO / "pretrain_flm.py") and check[-3:] == ["--world-size", "192", "--check-config"]
    assert run[0] == str(REPO / "tools" / "torchrun.py") and "--check-config" not in run  # torchrun, clean stop
    assert run[run.index("--nnodes") + 1] == "24" and run[run.index("--node-rank") + 1] == "3"
    assert run[run.index(str(REPO / "pretrain_flm.py")) + 1:] == check[1:-3]  # the flags that were checked
    assert seen == (grace or "900")


@pytest.mark.parametrize("env_extra, extra_args, message", [
    ({"NNODES": "24"}, ["--tensor-model-parallel-size", "3"],
     "--num-attention-heads=80 is not divisible by --tensor-model-parallel-size=3"),
    ({"NNODES": "1"}, [], "world_size=8 is not divisible"),
    ({"NNODES": "24"}, ["--global-batch-size", "1000"], "--global-batch-size=1000"),
])
def test_impossible_layouts_fail_dry_run_with_the_reason(env_extra, extra_args, message, tmp_path, capsys):
    argv = recorded_launch(tmp_path, "flm101b_stage3.sh", "--dry-run", *extra_args, GPUS_PER_NODE="8", **env_extra)
    assert pretrain_main()(argv[1:]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_non_finite_loss_skips_the_update_and_too_many_stop_the_run(megatron_single_process):
    from flm_ext.config import FLMConfig
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.training.engine import build_optimizer, forward_step, train_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig
    from flm_ext.training.trainer import SkipTracker, TrainingError

    cfg = FLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=128)
    model = wrap_ddp(build_model_chunks(cfg))
    optimizer = build_optimizer(model, cfg, OptimConfig(lr=1e-2))
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1))
    batch = {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(2, cfg.seq_length),
             "position_ids": torch.arange(cfg.seq_length).expand(2, -1)}

    def poisoned_step(data_iterator, module):
        output, loss_fn = forward_step(data_iterator, module)
        return output * float("nan"), loss_fn

    before = [p.detach().clone() for p in model[0].parameters()]
    result = train_step(model, optimizer, iter([batch]), num_microbatches=1, seq_length=cfg.seq_length,
                        micro_batch_size=2, step_fn=poisoned_step)
    assert not result.update_successful and result.loss != result.loss  # NaN
    assert all(torch.equal(a, b) for a, b in zip(before, model[0].parameters()))
    good = train_step(model, optimizer, iter([batch]), num_microbatches=1, seq_length=cfg.seq_length,
                      micro_batch_size=2)
    assert good.update_successful and not all(torch.equal(a, b) for a, b in zip(before, model[0].parameters()))

    tracker = SkipTracker(limit=3)
    for step, skipped in enumerate([True, True, False, True, True], start=1):
        tracker.record(skipped, step, float("nan"), None)
    assert tracker.total == 4 and tracker.in_a_row == 2
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        tracker.record(True, 6, float("nan"), None)


def test_untie_adam_steps_gives_every_parameter_its_own_step():
    from flm_ext.checkpoint.training_io import untie_adam_steps

    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    adam = torch.optim.Adam(params)
    shared = torch.tensor(5.0)
    for p in params:  # what a load that hands one `step` tensor to every parameter produces
        adam.state[p] = {"step": shared, "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}

    class MegatronLike:
        optimizer = adam

    assert untie_adam_steps(MegatronLike()) == 2
    for p in params:
        p.grad = torch.ones(2)
    adam.step()
    assert [adam.state[p]["step"].item() for p in params] == [6.0, 6.0, 6.0]
