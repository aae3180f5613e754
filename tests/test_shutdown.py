"""Graceful shutdown, through the real command (``python -m reference_server``: a supervisor that
forwards SIGTERM to the server, its child; supervise.py).

On SIGTERM the server stops accepting connections, lets what is in flight run for
``--shutdown-grace`` seconds, ends what is left in the protocol's own words (a stream: an error
event and ``[DONE]``; a request still queued: a 503 envelope), and exits 0.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from conftest import EOG_TOKENS, MODEL

GRACE = 6.0
NO_EOG = {str(t): -100 for t in EOG_TOKENS}  # generations run to max_tokens


def start(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "reference_server", "--port", "0", "--n-ctx", "2048",
                             "--no-embeddings", "--threads", "1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, deadline = "", time.monotonic() + 120
    while "print(reply" not in out and time.monotonic() < deadline and proc.poll() is None:
        out += proc.stdout.readline()
    match = re.search(r'base_url="(http://127\.0\.0\.1:\d+)/v1"', out)
    assert match, f"the server did not start: {out}{proc.stderr.read() if proc.poll() is not None else ''}"
    return proc, match.group(1)


def stream(root: str, max_tokens: int, out: dict[str, Any], started: threading.Event) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "stream": True, "logit_bias": NO_EOG}
    events: list[str] = []
    with httpx.stream("POST", root + "/v1/chat/completions", json=body, timeout=120) as r:
        out["status"] = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if '"content":"' in line and not started.is_set():  # generating, not just queued
                    started.set()
    out["events"], out["ended"] = events, time.monotonic()


def responses_stream(root: str, out: dict[str, Any]) -> None:
    """The Responses API ends a failed stream its own way: an ``error`` event, then ``response.failed``."""
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 200, "stream": True}
    events: list[tuple[str, dict]] = []
    with httpx.stream("POST", root + "/v1/responses", json=body, timeout=120) as r:
        out["status"], name = r.status_code, ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    out["events"] = events


def plain(root: str, out: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "logit_bias": NO_EOG}
    r = httpx.post(root + "/v1/chat/completions", json=body, timeout=120)
    out["status"], out["body"], out["ended"] = r.status_code, r.json(), time.monotonic()


def test_sigterm_lets_streams_finish_within_the_grace_then_ends_the_rest_and_exits_0() -> None:
    proc, root = start("--shutdown-grace", str(GRACE), "--deterministic")  # the serial queue: a known order
    try:
        short, long, queued, other = {}, {}, {}, {}
        short_started, long_started = threading.Event(), threading.Event()
        clients = [threading.Thread(target=stream, args=(root, 12, short, short_started)),
                   threading.Thread(target=stream, args=(root, 1900, long, long_started)),
                   threading.Thread(target=plain, args=(root, queued)),
                   threading.Thread(target=responses_stream, args=(root, other))]
        for client in clients:  # in this order through the serial queue: short, long, then the waiting ones
            client.start()
            time.sleep(0.3)
        assert long_started.wait(120), "the long stream never started generating"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # to the supervisor, which forwards it

        time.sleep(1.0)
        try:
            httpx.get(root + "/health", timeout=2)
            refused = False
        except httpx.TransportError:
            refused = True
        assert refused, "the server still accepts connections after SIGTERM"

        for client in clients:
            client.join(timeout=GRACE + 30)
        assert proc.wait(timeout=30) == 0
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The short stream finished normally (it was done before or during the grace period).
    assert short["status"] == 200 and short["events"][-1] == "[DONE]"
    assert json.loads(short["events"][-2])["choices"][0]["finish_reason"] == "length"
    # The long one ran for the grace period, then ended with an error event and [DONE].
    assert long["status"] == 200 and long["events"][-1] == "[DONE]"
    error = json.loads(long["events"][-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    assert GRACE - 0.5 <= long["ended"] - signalled <= GRACE + 5
    assert sum('"content":"' in e for e in long["events"]) > 1
    # The request that waited behind it got a 503 in the envelope, at the same moment.
    assert queued["status"] == 503 and queued["body"]["error"]["code"] == "server_shutting_down"
    # A Responses stream that was waiting: its protocol's error event, then response.failed.
    assert other["status"] == 200 and [name for name, _ in other["events"]][-2:] == ["error", "response.failed"]
    assert other["events"][-2][1]["code"] == "server_shutting_down"
    assert exited - signalled <= GRACE + 8
    assert "Traceback" not in proc.stderr.read()
