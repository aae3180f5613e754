"""Anthropic's Messages API (/v1/messages) with the official ``anthropic`` SDK.

Real model at temperature 0 and a few tokens per request; the scripted backend, behind a real
port, pins the exact event order, errors mid-stream, a full queue and cancellation. The pinned
SDK (2.10) no longer has parameters for temperature, top_p and top_k; the API still takes them,
so the tests send them as ``extra_body``, as a client of that SDK must.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anthropic
import jsonschema
import pytest
from fastapi.testclient import TestClient

from conftest import MODEL, start_server
from reference_server import Settings, create_app
from reference_server.backends.base import ChoiceDone, Run, TextDelta, Timings, ToolCallDelta
from reference_server.backends.scripted import ScriptedBackend, ScriptedEvents
from reference_server.errors import APIError
from reference_server.protocol import content_text
from reference_server.protocol_anthropic import CreateMessageRequest
from reference_server.serving import anthropic as serving

HI = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0.0}
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                            "required": ["city"]}}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(running) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=running.root, api_key="not-needed", max_retries=0, timeout=120)


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of a named-event SSE body."""
    out = []
    for frame in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


# ---- messages -----------------------------------------------------------------------------------

def test_message_has_blocks_stop_reason_and_usage(client):
    m = client.messages.create(model=MODEL, max_tokens=8, system="You are terse.", messages=HI, extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert 0 < m.usage.output_tokens <= 8 and m.usage.input_tokens > 5
    assert m.usage.input_tokens == client.messages.count_tokens(model=MODEL, system="You are terse.",
                                                                messages=HI).input_tokens


def test_stream_is_named_events_in_order(client, http):
    r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 6, "messages": HI, "stream": True, **GREEDY})
    assert r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    assert all(name == data["type"] for name, data in got)
    names = [name for name, _ in got if name != "ping"]
    assert names == ["message_start", "content_block_start", *["content_block_delta"] * (len(names) - 5),
                     "content_block_stop", "message_delta", "message_stop"]
    assert "data: [DONE]" not in r.text
    with client.messages.stream(model=MODEL, max_tokens=6, messages=HI, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = client.messages.create(model=MODEL, max_tokens=6, messages=HI, extra_body=GREEDY)
    assert text == final.content[0].text == whole.content[0].text
    assert (final.stop_reason, final.usage.output_tokens) == (whole.stop_reason, whole.usage.output_tokens)
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_sampling_fields_and_stop_sequences(client):
    full = client.messages.create(model=MODEL, max_tokens=8, messages=HI, extra_body=GREEDY).content[0].text
    cut = full.split()[1]
    m = client.messages.create(model=MODEL, max_tokens=8, messages=HI, stop_sequences=[cut], extra_body=GREEDY)
    assert full.startswith(m.content[0].text) and cut not in m.content[0].text
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", cut)
    with client.messages.stream(model=MODEL, max_tokens=8, messages=HI, stop_sequences=[cut],
                                extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", cut)
    m = client.messages.create(model=MODEL, max_tokens=3, messages=HI,
                               extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 20})
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def test_tool_choice_tool_any_and_none(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    m = client.messages.create(model=MODEL, max_tokens=60, messages=ask, tools=[WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    [call] = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER["input_schema"])
    with client.messages.stream(model=MODEL, max_tokens=60, messages=ask, tools=[WEATHER],
                                tool_choice={"type": "any"}, extra_body=GREEDY) as stream:
        kinds = {event.delta.type for event in stream if event.type == "content_block_delta"}
        final = stream.get_final_message()
    assert kinds == {"input_json_delta"} and final.stop_reason == "tool_use"
    jsonschema.validate(final.content[-1].input, WEATHER["input_schema"])  # the SDK reassembled the pieces
    none = client.messages.create(model=MODEL, max_tokens=8, messages=ask, tools=[WEATHER],
                                  tool_choice={"type": "none"}, extra_body=GREEDY)
    assert [b.type for b in none.content] == ["text"] and none.stop_reason != "tool_use"


TOOL_LOOP = [{"role": "user", "content": "What is the weather in Paris?"},
             {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                               {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                "input": {"city": "Paris"}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                           "content": [{"type": "text", "text": "11 degrees celsius"}]}]}]


def test_tool_result_comes_back_as_an_answer(client):
    m = client.messages.create(model=MODEL, max_tokens=12, messages=TOOL_LOOP, tools=[WEATHER], extra_body=GREEDY)
    assert [b.type for b in m.content] == ["text"] and m.stop_reason != "tool_use"


def test_blocks_become_openais_messages_in_openais_order():
    """A user turn's tool results come first (they answer the calls just before), then its text."""
    turn = {"role": "user", "content": [{"type": "text", "text": "Answer briefly."}, TOOL_LOOP[2]["content"][0]]}
    body = CreateMessageRequest(model=MODEL, max_tokens=5, system=[{"type": "text", "text": "Be kind."}],
                                messages=[*TOOL_LOOP[:2], turn], tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                tools=[WEATHER], stop_sequences=["\n"], top_k=5)
    openai = body.to_chat_request(MODEL)
    assert [(m.role, content_text(m.content)) for m in openai.messages] == [
        ("system", "Be kind."), ("user", "What is the weather in Paris?"), ("assistant", "Let me check."),
        ("tool", "11 degrees celsius"), ("user", "Answer briefly.")]
    assert openai.messages[2].tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert (openai.tool_choice, openai.parallel_tool_calls, openai.max_tokens, openai.stop, openai.top_k) == (
        "required", False, 5, ["\n"], 5)
    assert openai.tools[0].function.parameters == WEATHER["input_schema"]


def test_structured_output(client):
    m = client.messages.create(model=MODEL, max_tokens=80, extra_body=GREEDY,
                               messages=[{"role": "user", "content": "Invent a person: a name and an age."}],
                               output_config={"format": {"type": "json_schema", "schema": PERSON}})
    jsonschema.validate(json.loads(m.content[0].text), PERSON)


def test_count_tokens_counts_tools_too(client):
    bare = client.messages.count_tokens(model=MODEL, messages=HI).input_tokens
    with_tools = client.messages.count_tokens(model=MODEL, messages=HI, tools=[WEATHER]).input_tokens
    assert 0 < bare < with_tools


def test_same_count_and_event_order_as_llama_servers_own_layer(http):
    """llama-server has an Anthropic layer too; tests/fixtures/llamacpp/captured.json holds its answers."""
    captured = json.loads((Path(__file__).parent / "fixtures" / "llamacpp" / "captured.json").read_text("utf-8"))
    [count] = [x for x in captured["exchanges"] if x["path"] == "/v1/messages/count_tokens"]
    assert http.post(count["path"], json=count["request"]).json() == count["response"]  # same template, same tokens
    [stream] = [x for x in captured["exchanges"] if x["path"] == "/v1/messages"]
    ours = [(name, data) for name, data in events(http.post(stream["path"], json=stream["request"]).text)
            if name != "ping"]

    def shape(got):  # the event names, a run of deltas counted once
        return [name for i, (name, _) in enumerate(got) if i == 0 or name != got[i - 1][0]]
    assert shape(ours) == shape(stream["response"])
    assert ours[0][1]["message"]["usage"]["input_tokens"] == stream["response"][0][1]["message"]["usage"]["input_tokens"]


# ---- errors -------------------------------------------------------------------------------------

def test_unknown_model_is_not_found_error(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-local-nonesuch", max_tokens=8, messages=HI)
    assert e.value.type == "not_found_error" and "claude-local-nonesuch" in e.value.api_message


@pytest.mark.parametrize("body, words", [
    ({"messages": HI}, "'max_tokens'"),
    ({"max_tokens": 8, "messages": HI, "temperature": 1.5}, "temperature"),
    ({"max_tokens": 8, "messages": HI, "n": 2}, "Unrecognized request argument"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "text only"),
    ({"max_tokens": 8, "messages": [*HI, {"role": "assistant", "content": "Hel"}]}, "prefill"),
    ({"max_tokens": 8, "messages": HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "Server tools"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]},
     "no earlier assistant message has a tool_use block"),
    ({"max_tokens": 8, "messages": HI, "stop_sequences": list("abcde")}, "stop_sequences"),
])
def test_bad_requests_are_invalid_request_error(http, body, words):
    r = http.post("/v1/messages", json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert words in r.json()["error"]["message"]


def test_x_api_key_and_bearer_both_work(settings, engine):
    secured = start_server(settings.model_copy(update={"api_keys": ["sk-right"]}), engine)
    try:
        with pytest.raises(anthropic.AuthenticationError) as e:
            anthropic.Anthropic(base_url=secured.root, api_key="sk-wrong", max_retries=0).messages.create(
                model=MODEL, max_tokens=2, messages=HI)
        assert e.value.type == "authentication_error"
        by_header = anthropic.Anthropic(base_url=secured.root, api_key="sk-right", max_retries=0)  # x-api-key
        assert by_header.messages.create(model=MODEL, max_tokens=2, messages=HI).usage.output_tokens <= 2
        by_bearer = anthropic.Anthropic(base_url=secured.root, api_key=None, auth_token="sk-right", max_retries=0)
        assert by_bearer.messages.count_tokens(model=MODEL, messages=HI).input_tokens > 0
        assert not secured.contract.violations
    finally:
        secured.stop()


# ---- exact behaviour, scripted -------------------------------------------------------------------

SCRIPT = [TextDelta(0, "Let me check."), ToolCallDelta(0, 0, "call_a", "get_weather"),
          ToolCallDelta(0, 0, arguments='{"city": '), ToolCallDelta(0, 0, arguments='"Paris"}'),
          ToolCallDelta(0, 1, "call_b", "get_time", "{}"), Timings(5, 2, 1.0, 2.0), ChoiceDone(0, "tool_calls", 11)]


@pytest.fixture
def scripted():
    server = start_server(Settings(embeddings=False), ScriptedBackend(SCRIPT))
    yield anthropic.Anthropic(base_url=server.root, api_key="x", max_retries=0)
    assert not server.contract.violations, server.contract.violations
    server.stop()


RAW = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
       "message_stop"}


def test_blocks_open_and_close_in_order(scripted):
    with scripted.messages.stream(model="scripted-model", max_tokens=50, messages=HI) as stream:
        seen = [(e.type, getattr(e, "index", None), getattr(getattr(e, "delta", None), "type", None))
                for e in stream if e.type in RAW]  # the SDK adds convenience events of its own
        final = stream.get_final_message()
    assert seen == [("message_start", None, None),
                    ("content_block_start", 0, None), ("content_block_delta", 0, "text_delta"),
                    ("content_block_stop", 0, None),
                    ("content_block_start", 1, None), ("content_block_delta", 1, "input_json_delta"),
                    ("content_block_delta", 1, "input_json_delta"), ("content_block_stop", 1, None),
                    ("content_block_start", 2, None), ("content_block_delta", 2, "input_json_delta"),
                    ("content_block_stop", 2, None),
                    ("message_delta", None, None), ("message_stop", None, None)]
    whole = scripted.messages.create(model="scripted-model", max_tokens=50, messages=HI)
    for message in (final, whole):
        assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
            ("text", None), ("tool_use", {"city": "Paris"}), ("tool_use", {})]
        assert message.content[0].text == "Let me check." and message.stop_reason == "tool_use"
        assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
            3, 2, 11)  # Anthropic counts cached prompt tokens apart


