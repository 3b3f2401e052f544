"""The fallback OpenAI-compatible server (`tools/serve.py --engine transformers`), standard library only.

One exported model in this process; each request runs in its own thread with its own KV cache
(flm_ext.export.generation.generate_tokens, the loop behind tools/generate.py, so greedy output is
the same token for token), and a lock around every forward step interleaves concurrent requests
token by token instead of queueing whole requests. Meant for machines without vLLM and for tests:
no batching across requests, so it does not scale like vLLM.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import torch

from flm_ext.export.generation import StreamDecoder, generate_tokens
from flm_ext.serving.protocol import Job, RequestError, Shaper, parse


class Worker:
    """The model, its codec and the lock that serialises forward steps across requests."""

    def __init__(self, model, codec, name: str):
        self.model, self.codec, self.name = model, codec, name
        self.max_model_len = int(model.config.max_position_embeddings)
        self.vocab = int(model.config.vocab_size)
        self.lock = threading.Lock()

    def prompt_ids(self, job: Job) -> list[int]:
        ids = job.prompt_ids if job.prompt_ids is not None else self.codec.encode(job.prompt)
        if not ids:
            raise RequestError("the prompt encodes to no tokens")
        if any(not 0 <= t < self.vocab for t in ids):
            raise RequestError(f"prompt token ids must be in [0, {self.vocab})")
        if job.max_tokens is None:  # a chat request without a limit: up to the context, as vLLM does
            job.max_tokens = max(1, self.max_model_len - len(ids))
        if len(ids) + job.max_tokens > self.max_model_len:
            raise RequestError(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {len(ids) + job.max_tokens} tokens ({len(ids)} in the prompt, "
                               f"{job.max_tokens} for the completion).")
        return ids

    def _entry(self, logits: torch.Tensor, token: int, n: int, as_ids: bool) -> dict:
        logp = torch.log_softmax(logits.float(), dim=-1)
        name = (lambda t: f"token_id:{t}") if as_ids else (lambda t: self.codec.decode([t]))
        top = torch.topk(logp, n) if n > 0 else None
        return {"token": name(token), "logprob": float(logp[token]),
                "top": {} if top is None else {name(int(t)): float(v) for v, t in zip(top.values, top.indices)}}

    def run(self, job: Job, ids: list[int]) -> Iterator[tuple[str, dict | None, str | None]]:
        """(text piece, logprob entry, finish reason or None), one per generated token."""
        eos = None if job.ignore_eos else self.codec.eos
        generator = torch.Generator().manual_seed(job.seed) if job.seed is not None else None
        seen: list[torch.Tensor] = []
        tokens = generate_tokens(self.model, ids, job.max_tokens, job.sampling, eos=eos, generator=generator,
                                 on_logits=seen.append if job.logprobs is not None else None)
        decoder, text, count = StreamDecoder(self.codec), "", 0
        for token in _locked(tokens, self.lock):
            count += 1
            entry = self._entry(seen.pop(), token, job.logprobs, job.ids_as_tokens) if job.logprobs is not None else None
            if eos is not None and token == eos:
                yield decoder.flush(), entry, "stop"
                return
            last = count == job.max_tokens
            piece = decoder.push(token) + (decoder.flush() if last else "")
            text += piece
            hit = min((text.find(s) for s in job.stop if s and s in text), default=-1)
            if hit >= 0:
                yield piece[:max(0, len(piece) - (len(text) - hit))], entry, "stop"
                return
            yield piece, entry, ("length" if last else None)


def _locked(tokens: Iterator[int], lock: threading.Lock) -> Iterator[int]:
    """`tokens` with each step (one forward) taken under `lock`: concurrent requests take turns per token."""
    while True:
        with lock:
            token = next(tokens, None)
        if token is None:
            return
        yield token


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "FallbackServer"

    def log_message(self, format, *args):  # quiet: the tool prints what matters
        pass

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        worker = self.server.worker
        if self.path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": worker.name, "object": "model", "created": self.server.started, "owned_by": "flm_ext",
                 "root": worker.name, "max_model_len": worker.max_model_len}]})
        else:
            self._send_json(404, RequestError(f"no route {self.path}", 404).body())

    def do_POST(self):
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path not in routes:
            return self._send_json(404, RequestError(f"no route {self.path}", 404).body())
        worker = self.server.worker
        try:
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise RequestError("the request body is not JSON") from None
            job = parse(body, chat=routes[self.path], model_name=worker.name)
            ids = worker.prompt_ids(job)
        except RequestError as e:
            return self._send_json(e.status, e.body())
        shaper = Shaper(job, worker.name)
        if job.stream:
            return self._stream(worker, job, ids, shaper)
        text, entries, finish, count = "", [], None, 0
        for piece, entry, finish in worker.run(job, ids):
            text, count = text + piece, count + 1
            if entry is not None:
                entries.append(entry)
        self._send_json(200, shaper.full(text, finish, entries, len(ids), count))

    def _stream(self, worker: Worker, job: Job, ids: list[int], shaper: Shaper) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(obj) -> None:
            self.wfile.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode("utf-8")) + b"\n\n")
            self.wfile.flush()

        try:
            if job.chat:
                event(shaper.chunk(None, first=True))
            for piece, entry, finish in worker.run(job, ids):
                if piece or entry is not None or finish is not None:
                    event(shaper.chunk(piece, finish, [entry] if entry is not None else None))
            event(b"[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: its generator is dropped with this thread


class FallbackServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], worker: Worker):
        import time

        super().__init__(address, Handler)
        self.worker, self.started = worker, int(time.time())


def serve(worker: Worker, host: str, port: int, ready: Callable[[FallbackServer], None] | None = None) -> None:
    """Serve until interrupted."""
    server = FallbackServer((host, port), worker)
    try:
        if ready is not None:
            ready(server)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
