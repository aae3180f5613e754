"""The Responses API (POST /v1/responses and the stored responses) with the official client,
the OpenAI Agents SDK and the real model; refusals and the exact event sequence over raw HTTP
and the scripted backend.

Every body and every event the shared server sends is validated by conftest's contract hook,
against schemas/ and OpenAI's own components. Model prose is never asserted: only shapes,
counts, grammar-forced content and what the server itself decides. Generations are short
(max_output_tokens 16, or a grammar that ends the answer) so the file stays fast.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import openai
import pytest
from fastapi.testclient import TestClient
from jsonschema.exceptions import best_match

import schemas
from conftest import MODEL, sse_events
from reference_server import Settings, create_app
from reference_server.backends.base import ChoiceDone, TextDelta, Timings, TokenLogprob, ToolCallDelta
from reference_server.backends.scripted import ScriptedBackend
from reference_server.errors import APIError
from reference_server.protocol_responses import chat_messages, responses_param
from reference_server.store import ResponseStore, Stored
from schemas import openai_spec

WEATHER = {"type": "function", "name": "get_weather", "description": "Today's weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
COLOR = {"format": {"type": "json_schema", "name": "color", "strict": True, "schema": {
    "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
    "additionalProperties": False}}}
LONG = "Count from 1 to 100, separated by commas."  # far more than 16 tokens: always cut


# ---- the official client, the real model -------------------------------------------------------------

@pytest.fixture(scope="module")
def cut(client: openai.OpenAI) -> Any:
    """One stored response from a list of items, cut at max_output_tokens; several tests read it."""
    return client.responses.create(
        model=MODEL, max_output_tokens=16, temperature=0, instructions="Answer in English.",
        metadata={"lab": "9"}, user="learner-1", safety_identifier="s1",
        input=[{"role": "developer", "content": "Be brief."},
               {"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]},
               {"role": "assistant", "content": "Paris."},
               {"type": "message", "role": "user", "content": LONG}])


def test_create_reports_a_cut_response_as_incomplete(cut: Any) -> None:
    assert cut.object == "response" and cut.id.startswith("resp_") and cut.model == MODEL
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    [message] = cut.output
    assert message.type == "message" and message.role == "assistant" and message.status == "incomplete"
    assert [part.type for part in message.content] == ["output_text"] and cut.output_text
    usage = cut.usage
    assert usage.output_tokens == 16 and usage.total_tokens == usage.input_tokens + 16
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert (cut.instructions, cut.metadata, cut.user, cut.safety_identifier) == (
        "Answer in English.", {"lab": "9"}, "learner-1", "s1")
    assert (cut.temperature, cut.max_output_tokens, cut.tool_choice, cut.tools) == (0, 16, "auto", [])


def test_retrieve_returns_the_stored_response(client: openai.OpenAI, cut: Any) -> None:
    again = client.responses.retrieve(cut.id)
    assert again.model_dump() == cut.model_dump()


def test_input_items_list_every_item_newest_first_in_pages(client: openai.OpenAI, cut: Any,
                                                           http: Any) -> None:
    items = list(client.responses.input_items.list(cut.id, limit=3))  # the client follows has_more
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant"),
                                                ("message", "user"), ("message", "developer")]
    assert items[0].content[0].text == LONG and items[1].content[0].type == "output_text"
    assert len({i.id for i in items}) == 4
    page = http.get(f"/v1/responses/{cut.id}/input_items", params={"order": "asc", "limit": 3}).json()
    assert page["has_more"] is True and [i["role"] for i in page["data"]] == ["developer", "user", "assistant"]
    rest = http.get(f"/v1/responses/{cut.id}/input_items",
                    params={"order": "asc", "after": page["last_id"]}).json()
    assert rest["has_more"] is False and [i["id"] for i in rest["data"]] == [items[0].id]


def test_stream_sends_the_semantic_events_in_order(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Name a color.", max_output_tokens=16, temperature=0,
                                 text=COLOR) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * len(deltas)
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        "response.completed"])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(d.delta for d in deltas) == final.output_text
    assert json.loads(final.output_text)["color"] in ("red", "green", "blue")  # the grammar's promise
    assert final.status == "completed" and final.text.format.type == "json_schema"


def test_raw_stream_names_each_event_and_sends_no_done(http: Any) -> None:
    r = http.post("/v1/responses", json={"model": MODEL, "input": "Name a color.", "text": COLOR,
                                         "max_output_tokens": 16, "temperature": 0, "stream": True,
                                         "store": False})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f.strip()]
    for frame in frames:
        name, data = frame.split("\n", 1)
        assert name == f"event: {json.loads(data.removeprefix('data: '))['type']}"
    assert "[DONE]" not in sse_events(r.text)
    response_id = json.loads(sse_events(r.text)[0])["response"]["id"]
    assert http.get(f"/v1/responses/{response_id}").status_code == 404  # store: false keeps nothing


def test_function_call_round_trip_with_previous_response_id(client: openai.OpenAI, http: Any) -> None:
    with client.responses.stream(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"}, temperature=0) as stream:
        types = [e.type for e in stream]
        first = stream.get_final_response()
    assert types[2] == "response.output_item.added" and "response.function_call_arguments.delta" in types
    assert types[-4:] == ["response.function_call_arguments.delta", "response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert call.id.startswith("fc_") and isinstance(json.loads(call.arguments)["city"], str)

    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=16, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 22 C"}])
    # accepted at all only because the call is in the stored conversation (alone, it is a 400: input[0].call_id)
    assert second.previous_response_id == first.id and second.output[0].type == "message"
    assert second.status in ("completed", "incomplete")
    [item] = client.responses.input_items.list(second.id)
    assert (item.type, item.call_id, item.output) == ("function_call_output", call.call_id, "Sunny, 22 C")

    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    r = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "previous_response_id": second.id})
    assert (r.status_code, r.json()["error"]["param"], r.json()["error"]["code"]) == (
        404, "previous_response_id", "response_not_found")


def test_items_sent_back_by_hand_need_no_store(client: openai.OpenAI) -> None:
    """The stateless way: the client replays the call item and adds its output."""
    call = {"type": "function_call", "call_id": "call_abc", "name": "get_weather",
            "arguments": json.dumps({"city": "Paris"})}
    reply = client.responses.create(
        model=MODEL, store=False, tools=[WEATHER], max_output_tokens=16, temperature=0,
        input=[{"role": "user", "content": "What is the weather in Paris?"}, call,
               {"type": "function_call_output", "call_id": "call_abc", "output": "Sunny, 22 C"}])
    assert reply.output[0].type == "message" and reply.usage.output_tokens <= 16
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)


def test_logprobs_when_included(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input=LONG, max_output_tokens=16, temperature=0,
                                include=["message.output_text.logprobs"], top_logprobs=2)
    logprobs = r.output[0].content[0].logprobs
    assert len(logprobs) == r.usage.output_tokens == 16
    assert "".join(lp.token for lp in logprobs) == r.output_text
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in logprobs)


# ---- the OpenAI Agents SDK ----------------------------------------------------------------------------

def test_agents_sdk_runs_a_function_tool_through_responses(server: str) -> None:
    """The SDK's default model class speaks /v1/responses. A 135M model needs the call forced (the
    SDK resets tool_choice after it, so the second turn answers), and a structured output type
    (text.format json_schema: the grammar ends the answer; the SDK treats a cut answer as an error)."""
    import agents
    from pydantic import BaseModel

    class Weather(BaseModel):
        sky: Literal["sunny", "cloudy", "rainy"]

    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Today's weather in a city."""
        calls.append(city)
        return f"Sunny, 22 C in {city}"

    provider = agents.OpenAIProvider(openai_client=openai.AsyncOpenAI(base_url=server, api_key="x", max_retries=0))
    assert isinstance(provider.get_model(MODEL), agents.OpenAIResponsesModel)  # the default, not chat completions
    agent = agents.Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather], model=MODEL,
                         output_type=Weather, model_settings=agents.ModelSettings(tool_choice="get_weather",
                                                                                temperature=0, max_tokens=64))
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3,
                                           run_config=agents.RunConfig(model_provider=provider)))
    assert len(calls) == 1 and calls[0]
    kinds = [type(item).__name__ for item in result.new_items]
    assert kinds == ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert isinstance(result.final_output, Weather)
    assert len(result.raw_responses) == 2 and all(r.response_id.startswith("resp_") for r in result.raw_responses)


