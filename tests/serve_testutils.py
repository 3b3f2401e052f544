"""Helpers for the serving tests and benchmark: start tools/serve.py, wait for /health (bounded),
call the OpenAI endpoints over loopback with the standard library."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flm_ext.serving.client import get, post, stream, wait_ready  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


class Server:
    """tools/serve.py in a subprocess (its output in `log`), ready when /health answers."""

    def __init__(self, args: list[str], port: int, log: Path, env: dict | None = None, start_timeout: float = 900):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "serve.py"), *args, "--port", str(port)],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env or ENV,
                                     stdin=subprocess.DEVNULL)
        if not wait_ready(self.url, start_timeout, alive=lambda: self.proc.poll() is None):
            self.close()
            raise RuntimeError(f"serve.py not ready (exit code {self.proc.returncode}):\n{log.read_text()[-4000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=60)

    def completions(self, prompts: list[str], max_tokens: int, name: str | None = None) -> list[dict]:
        """Greedy /v1/completions for all prompts at once (one thread each), token ids included."""
        def one(prompt: str) -> dict:
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1,
                    "return_tokens_as_token_ids": True}
            if name:
                body["model"] = name
            status, out = post(self.url + "/v1/completions", body)
            assert status == 200, out
            return out

        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(one, prompts))


def token_ids(response: dict) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in response["choices"][0]["logprobs"]["tokens"]]
