"""SSE on the wire, and what happens when a client walks away mid-stream."""

from __future__ import annotations

import json
import time

import httpx

from conftest import EOG_TOKENS, MODEL, sse_events

ASK = {"model": MODEL, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 12,
       "temperature": 0, "stream": True}


def test_sse_framing_on_the_wire(http):
    r = http.post("/v1/chat/completions", json={**ASK, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert r.text.endswith("data: [DONE]\n\n")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0]["choices"][0]["delta"] == {}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])  # the field is there, null, until the last chunk
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_stream_validation_errors_are_plain_json_not_sse(http):
    r = http.post("/v1/chat/completions", json={**ASK, "temperature": 9})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "temperature"


def test_disconnect_stops_the_generation_and_the_next_request_is_served(http, running, engine):
    """Read three chunks of a 1500-token generation, hang up, check the model stopped at once."""
    long = {**ASK, "max_tokens": 1500, "temperature": 0.8, "logit_bias": {str(t): -100 for t in EOG_TOKENS}}
    before = dict(engine.stats)
    with httpx.Client(base_url=running.root, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=long) as r:
            data = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data.append(line)
                if len(data) == 3:
                    break
    # the connection is closed; the worker notices at its next token
    deadline = time.monotonic() + 20
    while engine.stats["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats["cancelled"] == before["cancelled"] + 1
    generated = engine.stats["tokens"] - before["tokens"]
    assert generated < 300, f"{generated} tokens generated after the client left"
    ok = http.post("/v1/chat/completions", json={**ASK, "stream": False, "max_tokens": 4})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4


def test_disconnect_cancels_a_non_streamed_generation_too(http, running, engine):
    long = {**ASK, "stream": False, "max_tokens": 1500, "temperature": 0.8,
            "logit_bias": {str(t): -100 for t in EOG_TOKENS}}
    before = dict(engine.stats)
    with httpx.Client(base_url=running.root, timeout=httpx.Timeout(60, read=1.0)) as c:
        try:
            c.post("/v1/chat/completions", json=long)
        except httpx.ReadTimeout:
            pass  # the client gives up after a second and closes the connection
    deadline = time.monotonic() + 20
    while engine.stats["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats["cancelled"] == before["cancelled"] + 1
    assert engine.stats["tokens"] - before["tokens"] < 400
    assert http.get("/health").status_code == 200
