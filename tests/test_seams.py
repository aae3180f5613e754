"""The HTTP and serving layers over the scripted fake backend (backends/scripted.py): no model, milliseconds.

What the real-model tests cannot pin down exactly — interleaved choices, tool-call deltas, a
failure after the stream has started, cancellation — is scripted here. Every body and chunk
is validated against the JSON Schemas, as the real-model tests do.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

import schemas
from reference_server import Settings, create_app
from reference_server.backends.base import ChoiceDone, Run, TextDelta, Timings, TokenLogprob, ToolCallDelta
from reference_server.backends.scripted import ScriptedBackend, ScriptedEvents
from reference_server.errors import APIError
from reference_server.serving import chat
from reference_server.serving.common import Responder

MODEL = "scripted-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


def client(backend: ScriptedBackend) -> TestClient:
    return TestClient(create_app(Settings(embeddings=False), backend=backend))


def frames(text: str) -> list[dict]:
    out = []
    for frame in text.split("\n\n"):
        if frame.startswith("data: ") and frame != "data: [DONE]":
            out.append(json.loads(frame.removeprefix("data: ")))
    assert text.rstrip().endswith("data: [DONE]")
    return out


def valid(name: str, *items: dict) -> None:
    for item in items:
        assert not schemas.validate(item, name), schemas.validate(item, name)


INTERLEAVED = [TextDelta(0, "Hel"), TextDelta(1, "Bon"), TextDelta(0, "lo"), ChoiceDone(1, "length", 2),
               TextDelta(0, "!"), Timings(5, 2, 1.0, 2.0), ChoiceDone(0, "stop", 3)]


def test_interleaved_choices_stream_in_order_with_usage():
    with client(ScriptedBackend(INTERLEAVED)) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "n": 2, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    chunks = frames(r.text)
    valid("chat_completion_chunk", *chunks)
    assert [ch["choices"][0]["delta"].get("role") for ch in chunks[:2]] == ["assistant", "assistant"]
    assert [ch["choices"][0]["index"] for ch in chunks[:2]] == [0, 1]
    body = [(ch["choices"][0]["index"], ch["choices"][0]["delta"].get("content"), ch["choices"][0]["finish_reason"])
            for ch in chunks[2:-1]]
    assert body == [(0, "Hel", None), (1, "Bon", None), (0, "lo", None), (1, None, "length"),
                    (0, "!", None), (0, None, "stop")]
    assert all(ch["usage"] is None for ch in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 2}}
    assert len({ch["id"] for ch in chunks}) == 1


def test_interleaved_choices_collected():
    with client(ScriptedBackend(INTERLEAVED)) as c:
        body = c.post("/v1/chat/completions", json={**CHAT, "n": 2}).json()
    valid("chat_completion_response", body)
    assert [(ch["message"]["content"], ch["finish_reason"]) for ch in body["choices"]] == [
        ("Hello!", "stop"), ("Bon", "length")]
    assert body["usage"]["completion_tokens"] == 5 and body["model"] == MODEL


CALLS = [ToolCallDelta(0, 0, "call_a", "get_weather"), ToolCallDelta(0, 0, arguments='{"city": '),
         ToolCallDelta(0, 0, arguments='"Paris"}'), ToolCallDelta(0, 1, "call_b", "get_time", '{}'),
         ChoiceDone(0, "tool_calls", 12)]


def test_tool_call_deltas_stream_and_collect():
    backend = ScriptedBackend(CALLS)
    with client(backend) as c:
        chunks = frames(c.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
        body = c.post("/v1/chat/completions", json=CHAT).json()
    valid("chat_completion_chunk", *chunks)
    valid("chat_completion_response", body)
    parts = [ch["choices"][0]["delta"]["tool_calls"][0] for ch in chunks if "tool_calls" in ch["choices"][0]["delta"]]
    assert parts[0] == {"index": 0, "id": "call_a", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert parts[1] == {"index": 0, "function": {"arguments": '{"city": '}}
    assert parts[3]["index"] == 1 and parts[3]["function"]["name"] == "get_time"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"]) for t in message["tool_calls"]] == [
        ("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_time", "{}")]


def test_an_error_after_the_stream_started_is_an_event_then_done():
    script = [TextDelta(0, "Hi"), APIError(400, "The grammar ran out.", param="tools", code="scripted")]
    with client(ScriptedBackend(script)) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    chunks = frames(r.text)
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks[-1] == {"error": {"message": "The grammar ran out.", "type": "invalid_request_error",
                                    "param": "tools", "code": "scripted"}}
    valid("error", chunks[-1])


def test_an_unexpected_failure_mid_stream_says_server_error_not_a_traceback():
    with client(ScriptedBackend([TextDelta(0, "Hi"), RuntimeError("boom")])) as c:
        chunks = frames(c.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert chunks[-1]["error"]["type"] == "server_error" and "boom" not in json.dumps(chunks[-1])


def test_a_full_queue_is_a_429_before_the_stream_starts():
    with client(ScriptedBackend(INTERLEAVED, busy=True)) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_not_ready_is_503_and_unknown_model_404():
    with client(ScriptedBackend(INTERLEAVED, ready=False)) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 503
        assert c.get("/health").status_code == 503
    with client(ScriptedBackend(INTERLEAVED)) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]


def test_closing_the_stream_closes_the_backend_run():
    """A client that goes away mid-stream: Starlette closes the generator, which closes the run."""
    async def go():
        events = ScriptedEvents([TextDelta(0, "a"), 30.0, TextDelta(0, "never")])
        stream = chat.stream_chunks(Run(events, 1), Responder.start("chatcmpl", "chat.completion.chunk", MODEL, None),
                                    False)
        first = [await stream.__anext__(), await stream.__anext__()]
        await asyncio.wait_for(stream.aclose(), 1)
        return first, events

    first, events = asyncio.run(go())
    assert first[1]["choices"][0]["delta"] == {"content": "a"}
    assert events.closed_early


def test_logprobs_ride_on_text_deltas():
    lp = TokenLogprob("Hi", -0.5, [72, 105], [TokenLogprob("Hi", -0.5, [72, 105])])
    with client(ScriptedBackend([TextDelta(0, "Hi", [lp]), ChoiceDone(0, "stop", 1)])) as c:
        body = c.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 1}).json()
        streamed = frames(c.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 1,
                                                                "stream": True}).text)
    valid("chat_completion_response", body)
    content = body["choices"][0]["logprobs"]["content"]
    assert content == [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                        "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]
    assert streamed[1]["choices"][0]["logprobs"]["content"] == content


@pytest.mark.parametrize("extra, param", [({"top_logprobs": 2}, "top_logprobs"),
                                          ({"stream_options": {"include_usage": True}}, "stream_options")])
def test_cross_field_rules_name_the_field(extra, param):
    with client(ScriptedBackend(INTERLEAVED)) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert "Value error" not in r.json()["error"]["message"]


def test_completions_use_the_same_responder():
    with client(ScriptedBackend([TextDelta(0, " world"), ChoiceDone(0, "length", 1)])) as c:
        body = c.post("/v1/completions", json={"model": MODEL, "prompt": "Hello"}).json()
        chunks = frames(c.post("/v1/completions", json={"model": MODEL, "prompt": "Hello", "stream": True,
                                                         "stream_options": {"include_usage": True}}).text)
    valid("completion_response", body)
    valid("completion_chunk", *chunks)
    assert body["choices"][0]["text"] == " world" and body["usage"]["total_tokens"] == 6
    assert chunks[-1]["usage"]["completion_tokens"] == 1 and chunks[0]["usage"] is None