# ---- refusals: a 400 (or 404) naming the field, in OpenAI's envelope --------------------------------

BASE = {"model": MODEL, "input": "Hi"}
REFUSED = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
    ({"tools": [{"type": "custom", "name": "x"}]}, "tools[0].type"),
    ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({"tools": [{**WEATHER, "name": "get weather"}]}, "tools[0].name"),
    ({"tool_choice": {"type": "web_search_preview"}, "tools": [WEATHER]}, "tool_choice.type"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp", "server_label": "x"}]},
      "tools": [WEATHER]}, "tool_choice.tools[0].type"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"prompt": {"id": "pmpt_123"}}, "prompt"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"truncation": "auto"}, "truncation"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"),
    ({"prompt_cache_options": {"ttl": "30m"}}, "prompt_cache_options"),
    ({"include": ["reasoning.encrypted_content"]}, "include[0]"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"include": ["message.output_text.logprobs"], "tools": [WEATHER]}, "include"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object", "required": 3}}}},
     "text.format.schema"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ({"max_output_tokens": 8}, "max_output_tokens"),
    ({"max_output_tokens": 4000}, "max_output_tokens"),
    ({"maxOutputTokens": 16}, "maxOutputTokens"),
    ({"input": None}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "bot", "content": "Hi"}]}, "input[0].role"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input[0].type"),
    ({"input": [{"type": "compaction", "encrypted_content": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input[0].content[0].type"),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                 "environment": "linux"}]}, "tools[0].type"),
    ({"input": [{"type": "function_call_output", "call_id": "call_none", "output": "42"}]}, "input[0].call_id"),
]


@pytest.mark.parametrize("extra, param", REFUSED, ids=[p for _, p in REFUSED])
def test_unsupported_or_invalid_is_a_400_naming_the_field(http: Any, extra: dict[str, Any], param: str) -> None:
    r = http.post("/v1/responses", json={**BASE, **extra})
    error = r.json()["error"]
    assert (r.status_code, error["param"], error["type"]) == (400, param, "invalid_request_error"), error
    assert "Value error" not in error["message"] and "literal_error" not in error["message"]


def test_unknown_model_and_ids_are_404(http: Any) -> None:
    r = http.post("/v1/responses", json={**BASE, "model": "gpt-9"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    for method, path in (("GET", "/v1/responses/resp_nope"), ("DELETE", "/v1/responses/resp_nope"),
                         ("GET", "/v1/responses/resp_nope/input_items")):
        r = http.request(method, path)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "response_not_found"), path
    r = http.post("/v1/responses", json={**BASE, "previous_response_id": "resp_nope"})
    assert (r.status_code, r.json()["error"]["param"]) == (404, "previous_response_id")
    assert http.post("/v1/responses/resp_nope/cancel").status_code == 404  # only background responses cancel


@pytest.mark.parametrize("query, param", [({"limit": 0}, "limit"), ({"limit": "many"}, "limit"),
                                          ({"order": "sideways"}, "order"), ({"after": "msg_nope"}, "after")])
def test_bad_list_queries_name_the_parameter(http: Any, cut: Any, query: dict[str, Any], param: str) -> None:
    r = http.get(f"/v1/responses/{cut.id}/input_items", params=query)
    assert (r.status_code, r.json()["error"]["param"]) == (400, param)


def test_retrieving_as_a_stream_is_refused(http: Any, cut: Any) -> None:
    r = http.get(f"/v1/responses/{cut.id}", params={"stream": "true"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "stream")


# ---- the scripted backend: the exact sequence, in milliseconds ------------------------------------------

SCRIPTED = "scripted-model"
LP = TokenLogprob("Hi", -0.5, [72, 105], [TokenLogprob("Yo", -1.5, [89, 111])])
TEXT_AND_CALLS = [TextDelta(0, "Hi", [LP]), TextDelta(0, "!"), ToolCallDelta(0, 0, "call_a", "get_weather"),
                  ToolCallDelta(0, 0, arguments='{"city": '), ToolCallDelta(0, 0, arguments='"Paris"}'),
                  ToolCallDelta(0, 1, "call_b", "get_time", "{}"), ChoiceDone(0, "tool_calls", 12),
                  Timings(5, 3, 1.0, 2.0)]


def scripted(script: Any, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(embeddings=False, **settings), backend=ScriptedBackend(script)),
                      raise_server_exceptions=False)  # a 500 is an answer to check, not a test crash


def events_of(text: str) -> list[dict[str, Any]]:
    out = [json.loads(data) for data in sse_events(text)]
    for event in out:  # the same two validations the contract hook makes on the real server
        assert schemas.validate(event, "response_stream_event") == [], event
        error = best_match(openai_spec.validators()["response_stream_event"].iter_errors(event))
        assert error is None, f"{event['type']}: {error.message[:300]}"
    return out


def test_event_sequence_for_text_then_two_calls() -> None:
    with scripted(TEXT_AND_CALLS) as c:
        events = events_of(c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "stream": True}).text)
        stored = c.get(f"/v1/responses/{events[0]['response']['id']}").json()
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.content_part.added", 0),
        ("response.output_text.delta", 0), ("response.output_text.delta", 0), ("response.output_text.done", 0),
        ("response.content_part.done", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1), ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2), ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2), ("response.output_item.done", 2),
        ("response.completed", None)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and "usage" not in events[0]["response"]
    assert events[2]["item"] == {"type": "message", "id": events[3]["item_id"], "status": "in_progress",
                                 "role": "assistant", "content": []}
    assert events[6]["text"] == "Hi!" and events[12] | {"sequence_number": 0} == {
        "type": "response.function_call_arguments.done", "item_id": events[9]["item"]["id"], "output_index": 1,
        "name": "get_weather", "arguments": '{"city": "Paris"}', "sequence_number": 0}
    final = events[-1]["response"]
    assert final == stored
    assert [(i["type"], i["status"]) for i in final["output"]] == [
        ("message", "completed"), ("function_call", "completed"), ("function_call", "completed")]
    assert [i.get("call_id") for i in final["output"]] == [None, "call_a", "call_b"]
    assert final["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0},
                              "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 17}


def test_collected_body_is_what_the_stream_ends_with() -> None:
    with scripted(TEXT_AND_CALLS) as c:
        body = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi",
                                             "include": ["message.output_text.logprobs"], "top_logprobs": 1}).json()
        streamed = events_of(c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "stream": True,
                                                           "include": ["message.output_text.logprobs"],
                                                           "top_logprobs": 1}).text)
    assert schemas.validate(body, "response") == []
    final = streamed[-1]["response"]
    strip = lambda r: [{k: v for k, v in i.items() if k != "id"} for i in r["output"]]  # noqa: E731
    assert strip(body) == strip(final) and body["usage"] == final["usage"]
    part = body["output"][0]["content"][0]
    assert part["logprobs"] == [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                                 "top_logprobs": [{"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]}]
    assert streamed[4]["logprobs"] == [{"token": "Hi", "logprob": -0.5,
                                        "top_logprobs": [{"token": "Yo", "logprob": -1.5}]}]


def test_a_failure_mid_stream_is_an_error_event_then_response_failed() -> None:
    script = [TextDelta(0, "Hel"), APIError(500, "The model stopped.", type="server_error", code="scripted")]
    with scripted(script) as c:
        r = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "stream": True})
        events = events_of(r.text)
        stored = c.get(f"/v1/responses/{events[0]['response']['id']}").json()
    assert r.status_code == 200
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                           "response.content_part.added", "response.output_text.delta", "error",
                                           "response.failed"]
    assert [e["sequence_number"] for e in events] == list(range(7))
    assert events[5] == {"type": "error", "code": "scripted", "message": "The model stopped.", "param": None,
                         "sequence_number": 5}
    failed = events[6]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "The model stopped."}
    assert stored == failed


