"""The package the solutions build, as a learner who finished the seven labs has it on disk.

``coursekit export`` writes the solutions' ``%%export`` cells into a temporary ``myserver/``
(what running them writes: tests/test_labs.py proves it), then ``python -m myserver`` runs as a
real process with an API key, and the official ``openai`` client talks to it: models, chat
(streamed and not), legacy completions, embeddings in both encodings, a forced tool call,
structured output, errors in the envelope, and lab 9's Responses API. Every body and chunk is checked against
``schemas/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import openai
import pytest

import schemas
from coursekit import export
from coursekit.model import MODEL_ID

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-myserver"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def valid(item: object, schema: str) -> None:
    problems = schemas.validate(item, schema)
    assert not problems, f"not a valid {schema}: {problems}"


def serve_package(root: Path, **environ: str) -> Iterator[str]:
    """``python -m myserver`` from the package in ``root``, with an API key; yields its base URL."""
    log = root / "server.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), str(ROOT),
                                                                   os.environ.get("PYTHONPATH")) if p), **environ)
    env.pop("COURSE_BASE_URL", None)  # local mode: the package's own engine, llama.cpp
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "myserver", "--port", "0", "--threads", "1",
                                    "--api-key", KEY], stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"on (http://\S+/v1)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        base_url = found.group(1)
        while True:
            try:
                if httpx.get(base_url[:-3] + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def package_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learner")
    written = export.export_notebooks(sorted((ROOT / "solutions").glob("*.ipynb")), root)
    assert {p.name for p in written} >= {"app.py", "engine.py", "remote.py", "worker.py", "chat.py", "tools.py"}
    return root


@pytest.fixture(scope="module")
def learner_server(package_root: Path) -> Iterator[str]:
    yield from serve_package(package_root)


@pytest.fixture(scope="module")
def client(learner_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=learner_server, api_key=KEY, max_retries=0, timeout=120)


def raw(client: openai.OpenAI, path: str, body: dict) -> dict:
    """The JSON body as sent, for the schemas (the SDK's objects hide missing and extra fields)."""
    r = httpx.post(f"{client.base_url}{path.lstrip('/')}", json=body,
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"


def test_chat(client: openai.OpenAI) -> None:
    body = raw(client, "/chat/completions", {"model": MODEL_ID, "messages": HELLO, "max_tokens": 8, "temperature": 0})
    valid(body, "chat_completion_response")
    reply = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == body["choices"][0]["message"]["content"]
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    stopped = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=8, temperature=0,
                                             stop=[reply.choices[0].message.content.split()[1]])
    assert stopped.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content.startswith(stopped.choices[0].message.content)


def test_chat_stream(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=8, temperature=0)
    with httpx.stream("POST", f"{client.base_url}chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL_ID, "messages": HELLO, "max_tokens": 8, "temperature": 0, "stream": True,
                            "stream_options": {"include_usage": True}}, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        valid(chunk, "chat_completion_chunk")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain.usage.model_dump(exclude_none=True)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain.choices[0].message.content
    sdk = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in sdk if c.choices) == text


def test_completions(client: openai.OpenAI) -> None:
    request = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    body = raw(client, "/completions", request)
    valid(body, "completion_response")
    streamed = client.completions.create(**request, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == body["choices"][0]["text"]


def test_embeddings_in_both_encodings(client: openai.OpenAI) -> None:
    texts = ["The cat sat on the mat.", "The stock market fell sharply today."]
    body = raw(client, "/embeddings", {"model": MODEL_ID, "input": texts, "encoding_format": "base64"})
    valid(body, "embedding_response")
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    floats = client.embeddings.create(model=MODEL_ID, input=texts, encoding_format="float")
    assert np.allclose(decoded, [d.embedding for d in floats.data], atol=1e-6)
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-3)
    assert floats.usage.prompt_tokens > 10