def test_an_error_mid_stream_is_an_error_event():
    script = [TextDelta(0, "Hi"), APIError(400, "The grammar ran out.", code="scripted")]
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend(script))) as c:
        got = events(c.post("/v1/messages", json={"model": "scripted-model", "max_tokens": 5, "messages": HI,
                                                  "stream": True}).text)
        whole = c.post("/v1/messages", json={"model": "scripted-model", "max_tokens": 5, "messages": HI})
    assert got[-1] == ("error", {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "The grammar ran out."}})
    assert whole.status_code == 400 and whole.json()["error"]["message"] == "The grammar ran out."


def test_full_queue_and_loading_map_to_anthropics_errors():
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend(SCRIPT, busy=True))) as c:
        r = c.post("/v1/messages", json={"model": "scripted-model", "max_tokens": 5, "messages": HI, "stream": True})
        assert (r.status_code, r.json()["error"]["type"], r.headers["retry-after"]) == (429, "rate_limit_error", "1")
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend(SCRIPT, ready=False))) as c:
        r = c.post("/v1/messages/count_tokens", json={"model": "scripted-model", "messages": HI})
        assert (r.status_code, r.json()["error"]["type"]) == (503, "overloaded_error")


def test_closing_the_stream_closes_the_run():
    async def go():
        events = ScriptedEvents([TextDelta(0, "a"), 30.0, TextDelta(0, "never")])
        stream = serving.stream_events(Run(events, 1), serving.Reply.start("m"))
        first = [await stream.__anext__() for _ in range(4)]
        await asyncio.wait_for(stream.aclose(), 1)
        return first, events

    first, events = asyncio.run(go())
    assert [name for name, _ in first] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert events.closed_early
