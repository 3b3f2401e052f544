"""Serve an exported FLM over an OpenAI-compatible HTTP API (`tools/serve.py`).

- `source`: what to serve: an export folder as given, or a checkpoint exported once and cached
  next to it; the refusals an engine needs said up front (head size, growth ramp, tokenizer).
- `vllm_engine`: the command line that starts vLLM's OpenAI server on the export (Transformers
  backend, tensor parallel, CPU or GPU flags).
- `protocol`: OpenAI request parsing and response shapes, shared by the fallback server.
- `server`: the fallback server on the standard library, one model, concurrent requests
  interleaved token by token: `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`,
  streaming (server-sent events).
- `cli`: tools/serve.py's flags, checks and start-up.

An application layer: it builds on flm_ext.export and imports nothing from training code.
"""
from __future__ import annotations


class ServeError(ValueError):
    """A serve request that cannot be done; the message names the flag or path."""


__all__ = ["ServeError"]
