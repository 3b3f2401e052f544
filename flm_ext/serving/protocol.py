"""The OpenAI completions / chat API as the fallback server speaks it (the subset vLLM serves too).

Requests are checked once into a `Job` (prompt text or ids, sampling, stop strings, stream,
logprobs); responses and stream chunks are built here, so the server only moves bytes.
`CHAT_TEMPLATE` is the plain template both engines render chat messages with (an FLM is a base
model: no chat format was trained), so a chat request gives the same prompt on either.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from flm_ext.export.generation import Sampling

# "Role: content" lines, then "Assistant:" (single-line form: vLLM takes it as --chat-template).
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
                 "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


class RequestError(ValueError):
    """A bad request: HTTP `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status

    def body(self) -> dict:
        kind = "NotFoundError" if self.status == 404 else "BadRequestError"
        return {"error": {"message": str(self), "type": kind, "code": self.status}}


@dataclass
class Job:
    """One generation request, checked."""

    chat: bool
    prompt: str | None
    prompt_ids: list[int] | None
    max_tokens: int | None
    sampling: Sampling
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    logprobs: int | None = None
    ids_as_tokens: bool = False
    ignore_eos: bool = False


def render_chat(messages) -> str:
    import jinja2

    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RequestError("each message needs a string 'role' and a string 'content'")
    return jinja2.Environment().from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def _number(body: dict, key: str, default, kind=float, low=None, high=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"'{key}' must be a{'n integer' if kind is int else ' number'}, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"'{key}' {value} is out of range [{low}, {high}]")
    return kind(value)


def parse(body, *, chat: bool, model_name: str) -> Job:
    """A Job from a request body (RequestError naming the field on bad input)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("model") not in (None, model_name):
        raise RequestError(f"The model `{body['model']}` does not exist; this server serves `{model_name}`", 404)
    if _number(body, "n", 1, int, 1) != 1:
        raise RequestError("'n' must be 1 on this server")
    prompt, ids = None, None
    if chat:
        prompt = render_chat(body.get("messages"))
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], (str, list)):
            raw = raw[0]
        if isinstance(raw, str) and raw:
            prompt = raw
        elif isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
            ids = list(raw)
        else:
            raise RequestError("'prompt' must be a non-empty string or list of token ids (one prompt per request)")
    temperature = _number(body, "temperature", 1.0, float, 0.0)
    sampling = Sampling(greedy=temperature == 0.0, temperature=temperature or 1.0,
                        top_k=max(0, _number(body, "top_k", 0, int, -1)), top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0))
    if not sampling.greedy and sampling.top_p == 0.0:
        raise RequestError("'top_p' must be > 0")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of strings")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, None if chat else 16, int, 1)  # chat: up to the context (Worker)
    logprobs = body.get("top_logprobs") if chat else body.get("logprobs")
    if chat and body.get("logprobs") and logprobs is None:
        logprobs = 0
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise RequestError("'logprobs' must be a non-negative integer")
    return Job(chat=chat, prompt=prompt, prompt_ids=ids, max_tokens=max_tokens, sampling=sampling,
               seed=_number(body, "seed", None, int), stop=stop, stream=bool(body.get("stream", False)),
               logprobs=logprobs if (not chat or body.get("logprobs")) else None,
               ids_as_tokens=bool(body.get("return_tokens_as_token_ids", False)),
               ignore_eos=bool(body.get("ignore_eos", False)))


class Shaper:
    """Response bodies and stream chunks for one request."""

    def __init__(self, job: Job, model_name: str):
        self.job, self.model = job, model_name
        self.id = ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.job.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def logprobs_field(self, entries: list[dict]):
        """entries: {"token", "logprob", "top": {token: logprob}} per generated token."""
        if self.job.logprobs is None:
            return None
        if self.job.chat:
            return {"content": [{"token": e["token"], "logprob": e["logprob"],
                                 "top_logprobs": [{"token": t, "logprob": lp} for t, lp in e["top"].items()]}
                                for e in entries]}
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [e["top"] for e in entries]}

    def full(self, text: str, finish: str, entries: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
        if self.job.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=self.logprobs_field(entries), finish_reason=finish)
        return {**self._envelope(False), "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def chunk(self, text: str | None, finish: str | None = None, entries: list[dict] | None = None,
              first: bool = False) -> dict:
        if self.job.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice.update(logprobs=self.logprobs_field(entries or []) if entries else None, finish_reason=finish)
        return {**self._envelope(True), "choices": [choice]}
