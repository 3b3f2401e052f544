"""Bad pretrain_flm.py flags fail before any process group or model exists: exit 2, one line that
names the flag, no traceback; through the stage launcher too, before torchrun starts. And a
SIGTERM to the launchers' torchrun leaves the workers time to finish a save."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from distributed import free_port
from launchers import ENV, REPO, pretrain_main, run_launcher

# A trainable configuration: each row below breaks exactly one thing in it.
BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "4", "--lr", "1e-3",
        "--data-path", "data/en_text_document", "--tokenizer-type", "HuggingFaceTokenizer",
        "--tokenizer-model", "data/bpe.json", "--world-size", "1"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is refused only where there is no GPU")

FAULTS = [
    (["--clip-grad", "-1"], "--clip-grad=-1.0 must be >= 0 (0 disables"),
    (["--keep-last", "-1"], "--keep-last=-1 must be >= 0"),
    (["--eval-interval", "0"], "--eval-interval=0 must be >= 1"),
    (["--eval-interval", "2", "--eval-iters", "0"], "--eval-iters=0 must be >= 1"),
    (["--log-interval", "0"], "--log-interval=0 must be >= 1"),
    (["--max-consecutive-skips", "0"], "--max-consecutive-skips=0 must be >= 1"),
    pytest.param(["--bf16"], "--bf16 needs a GPU", marks=NO_GPU),
    (["--world-size", "3", "--tensor-model-parallel-size", "3"],
     "--num-attention-heads=4 is not divisible by --tensor-model-parallel-size=3"),
    (["--seq-length", "0"], "--seq-length=0 must be a positive integer"),
    (["--num-layers", "-2"], "--num-layers=-2 must be a positive integer"),
    (["--hidden-size", "66"], "--hidden-size=66 is not divisible by --num-attention-heads=4"),
    (["--train-iters", "0"], "--train-iters=0 must be >= 1"),
    (["--lr-warmup-iters", "-1"], "--lr-warmup-iters=-1 must be >= 0"),
    (["--min-lr", "1"], "--min-lr=1.0 must be in [0, --lr=0.001]"),
    (["--adam-beta2", "1"], "--adam-beta2=1.0 must be in [0, 1)"),
    (["--weight-decay", "-0.1"], "--weight-decay=-0.1 must be >= 0"),
    (["--exit-interval", "0"], "--exit-interval=0 must be >= 1"),
    (["--recompute-num-layers", "0"], "--recompute-num-layers=0 must be >= 1"),
    (["--world-size", "0"], "--world-size=0 must be >= 1"),
    (["--position-embedding-type", "alibi"], "--position-embedding-type: invalid choice: 'alibi'"),
    (["--lr-decay-style", "wsd"], "--lr-decay-style: invalid choice: 'wsd'"),
    (["--tokenizer-type", "SentencePieceTokenizer"], "--tokenizer-type: invalid choice"),
    # Flags as the user typed them: the schedule is stored in samples, the message names the iterations.
    (["--lr-warmup-iters", "4"], "--lr-warmup-iters=4 (16 samples) must be shorter than the decay "
                                 "(--train-iters=4 (16 samples))"),
    (["--lr-warmup-samples", "16"], "--lr-warmup-samples=16 must be shorter than the decay (--train-iters=4 "
                                    "(16 samples))"),
    (["--train-iters", None, "--train-samples", "8", "--lr-warmup-iters", "2"],
     "--lr-warmup-iters=2 (8 samples) must be shorter than the decay (--train-samples=8)"),
]

# Long-run operations: saves, watchdog, time limit, loss spikes, W&B.
NO_WANDB = pytest.mark.skipif(__import__("importlib.util").util.find_spec("wandb") is not None,
                              reason="wandb is refused only where it is not installed")
FAULTS += [
    (["--async-save"], "--async-save needs --save"),
    (["--ckpt-fully-parallel-save"], "--ckpt-fully-parallel-save needs --save"),
    (["--distributed-timeout-minutes", "0"], "--distributed-timeout-minutes=0 must be >= 1"),
    (["--hang-timeout-minutes", "-1"], "--hang-timeout-minutes=-1.0 must be >= 0 (0: off) and below"),
    (["--distributed-timeout-minutes", "5", "--hang-timeout-minutes", "5"],
     "--hang-timeout-minutes=5.0 must be >= 0 (0: off) and below --distributed-timeout-minutes=5"),
    (["--hang-timeout-minutes", "nan"], "--hang-timeout-minutes=nan must be >= 0"),
    (["--exit-duration-in-mins", "0"], "--exit-duration-in-mins=0.0 must be > 0"),
    (["--loss-spike-factor", "1"], "--loss-spike-factor=1.0 must be a number > 1"),
    (["--loss-spike-factor", "inf"], "--loss-spike-factor=inf must be a number > 1"),
    (["--loss-spike-factor", "2", "--loss-spike-window", "2"], "--loss-spike-window=2 must be >= 3"),
    (["--loss-spike-rollback"], "--loss-spike-rollback needs --loss-spike-factor"),
    (["--loss-spike-factor", "2", "--loss-spike-rollback"], "--loss-spike-rollback needs --save"),
    (["--wandb-exp-name", "x"], "--wandb-exp-name needs --wandb-project"),
    (["--wandb-project", " "], "--wandb-project must not be empty"),
    pytest.param(["--wandb-project", "flm"], "--wandb-project needs the wandb package", marks=NO_WANDB),
]


@pytest.fixture
def main(monkeypatch):
    """pretrain_flm.main in this process; training itself must never be reached."""
    from flm_ext.training import trainer

    def reached(config, **kwargs):
        raise AssertionError("the bad flag passed validation and training started")

    monkeypatch.setattr(trainer, "pretrain", reached)
    monkeypatch.delenv("RANK", raising=False)
    return pretrain_main()


def _with(base: list[str], flags: list) -> list[str]:
    """The base flags plus `flags`; a flag followed by None is taken out of the base."""
    drop = {flags[i] for i in range(len(flags) - 1) if flags[i + 1] is None}
    argv = [a for i, a in enumerate(base) if a not in drop and (i == 0 or base[i - 1] not in drop)]
    return argv + [f for i, f in enumerate(flags) if f is not None and f not in drop]


@pytest.mark.parametrize("flags, message", FAULTS)
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(main, capsys, flags, message):
    try:
        code = main(_with(BASE, flags))
    except SystemExit as exit:  # argparse's own refusal (choices)
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    if "invalid choice" not in message:
        assert len(err.strip().splitlines()) == 1, err


def test_the_base_flags_are_valid(main, capsys):
    """The rows above fail for their one flag, not for the base (which reaches training)."""
    with pytest.raises(AssertionError, match="training started"):
        main(BASE)


def test_check_config_checks_the_data_files_too(main, capsys, tmp_path):
    """What the launchers run before torchrun: a missing dataset stops there, not in every worker."""
    (tmp_path / "bpe.json").write_text("{}")
    argv = BASE + ["--check-config", "--data-path", str(tmp_path / "missing"),
                   "--tokenizer-model", str(tmp_path / "bpe.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--data-path {tmp_path / 'missing'}: no" in err and len(err.strip().splitlines()) == 1


def test_only_rank_0_prints_a_configuration_error(main, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert main(BASE + ["--clip-grad", "-1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_the_stage_launcher_refuses_tp_not_dividing_the_heads_before_torchrun():
    proc = run_launcher("flm101b_stage3.sh", "--tensor-model-parallel-size", "3", NNODES="24", GPUS_PER_NODE="8",
                        MASTER_PORT=str(free_port()))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == ("pretrain_flm.py: configuration error: --num-attention-heads=80 is not "
                                   "divisible by --tensor-model-parallel-size=3")
    assert "torch.distributed" not in proc.stdout + proc.stderr  # torchrun never started


def _start_torchrun(out, save_seconds: float, **env) -> subprocess.Popen:
    """2 workers through the launchers' torchrun (examples/_python.sh), each saving for save_seconds
    after a SIGTERM."""
    out.mkdir()
    cmd = (f'source {REPO}/examples/_python.sh && exec "${{TORCHRUN[@]}}" --standalone --nproc-per-node 2 '
           f'{REPO}/tests/slow_save_worker.py {out} {save_seconds}')
    return subprocess.Popen(["bash", "-c", cmd], env=dict(ENV, PYTHON=sys.executable, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_to_torchrun_leaves_the_workers_time_to_save(tmp_path):
    """With the launchers' grace both saves complete; with torchrun's grace shorter than the save
    (the control: 1 s against a 60 s save: a 59 s margin, not 2 s) they are killed halfway, so
    this test can tell the two apart. The control ends at its kill, so its long save costs nothing."""
    runs = {"grace": _start_torchrun(tmp_path / "grace", 3.0),
            "short": _start_torchrun(tmp_path / "short", 60.0, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="1")}
    deadline = time.time() + 120
    for name, proc in runs.items():  # SIGTERM each torchrun once both of its workers are up
        while not all((tmp_path / name / f"ready_{rank}").exists() for rank in (0, 1)):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
    for proc in runs.values():
        proc.communicate(timeout=120)
    # The clean stop exits 0 (torch's own torchrun exits 1 after it); a stop cut short does not.
    assert runs["grace"].returncode == 0 and runs["short"].returncode != 0
    for rank in (0, 1):
        assert sorted(os.listdir(tmp_path / "grace" / f"ckpt_{rank}")) == [f"part{i}" for i in range(10)]
        assert not (tmp_path / "short" / f"ckpt_{rank}").exists()


def _tool_main(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(f'{{"text": "line {i}: the quick brown fox 敏捷的狐狸 {i * 7}"}}\n' for i in range(200)))
    return path


@pytest.mark.parametrize("flags, message", [
    (["--vocab-size", "100"], "--vocab-size 100 must exceed the 256 byte tokens"),
    (["--min-frequency", "0"], "--min-frequency 0 must be >= 1"),
    (["--input", "missing.jsonl"], "--input missing.jsonl does not exist"),
])
def test_train_tokenizer_refuses_bad_flags(tmp_path, capsys, corpus, flags, message):
    code = _tool_main("train_tokenizer")(["--input", str(corpus), "--output", str(tmp_path / "t.json"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()


def test_train_tokenizer_output_is_readable_by_all_and_its_log_has_no_blank_lines(tmp_path, capfd, corpus):
    previous = os.umask(0o022)  # what a login shell has; the file must follow it like every other output
    try:
        assert _tool_main("train_tokenizer")(["--input", str(corpus), "--output", str(tmp_path / "t.json"),
                                              "--vocab-size", "300"]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644
    out, err = capfd.readouterr()  # the file descriptors: the tokenizers library writes there, not to sys.stdout
    assert out.splitlines()[-1].startswith(f"train_tokenizer: wrote {tmp_path / 't.json'} in ")
    assert all(line.strip() for line in (out + err).splitlines()), repr(out + err)