def test_an_unexpected_failure_says_server_error_not_a_traceback() -> None:
    with scripted([TextDelta(0, "Hel"), RuntimeError("secret detail")]) as c:
        events = events_of(c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "stream": True}).text)
        r = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi"})
    assert events[-2]["code"] == "server_error" and "secret" not in json.dumps(events)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"  # not streamed: a plain 500


def test_a_cut_is_incomplete_and_an_empty_generation_still_has_a_message() -> None:
    with scripted(lambda body: [TextDelta(0, "Hel"), ChoiceDone(0, "length", 16)] if body.temperature
                  else [ChoiceDone(0, "stop", 1)]) as c:
        cut = events_of(c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "stream": True,
                                                      "temperature": 1}).text)
        empty = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "temperature": 0}).json()
    assert cut[-1]["type"] == "response.incomplete"
    assert cut[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut[-2]["item"]["status"] == "incomplete" and cut[-1]["response"]["completed_at"] is None
    assert empty["status"] == "completed" and empty["output"][0]["content"][0]["text"] == ""


def test_the_store_is_bounded_and_least_recently_used_goes_first() -> None:
    with scripted([TextDelta(0, "ok"), ChoiceDone(0, "stop", 1)], responses_store_size=2) as c:
        ids = [c.post("/v1/responses", json={"model": SCRIPTED, "input": f"Hi {i}"}).json()["id"] for i in range(2)]
        assert c.get(f"/v1/responses/{ids[0]}").status_code == 200  # now the most recently used
        ids.append(c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi 2"}).json()["id"])
        assert [c.get(f"/v1/responses/{i}").status_code for i in ids] == [200, 404, 200]


def test_previous_response_id_sends_the_whole_conversation_but_not_the_instructions() -> None:
    seen: list[Any] = []
    with scripted(lambda body: seen.append(body) or [TextDelta(0, "ok"), ChoiceDone(0, "stop", 1)]) as c:
        first = c.post("/v1/responses", json={"model": SCRIPTED, "input": "One", "instructions": "Be brief."}).json()
        second = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Two",
                                               "previous_response_id": first["id"]}).json()
        third = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Three", "instructions": "Be kind.",
                                              "previous_response_id": second["id"]}).json()
    assert third["previous_response_id"] == second["id"]
    assert [(m.role, m.content) for m in seen[2].messages] == [
        ("system", "Be kind."), ("user", "One"), ("assistant", "ok"), ("user", "Two"), ("assistant", "ok"),
        ("user", "Three")]


