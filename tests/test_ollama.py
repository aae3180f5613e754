"""Ollama's native API (/api/*) with the official ``ollama`` client and LangChain's ChatOllama.

Real model at temperature 0 and a few tokens per request, so a failure reproduces and the file
stays quick; what only a script can pin down (the exact order of lines, a tool call's
rendering, an error mid-stream, a full queue, cancellation) runs on the scripted backend
behind a real port, with the same client. Every body is validated against schemas/ by the
contract hook (conftest.py), each NDJSON line included.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import numpy as np
import ollama
import pytest
from fastapi.testclient import TestClient

from conftest import MODEL, start_server
from reference_server import Settings, create_app
from reference_server.backends.base import ChoiceDone, Run, TextDelta, Timings, ToolCallDelta
from reference_server.backends.scripted import ScriptedBackend, ScriptedEvents
from reference_server.errors import APIError
from reference_server.protocol_ollama import ChatRequest, Options
from reference_server.serving import ollama as serving

HI = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0, "num_predict": 8}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def client(running) -> ollama.Client:
    return ollama.Client(host=running.root, timeout=120)


def lines(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


# ---- models -------------------------------------------------------------------------------------

def test_tags_show_ps_and_version(client, http):
    [listed] = client.list().models
    assert listed.model == MODEL and listed.size > 0 and len(listed.digest) == 64
    assert (listed.details.format, listed.details.family, listed.details.quantization_level) == ("gguf", "llama", "Q4_1")
    shown = client.show(MODEL)
    assert "<|im_start|>" in shown.template and "tools" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 8192
    [loaded] = client.ps().models
    assert loaded.model == MODEL and loaded.context_length == 2048 and loaded.size_vram == 0
    assert http.get("/api/version").json()["version"].count(".") == 2
    assert client.show(f"{MODEL}:latest").details.family == "llama"  # a name's tag defaults to latest


# ---- chat ---------------------------------------------------------------------------------------

def test_chat_whole_reply_has_counts_and_nanoseconds(client):
    r = client.chat(model=MODEL, messages=HI, options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length") and r.message.role == "assistant"
    assert r.message.content and 0 < r.eval_count <= 8 and r.prompt_eval_count > 5
    assert r.total_duration >= r.eval_duration > 1_000_000  # nanoseconds: more than a millisecond
    assert r.prompt_eval_duration > 1_000_000


def test_chat_streams_by_default_as_ndjson(client, http):
    raw = lines(http.post("/api/chat", json={"model": MODEL, "messages": HI, "options": GREEDY}))
    assert [line["done"] for line in raw] == [False] * (len(raw) - 1) + [True]
    assert "done_reason" not in raw[0] and raw[-1]["eval_count"] == len(raw) - 1 <= 8
    streamed = list(client.chat(model=MODEL, messages=HI, options=GREEDY, stream=True))
    whole = client.chat(model=MODEL, messages=HI, options=GREEDY)
    assert "".join(p.message.content for p in streamed) == "".join(line["message"]["content"] for line in raw)
    assert "".join(p.message.content for p in streamed) == whole.message.content
    assert streamed[-1].done_reason == whole.done_reason and streamed[-1].eval_count == whole.eval_count


def test_options_num_predict_stop_and_seed(client):
    short = client.chat(model=MODEL, messages=HI, options={"temperature": 0, "num_predict": 3})
    assert (short.eval_count, short.done_reason) == (3, "length")
    full = client.chat(model=MODEL, messages=HI, options=GREEDY).message.content
    cut = full.split()[1]  # a word the reply contains: stop there
    stopped = client.chat(model=MODEL, messages=HI, options={**GREEDY, "stop": [cut]})
    assert stopped.done_reason == "stop" and cut not in stopped.message.content
    assert full.startswith(stopped.message.content)
    seeded = [client.chat(model=MODEL, messages=HI, keep_alive="5m",
                          options={"temperature": 1.0, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "seed": 7,
                                   "repeat_penalty": 1.1, "num_ctx": 2048, "num_predict": 8}).message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_format_json_schema_and_json(client):
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "Invent a person: a name and an age."}],
                    format=PERSON, options={"temperature": 0})
    jsonschema.validate(json.loads(r.message.content), PERSON)
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "Reply with a JSON object."}], format="json",
                    options={"temperature": 0, "num_predict": 40})
    if r.done_reason == "stop":  # a JSON object is only complete if the budget allowed it
        assert isinstance(json.loads(r.message.content), dict)


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The city's name
    """
    return "11 degrees celsius"


