"""A small real bilingual training set for trainer tests, built with the project's own tools,
and the helpers that run pretrain_flm.py on it.

The demo corpus (King James Bible, People's Daily, labelled reviews: installed packages only),
cut to a few hundred documents, a 1,024-token byte-level BPE trained on it, and .bin/.idx files
from tools/preprocess_data.py: English, Chinese and FreeLM teacher-signal data. The set is built
once per test session (the `data` fixture in conftest.py) and shared read-only by every module.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from distributed import lone_process_env, torchrun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A child's rendezvous is its own (or torchrun's): none of this process's torch.distributed variables.
ENV = lone_process_env({**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# The runs compare layouts of up to 2 ranks: with fewer GPUs than that (a one-GPU host), every run
# is on CPU and gloo, as on a CPU-only machine, rather than two ranks on one device.
if 0 < _gpu_count() < 2:
    ENV["CUDA_VISIBLE_DEVICES"] = ""


def _head(src: str, dst: str, lines: int) -> None:
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= lines:
                break
            out.write(line)


def _tool(name: str, *args: str) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")


def build(out: str) -> dict:
    """Returns the paths pretrain_flm.py needs."""
    corpus = os.path.join(out, "corpus")
    _tool("build_demo_corpus.py", "--out", corpus)
    small = {"en": 150, "zh": 300, "teacher": 3000}
    for name, lines in small.items():
        _head(os.path.join(corpus, f"{name}_train.jsonl"), os.path.join(out, f"{name}.jsonl"), lines)
    tokenizer = os.path.join(out, "bpe1k.json")
    _tool("train_tokenizer.py", "--input", os.path.join(out, "en.jsonl"), os.path.join(out, "zh.jsonl"),
          "--vocab-size", "1024", "--output", tokenizer)
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer, "--append-eod"]
    for name in ("en", "zh"):
        _tool("preprocess_data.py", "--input", os.path.join(out, f"{name}.jsonl"),
              "--output-prefix", os.path.join(out, name), *tok)
    _tool("preprocess_data.py", "--input", os.path.join(out, "teacher.jsonl"), "--teacher-signal",
          "--output-prefix", os.path.join(out, "teacher"), *tok)
    paths = {"tokenizer": tokenizer, "en": os.path.join(out, "en_text_document"),
             "zh": os.path.join(out, "zh_text_document"), "teacher": os.path.join(out, "teacher"),
             "cache": os.path.join(out, "cache")}
    with open(os.path.join(out, "paths.json"), "w") as f:
        json.dump(paths, f)
    return paths


def train_args(paths: dict, **overrides) -> list[str]:
    """pretrain_flm.py flags for a tiny FLM on this data (flags as keyword overrides: train_iters=20)."""
    flags = {"model_preset": "tiny-stage1", "num_layers": 2, "tokenizer_type": "HuggingFaceTokenizer",
             "tokenizer_model": paths["tokenizer"], "teacher_data_path": paths["teacher"], "teacher_fraction": 0.25,
             "split": "90,10,0", "micro_batch_size": 2, "global_batch_size": 8, "seq_length": 64,
             "lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 2, "log_interval": 1, "data_cache_path": paths["cache"],
             "train_iters": 20,
             # a tiny step takes well under a second: a hang is named (with stacks) in minutes, not at 30
             "hang_timeout_minutes": 2, "distributed_timeout_minutes": 5}
    flags.update(overrides)
    args = ["--data-path", "0.535", paths["en"], "0.465", paths["zh"]]
    for key, value in flags.items():
        if value is None or value is False:
            continue
        args.append("--" + key.replace("_", "-"))
        if value is not True:
            args.append(str(value))
    return args


def run_tool(name: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """tools/<name> in its own interpreter, with no rendezvous variables: a lone process needs no port."""
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], capture_output=True, text=True,
                          env=lone_process_env(env or ENV), timeout=timeout)


def command(nproc: int, args: list[str]) -> list[str]:
    """pretrain_flm.py in one process, or under torchrun with `nproc` gloo ranks."""
    script = os.path.join(REPO, "pretrain_flm.py")
    if nproc == 1:
        return [sys.executable, script, *args]
    return [*torchrun(nproc), script, *args]


def run_stacks_on_timeout(cmd: list[str], timeout: float = 480, env: dict | None = None) -> tuple[int | None, str]:
    """(exit code, stdout + stderr) of `cmd`. Past `timeout` (below pytest's 600 s, so the test
    reports it) every process under it gets SIGUSR1 (pretrain_flm.py prints its Python stacks:
    faulthandler) and then SIGKILL, so no rank lives on holding a lock or a port (torchrun starts
    its workers in sessions of their own: a process group kill misses them); the code is then None."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env or ENV)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            tree = psutil.Process(proc.pid)
            children = tree.children(recursive=True)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    line = child.cmdline()
                    if os.path.join(REPO, "pretrain_flm.py") in line and "torch.distributed.run" not in line:
                        child.send_signal(signal.SIGUSR1)
            time.sleep(3)
            for p in [tree, *children]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()
            log.write(f"\n[tests] killed after {timeout:.0f} s; the Python stacks above were printed on SIGUSR1\n")
        log.seek(0)
        return code, log.read()


def train(nproc: int, data: dict, out: Path, **flags) -> dict[int, float]:
    """Run pretrain_flm.py (its output kept in out/stdout.log); returns {iteration: train loss}."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    args = train_args(data, metrics_jsonl=str(metrics), **flags)
    code, output = run_stacks_on_timeout(command(nproc, args))
    (out / "stdout.log").write_text(output)
    assert code == 0, output[-8000:]
    return losses(metrics)


def losses(metrics: Path, key: str = "train/loss") -> dict[int, float]:
    """{iteration: value} of one metric from a --metrics-jsonl file."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    return {row["iteration"]: row[key] for row in rows if key in row}