ADVISORY = {"user": "u1", "safety_identifier": "s1", "prompt_cache_key": "k1", "max_tool_calls": 3,
            "service_tier": "auto", "prompt_cache_retention": "in_memory", "truncation": "disabled",
            "text": {"verbosity": "medium"}, "stream_options": {"include_obfuscation": True}, "stream": True,
            "reasoning": {"effort": None}, "background": False, "include": []}


def test_advisory_fields_are_accepted_and_echoed() -> None:
    with scripted([TextDelta(0, "ok"), ChoiceDone(0, "stop", 1)]) as c:
        events = events_of(c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", **ADVISORY}).text)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert {k: final[k] for k in ("user", "safety_identifier", "prompt_cache_key", "max_tool_calls")} == {
        "user": "u1", "safety_identifier": "s1", "prompt_cache_key": "k1", "max_tool_calls": 3}
    assert (final["service_tier"], final["truncation"], final["reasoning"]) == ("default", "disabled", None)


@pytest.mark.parametrize("fields, chat", [
    ({"tool_choice": "none"}, {"tool_choice": "none"}),
    ({"tool_choice": "required"}, {"tool_choice": "required"}),
    ({"tool_choice": {"type": "function", "name": "get_weather"}},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function",
                                                                              "name": "get_weather"}]}},
     {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
         {"type": "function", "function": {"name": "get_weather"}}]}}}),
    ({"parallel_tool_calls": False}, {"parallel_tool_calls": False}),
    ({"text": {"format": {"type": "text"}}}, {"response_format": {"type": "text"}}),
    ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
    ({"text": COLOR}, {"response_format": {"type": "json_schema", "json_schema": {
        "name": "color", "schema": COLOR["format"]["schema"], "strict": True}}}),
    ({"max_output_tokens": 20, "temperature": 0.5, "top_p": 0.9},
     {"max_completion_tokens": 20, "temperature": 0.5, "top_p": 0.9}),
])
def test_the_chat_request_the_backend_gets(fields: dict[str, Any], chat: dict[str, Any]) -> None:
    """Tool and format modes are chat's (chapter 7), reached by translation: each one lands where chat has it."""
    seen: list[Any] = []
    with scripted(lambda body: seen.append(body) or [ChoiceDone(0, "stop", 1)]) as c:
        r = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi", "tools": [WEATHER], **fields})
    assert r.status_code == 200, r.json()
    sent = seen[0].model_dump(exclude_none=True, by_alias=True)
    assert {k: sent[k] for k in chat} == chat
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["parameters"],
        "strict": True}}]