def test_tools_reply_is_a_valid_call_or_text_and_results_come_back(client):
    """Ollama has no tool_choice: the model decides. Either shape must be valid; then a result turn."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat(model=MODEL, messages=ask, tools=[get_weather], options={"temperature": 0})
    for call in r.message.tool_calls or ():
        assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    assert r.message.tool_calls or r.message.content
    history = [*ask, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": get_weather("Paris"), "tool_name": "get_weather"}]
    answer = client.chat(model=MODEL, messages=history, tools=[get_weather], options=GREEDY)
    assert answer.message.content and not answer.message.tool_calls


def test_logprobs(client):
    r = client.chat(model=MODEL, messages=HI, options={"temperature": 0, "num_predict": 3}, logprobs=True, top_logprobs=2)
    assert len(r.logprobs) == 3 and all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in r.logprobs)
    assert "".join(lp.token for lp in r.logprobs) == r.message.content


def test_empty_request_loads(client, http):
    body = http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0}).json()
    assert (body["done"], body["done_reason"], body["message"]["content"]) == (True, "load", "")
    assert client.generate(model=MODEL).done_reason == "load"


# ---- generate -----------------------------------------------------------------------------------

def test_generate_uses_the_template_unless_raw(client, http):
    templated = client.generate(model=MODEL, prompt="Say hi", system="You are terse.", options=GREEDY)
    assert templated.response and templated.done and templated.prompt_eval_count > 10
    prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    raw = client.generate(model=MODEL, prompt=prompt, raw=True, options=GREEDY)
    tokens = http.post("/tokenize", json={"content": prompt}).json()["tokens"]
    assert raw.prompt_eval_count == len(tokens) and 1 in tokens  # <|im_start|> is one special token, not text
    parts = list(client.generate(model=MODEL, prompt="The sky is", options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].response == "" and all(not p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == client.generate(model=MODEL, prompt="The sky is", options=GREEDY).response
    person = client.generate(model=MODEL, prompt="Invent a person: a name and an age.", format=PERSON,
                             options={"temperature": 0})
    jsonschema.validate(json.loads(person.response), PERSON)


# ---- embeddings ---------------------------------------------------------------------------------

def test_embed_matches_the_openai_endpoint(client, http):
    r = client.embed(model=MODEL, input=["The cat sat.", "A dog ran."])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 576 and r.prompt_eval_count > 4
    assert abs(np.linalg.norm(r.embeddings[0]) - 1) < 1e-3
    same = http.post("/v1/embeddings", json={"model": MODEL, "input": ["The cat sat.", "A dog ran."]}).json()
    assert np.allclose(r.embeddings, [d["embedding"] for d in same["data"]], atol=1e-6)
    assert np.allclose(client.embeddings(model=MODEL, prompt="The cat sat.").embedding, r.embeddings[0], atol=1e-6)
    assert client.embeddings(model=MODEL, prompt="").embedding == []


def test_embed_refuses_an_input_too_long_when_told_not_to_truncate(client):
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=MODEL, input="word " * 3000, truncate=False)  # more than the 2048-token window
    assert refused.value.status_code == 400 and "context length" in refused.value.error


def test_embed_truncates_to_the_window_by_default():
    """Scripted (one token per byte, a 64-token window): embedding 2000 real tokens takes a minute here."""
    class Recording(ScriptedBackend):
        async def embed(self, body):
            self.inputs = body.input
            return await super().embed(body)

    backend = Recording([])
    with TestClient(create_app(Settings(embeddings=False), backend=backend)) as c:
        assert len(c.post("/api/embed", json={"model": "scripted-model", "input": ["x" * 100, "short"]}).json()[
            "embeddings"]) == 2
        assert backend.inputs == ["x" * 63, "short"]  # 63 tokens and room for a BOS
        c.post("/api/embed", json={"model": "scripted-model", "input": "x" * 100, "truncate": False})
        assert backend.inputs == ["x" * 100]


# ---- errors -------------------------------------------------------------------------------------

def test_unknown_model_is_404_in_ollamas_words(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3.2", messages=HI)
    assert (e.value.status_code, e.value.error) == (404, "model 'llama3.2' not found")
    with pytest.raises(ollama.ResponseError) as e:
        client.show("llama3.2")
    assert e.value.status_code == 404


@pytest.mark.parametrize("body, words", [
    ({"messages": HI}, "'model'"),
    ({"model": MODEL, "messages": HI, "options": {"temperature": 5}}, "options.temperature"),
    ({"model": MODEL, "messages": HI, "think": True}, "does not support thinking"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "text only"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "11 degrees"}]}, "no earlier assistant message"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": HI, "options": {"stop": ["a", "b", "c", "d", "e"]}}, "options.stop"),
])
def test_bad_chat_requests_are_400_in_ollamas_envelope(http, body, words):
    r = http.post("/api/chat", json=body)
    assert r.status_code == 400 and list(r.json()) == ["error"] and words in r.json()["error"]


@pytest.mark.parametrize("body, words", [
    ({"prompt": "x", "raw": True, "system": "s"}, "raw mode"),
    ({"prompt": "x", "suffix": "y"}, "fill-in-the-middle"),
    ({"prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ({"prompt": "x", "context": [1, 2]}, "context"),
    ({"prompt": "x", "raw": True, "format": "json"}, "format"),
])
def test_bad_generate_requests_are_400(http, body, words):
    r = http.post("/api/generate", json={"model": MODEL, **body})
    assert r.status_code == 400 and words in r.json()["error"]


def test_options_translate_to_openai_fields():
    assert Options(num_predict=-1, stop="hello world", top_k=5, num_ctx=8192, mirostat=2).sampling() == {
        "stop": "hello world", "top_k": 5}  # no limit; num_ctx and unknown options have no effect
    request = ChatRequest(model=MODEL, messages=HI, format="json", options={"num_predict": 7, "seed": 1},
                          logprobs=True, top_logprobs=3).to_openai(MODEL)
    assert (request.max_tokens, request.seed, request.response_format.type, request.top_logprobs) == (7, 1, "json_object", 3)
    assert request.stream is None  # the router streams NDJSON itself; the engine is not asked to
    history = ChatRequest(model=MODEL, messages=[  # content null, as Go clients may send it; a call without an id
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "done", "tool_name": "f"}]).to_openai(MODEL).messages
    assert (history[0].content, history[0].tool_calls[0].function.arguments) == (None, '{"a": 1}')
    assert history[1].tool_call_id == history[0].tool_calls[0].id


def test_unknown_route_is_404_in_ollamas_envelope(http):
    r = http.post("/api/pull", json={"model": MODEL})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


# ---- LangChain ----------------------------------------------------------------------------------

def test_langchain_chat_ollama(running):
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=running.root, temperature=0, num_predict=8)
    reply = llm.invoke("Say hi")
    assert reply.content and reply.usage_metadata["output_tokens"] <= 8
    assert "".join(chunk.content for chunk in llm.stream("Say hi")) == reply.content


# ---- the same auth, queue and CORS as /v1 ------------------------------------------------------

def test_api_keys_guard_the_ollama_routes(settings, engine):
    secured = start_server(settings.model_copy(update={"api_keys": ["sk-right"]}), engine)
    try:
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=secured.root).list()
        assert e.value.status_code == 401 and "API key" in e.value.error
        ok = ollama.Client(host=secured.root, headers={"Authorization": "Bearer sk-right"})
        assert ok.list().models and ok.chat(model=MODEL, messages=HI, options={"num_predict": 2}).done
        assert not secured.contract.violations
    finally:
        secured.stop()


SCRIPT = [TextDelta(0, "Hel"), TextDelta(0, "lo"), ToolCallDelta(0, 0, "call_a", "get_weather"),
          ToolCallDelta(0, 0, arguments='{"city": '), ToolCallDelta(0, 0, arguments='"Paris"}'),
          ToolCallDelta(0, 1, "call_b", "get_time", "{}"), Timings(5, 0, 12.5, 40.0), ChoiceDone(0, "tool_calls", 9)]


@pytest.fixture
def scripted():
    """The scripted backend behind a real port, for the official client."""
    backend = ScriptedBackend(SCRIPT)
    server = start_server(Settings(embeddings=False), backend)
    yield server, backend
    assert not server.contract.violations, server.contract.violations
    server.stop()


def test_lines_in_order_calls_whole_and_metrics_from_timings(scripted):
    server, _ = scripted
    client = ollama.Client(host=server.root)
    parts = list(client.chat(model="scripted-model", messages=HI, stream=True))
    assert [p.message.content for p in parts] == ["Hel", "lo", "", "", ""]
    assert [[(c.function.name, c.function.arguments) for c in p.message.tool_calls or ()] for p in parts] == [
        [], [], [("get_weather", {"city": "Paris"})], [("get_time", {})], []]
    last = parts[-1]
    assert (last.done, last.done_reason, last.prompt_eval_count, last.eval_count) == (True, "stop", 5, 9)
    assert (last.prompt_eval_duration, last.eval_duration) == (12_500_000, 40_000_000)
    whole = client.chat(model="scripted-model", messages=HI)
    assert whole.message.content == "Hello" and len(whole.message.tool_calls) == 2
    assert client.generate(model="scripted-model", prompt="x").response == "Hello"  # no tools in generate


def test_an_error_mid_stream_is_a_line_and_a_cut_call_is_an_error():
    script = [TextDelta(0, "Hi"), APIError(400, "The grammar ran out.", code="scripted")]
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend(script))) as c:
        streamed = lines(c.post("/api/chat", json={"model": "scripted-model", "messages": HI}))
        whole = c.post("/api/chat", json={"model": "scripted-model", "messages": HI, "stream": False})
    assert streamed == [streamed[0], {"error": "The grammar ran out."}] and whole.status_code == 400
    assert whole.json() == {"error": "The grammar ran out."}
    cut = [ToolCallDelta(0, 0, "call_a", "get_weather", '{"city": "Pa'), ChoiceDone(0, "length", 8)]
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend(cut))) as c:
        r = c.post("/api/chat", json={"model": "scripted-model", "messages": HI, "stream": False})
    assert r.status_code == 400 and "cut off" in r.json()["error"]


def test_full_queue_loading_and_cors_behave_as_on_v1():
    settings = Settings(embeddings=False, cors_origins=["http://localhost:3000"])
    with TestClient(create_app(settings, backend=ScriptedBackend(SCRIPT, busy=True))) as c:
        r = c.post("/api/chat", json={"model": "scripted-model", "messages": HI})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        pre = c.options("/api/chat", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    with TestClient(create_app(settings, backend=ScriptedBackend(SCRIPT, ready=False))) as c:
        r = c.get("/api/tags")
        assert r.status_code == 503 and "loading" in r.json()["error"]


def test_closing_the_stream_closes_the_run():
    async def go():
        events = ScriptedEvents([TextDelta(0, "a"), 30.0, TextDelta(0, "never")])
        stream = serving.stream_lines(Run(events, 1), serving.Reply("m", "chat", 0.0))
        first = await stream.__anext__()
        await asyncio.wait_for(stream.aclose(), 1)
        return first, events

    first, events = asyncio.run(go())
    assert first["message"]["content"] == "a" and events.closed_early