def test_forced_tool_call_and_structured_output(client: openai.OpenAI) -> None:
    request = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 32,
               "temperature": 0, "tools": [WEATHER],
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    body = raw(client, "/chat/completions", request)
    valid(body, "chat_completion_response")
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert body["choices"][0]["finish_reason"] == "tool_calls" and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    streamed = list(client.chat.completions.create(**{k: v for k, v in request.items() if k != "model"},
                                                   model=MODEL_ID, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert json.loads("".join(d[0].function.arguments or "" for d in deltas))["city"]
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Is the sky blue?"}],
                                           max_tokens=16, temperature=0, response_format={
                                               "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_errors_in_the_envelope(client: openai.OpenAI, learner_server: str) -> None:
    r = httpx.post(f"{learner_server}/chat/completions", json={"model": MODEL_ID, "messages": HELLO})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    valid(r.json(), "error")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=5000)
    assert (info.value.code, info.value.param) == ("context_length_exceeded", "max_tokens")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=HELLO, temperature="hot")  # type: ignore[arg-type]
    assert info.value.param == "temperature"
    r = httpx.get(f"{learner_server}/engines", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404
    valid(r.json(), "error")


def test_responses_lab_9(client: openai.OpenAI, learner_server: str) -> None:
    """Lab 9's /v1/responses on the same package: created, streamed, continued, retrieved, refused."""
    from schemas import openai_spec

    def both(item: dict, name: str) -> None:
        valid(item, name)
        assert openai_spec.problems(item, name) == [], (name, openai_spec.problems(item, name))

    body = raw(client, "/responses", {"model": MODEL_ID, "input": "What is the capital of France?",
                                      "instructions": "Be brief.", "max_output_tokens": 16, "temperature": 0})
    both(body, "response")
    with httpx.stream("POST", f"{learner_server}/responses", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL_ID, "input": "Hi", "max_output_tokens": 16, "stream": True,
                            "store": False}, timeout=120) as response:
        frames = [f for f in response.read().decode().split("\n\n") if f.strip()]
    events = []
    for frame in frames:
        name, data = frame.split("\n")
        events.append(json.loads(data.removeprefix("data: ")))
        assert name == f"event: {events[-1]['type']}"
        both(events[-1], "response_stream_event")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    second = client.responses.create(model=MODEL_ID, input="And of Italy?", previous_response_id=body["id"],
                                      max_output_tokens=16, temperature=0)
    assert second.usage.input_tokens > body["usage"]["input_tokens"]  # the earlier turn was read again
    assert client.responses.retrieve(body["id"]).model_dump(exclude_unset=True)["output"] == body["output"]
    with pytest.raises(openai.NotFoundError):  # store: false kept nothing
        client.responses.retrieve(events[0]["response"]["id"])
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL_ID, input="Hi", tools=[{"type": "web_search"}])
    assert info.value.param == "tools"  # refused by name, never ignored


def test_ollama_routes_through_the_official_client(client: openai.OpenAI, learner_server: str) -> None:
    """Lab 10: Ollama's /api/chat, /api/tags and error envelope, on the same engine as /v1."""
    import ollama

    root = learner_server[: -len("/v1")]
    auth = {"Authorization": f"Bearer {KEY}"}
    speaker = ollama.Client(host=root, headers=auth, timeout=120)
    assert [m.model for m in speaker.list().models] == [MODEL_ID]
    greedy = {"temperature": 0, "num_predict": 8}
    whole = speaker.chat(model=MODEL_ID, messages=HELLO, options=greedy)
    plain = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=8, temperature=0)
    assert whole.message.content == plain.choices[0].message.content
    assert (whole.prompt_eval_count, whole.eval_count, whole.done_reason) == (
        plain.usage.prompt_tokens, plain.usage.completion_tokens, plain.choices[0].finish_reason)
    assert whole.eval_duration > 1_000_000  # nanoseconds: eight tokens take more than a millisecond
    r = httpx.post(f"{root}/api/chat", json={"model": MODEL_ID, "messages": HELLO, "options": greedy},
                   headers=auth, timeout=120)  # no "stream": Ollama streams
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    for line in lines:
        valid(line, "ollama_chat_response")
    assert [line["done"] for line in lines][-1] is True
    assert "".join(line["message"]["content"] for line in lines) == whole.message.content
    with pytest.raises(ollama.ResponseError) as info:
        speaker.chat(model="llama3.2", messages=HELLO)
    assert (info.value.status_code, info.value.error) == (404, "model 'llama3.2' not found")
    r = httpx.get(f"{root}/api/tags")
    assert r.status_code == 401
    valid(r.json(), "ollama_error")


def test_the_batching_engine_keeps_every_feature(package_root: Path) -> None:
    """Lab 8: with MYSERVER_PARALLEL=4 the package decodes requests together (its BatchingEngine);
    what labs 3 to 7 built must still hold: streams and stop strings, a grammar per sequence (a forced
    tool call, structured output, side by side), embeddings, and answers that do not cross."""
    from concurrent.futures import ThreadPoolExecutor

    for base_url in serve_package(package_root, MYSERVER_PARALLEL="4"):
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)
        tool = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 32,
                "temperature": 0, "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
        schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                  "required": ["answer"], "additionalProperties": False}
        jobs = {
            "tool": lambda: raw(client, "/chat/completions", tool),
            "json": lambda: client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=16,
                temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}),
            "count": lambda: client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
                max_tokens=12, temperature=0, stream=True, stop=["3"]),
            "days": lambda: client.chat.completions.create(
                model=MODEL_ID, max_tokens=12, temperature=0, messages=[{"role": "user", "content":
                    "Write the days of the week, starting with Monday, separated by commas."}]),
        }
        with ThreadPoolExecutor(len(jobs)) as pool:
            done = dict(zip(jobs, pool.map(lambda job: job(), jobs.values())))
        call = done["tool"]["choices"][0]["message"]["tool_calls"][0]
        valid(done["tool"], "chat_completion_response")
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
        jsonschema.validate(json.loads(done["json"].choices[0].message.content), schema)
        chunks = list(done["count"])
        assert chunks[-1].choices[0].finish_reason == "stop"
        counted = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "1" in counted and "3" not in counted
        assert "Monday" in done["days"].choices[0].message.content
        vectors = client.embeddings.create(model=MODEL_ID, input=["The cat sat.", "Stocks fell."]).data
        assert np.allclose(np.linalg.norm([v.embedding for v in vectors], axis=1), 1.0, atol=1e-3)
