"""A minimal OpenAI-API client on the standard library (loopback tests, the throughput benchmark)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a POST."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stream(url: str, body: dict, timeout: float = 600, on_event=None) -> list:
    """The server-sent events of a streamed request, parsed ("[DONE]" as the string); `on_event`
    sees each as it arrives (time to first token)."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
                if on_event is not None:
                    on_event(events[-1])
    return events


def wait_ready(url: str, timeout: float, alive=lambda: True) -> bool:
    """Poll GET url/health once a second until 200, `alive()` turns false, or `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if get(url + "/health", timeout=5)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(1)
    return False