def test_the_key_is_required_when_configured() -> None:
    with scripted([ChoiceDone(0, "stop", 1)], api_keys=["k"]) as c:
        assert c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi"}).status_code == 401
        ok = c.post("/v1/responses", json={"model": SCRIPTED, "input": "Hi"}, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200


# ---- pure units ---------------------------------------------------------------------------------------

def test_calls_in_a_row_share_one_assistant_message() -> None:
    def call(i: int) -> dict[str, Any]:
        return {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"}
    messages = chat_messages([
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
        call(1), call(2),
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "2"}]}])
    assert [(m["role"], m["content"], [c["id"] for c in m.get("tool_calls", [])]) for m in messages] == [
        ("user", "Hi", []), ("assistant", "Let me see.", ["c1", "c2"]), ("tool", "1", []), ("tool", "2", [])]


@pytest.mark.parametrize("chat, responses", [
    ("messages", "input"), ("max_completion_tokens", "max_output_tokens"), ("max_tokens", "max_output_tokens"),
    ("logprobs", "include"), ("tools[1].function.parameters", "tools[1].parameters"),
    ("tools[0].function.name", "tools[0].name"), ("response_format.json_schema.schema", "text.format.schema"),
    ("tool_choice.allowed_tools.tools[2].function.name", "tool_choice.tools[2].name"),
    ("tool_choice", "tool_choice"), (None, None)])
def test_backend_params_are_renamed_to_the_fields_the_client_sent(chat: str | None, responses: str | None) -> None:
    assert responses_param(chat) == responses


def test_store_unit() -> None:
    store = ResponseStore(2)
    for i in range(3):
        store.put(Stored({"id": f"r{i}"}, [], ()))
    assert (len(store), store.get("r0"), store.delete("r1"), store.delete("r1")) == (2, None, True, False)
