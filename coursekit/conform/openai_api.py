"""OpenAI's API (models, chat completions, legacy completions, embeddings): the rows of ``coursekit conform``.

Required rows are what a client written against OpenAI relies on in everyday use, and what
OpenAI itself guarantees: both model endpoints, chat completions streamed and not, usage
(in streams too), ``max_tokens`` and ``stop``, errors in OpenAI's envelope with the right
status and ``param``, and API keys when the server has them. Optional rows are features a
compatible server may leave out: ``n`` > 1 (one sequence at a time is a fair design), seed
determinism (OpenAI only promises "best effort"), the legacy completions endpoint, embeddings
(a chat model need not embed), tools and JSON modes (a small model may not support them), and
the body of a 404 for an unknown path.

An optional feature is "not offered" when the server refuses it in words (a 4xx). A server that
accepts the request and ignores the feature (one choice for ``n=2``, prose for a forced tool
call) fails the row: a silent wrong answer is worse than a refusal. A crash (5xx) fails too.

Every generation is short (at most 64 tokens, most 16 or fewer) and at temperature 0, so the
whole battery takes seconds on a laptop CPU.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from typing import Any

from .core import Group, Outcome, Probe, Skip, Stream

GROUP = Group("openai", "OpenAI API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings")
check = GROUP.check

COUNTING = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to read."}]
NO_SUCH_MODEL = "conform-no-such-model"
SEED = 1234
BASELINE_TOKENS = 16
STREAM_TOKENS = 32  # enough tokens for the incremental test to see the stream spread out in time
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                 "required": ["answer"], "additionalProperties": False}
CONTEXT_WORDS = 100_000  # more tokens than any local model's context; a server refuses before decoding


def _clip(value: Any, n: int = 80) -> str:
    """A value as it would appear in JSON, shortened."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text if len(text) <= n else text[: n - 3] + "..."
    return repr(text) if isinstance(value, str) else text


# ---- shared requests (each made once per run) ----------------------------------------------

def baseline(t: Probe) -> tuple[dict[str, Any], Any]:
    """A short chat at temperature 0 with a seed: the reference for usage, seed and stop."""
    return t.session.memo("chat", lambda: _chat(t, messages=COUNTING, max_tokens=BASELINE_TOKENS, temperature=0,
                                                     seed=SEED))


def _chat(t: Probe, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    model = t.model
    return t.sdk("POST", "/chat/completions",
                 lambda: t.session.sdk.chat.completions.with_raw_response.create(model=model, **kwargs))


def _choice(t: Probe, body: Any) -> dict[str, Any]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        t.fail("the reply has no choices")
    return choices[0]


def _content(t: Probe, body: Any) -> str:
    message = _choice(t, body).get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        t.fail(f"choices[0].message.content is {_clip(content)}, expected the reply's text")
    return content


# ---- models ------------------------------------------------------------------------------------

@check("models.list", "GET /models lists the models", required=True)
def models_list(t: Probe) -> None:
    body, parsed = t.sdk("GET", "/models", lambda: t.session.sdk.models.with_raw_response.list())
    t.session.memo("models", lambda: body)  # the model the other rows ask for
    t.validate(body, "model_list")
    data = body.get("data") if isinstance(body, dict) else None
    if t.expect(isinstance(data, list) and data, "the list is empty: a client has no model id to send"):
        t.expect(len(parsed.data) == len(data), "the openai client reads a different number of models")
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        if t.session.model_arg:
            t.expect(t.session.model_arg in ids, f"--model {t.session.model_arg!r} is not in the list {ids}")


@check("models.retrieve", "GET /models/{id} returns that model", required=True)
def models_retrieve(t: Probe) -> None:
    model = t.model
    body, parsed = t.sdk("GET", f"/models/{model}", lambda: t.session.sdk.models.with_raw_response.retrieve(model))
    t.validate(body, "model")
    t.expect(isinstance(body, dict) and body.get("id") == model,
             f"asked for {model!r}, got id {_clip(body.get('id') if isinstance(body, dict) else body)}")


# ---- chat, not streamed ----------------------------------------------------------------------

@check("chat", "chat completion, not streamed", required=True)
def chat(t: Probe) -> None:
    body, parsed = baseline(t)
    t.validate(body, "chat_completion_response", skip=("usage",))
    content = _content(t, body)
    t.expect(content.strip(), "the reply is empty")
    t.expect(len(body["choices"]) == 1, f"asked for one choice, got {len(body['choices'])}")
    t.expect(parsed.choices[0].message.content == content, "the openai client reads a different content")


@check("chat.usage", "usage: prompt + completion = total tokens", required=True)
def chat_usage(t: Probe) -> None:
    body, _ = baseline(t)
    usage = body.get("usage")
    if not isinstance(usage, dict):
        t.fail("the reply has no usage: clients read it to count tokens and cost" if usage is None else
               f"usage is {_clip(usage)}, expected an object")
    t.validate(body, "chat_completion_response", only=("usage",))
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        t.expect(prompt >= 1, f"usage.prompt_tokens is {prompt} for a non-empty prompt")
        t.expect(1 <= completion <= BASELINE_TOKENS,
                 f"usage.completion_tokens is {completion} with max_tokens={BASELINE_TOKENS}")
        if _choice(t, body).get("finish_reason") == "length":
            t.expect(completion == BASELINE_TOKENS, f"the reply was cut at max_tokens={BASELINE_TOKENS}, "
                     f"yet usage.completion_tokens is {completion}")


@check("chat.max_tokens", "max_tokens cuts the reply: finish_reason 'length'", required=True)
def chat_max_tokens(t: Probe) -> None:
    body, _ = _chat(t, messages=STORY, max_tokens=3, temperature=0)
    t.validate(body, "chat_completion_response", skip=("usage",))
    reason = _choice(t, body).get("finish_reason")
    t.expect(reason == "length", f"a story cut at max_tokens=3 has finish_reason {_clip(reason)}, expected 'length'")
    t.expect(_content(t, body), "the reply is empty")
    usage = body.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        t.expect(usage["completion_tokens"] == 3, f"max_tokens=3, yet usage.completion_tokens is "
                 f"{usage['completion_tokens']}")


def stop_sequence(text: str) -> tuple[str, str] | None:
    """A stop string taken from the reply itself, and the reply it should leave: the text before it."""
    words = re.findall(r"\S+", text)
    for word in words[2:] + words[1:2]:
        at = text.find(word)
        if at > 0 and text[:at].strip():
            return word, text[:at]
    return None


@check("chat.stop", "stop: the reply ends before the stop text", required=True)
def chat_stop(t: Probe) -> None:
    body, _ = baseline(t)
    text = _content(t, body)
    picked = stop_sequence(text)
    if picked is None:
        t.fail(f"the reply {_clip(text)} is too short to take a stop sequence from")
    stop, expected = picked
    stopped, _ = _chat(t, messages=COUNTING, max_tokens=BASELINE_TOKENS, temperature=0, seed=SEED, stop=[stop])
    t.validate(stopped, "chat_completion_response", skip=("usage",))
    content = _content(t, stopped)
    reason = _choice(t, stopped).get("finish_reason")
    t.expect(stop not in content, f"stop={[stop]}, yet the reply contains it: {_clip(content)}")
    t.expect(reason == "stop", f"the reply met its stop sequence, yet finish_reason is {_clip(reason)}")
    t.expect(expected.startswith(content) and len(content) >= len(expected.rstrip()),
             f"with stop={[stop]} the reply should be the text before it, {_clip(expected)}; got {_clip(content)}")


@check("chat.seed", "seed at temperature 0: the same reply twice", required=False)
def chat_seed(t: Probe) -> None:
    first, _ = baseline(t)
    second, _ = t.session.memo("chat-again", lambda: _chat(t, messages=COUNTING, max_tokens=BASELINE_TOKENS,
                                                            temperature=0, seed=SEED))
    a, b = _content(t, first), _content(t, second)
    t.expect(a == b, f"two identical requests (temperature 0, seed {SEED}) gave different replies: "
             f"{_clip(a, 50)} and {_clip(b, 50)}")


@check("chat.n", "n=2 returns two choices", required=False)
def chat_n(t: Probe) -> None:
    body, parsed = _chat(t, messages=COUNTING, max_tokens=4, temperature=1, seed=SEED, n=2)
    t.validate(body, "chat_completion_response", skip=("usage",))
    choices = body.get("choices") or []
    t.expect(len(choices) == 2, f"asked for n=2, got {len(choices)} choice{'s' * (len(choices) != 1)}: "
             "the server ignores n")
    t.expect(sorted(c.get("index") for c in choices if isinstance(c, dict)) == list(range(len(choices))),
             f"choice indexes are {[c.get('index') for c in choices if isinstance(c, dict)]}, expected 0 and 1")


# ---- chat, streamed ---------------------------------------------------------------------------

def read_chunks(t: Probe, stream: Stream, schema: str, *, skip: tuple[str, ...] = ("usage",),
                framing: bool = True) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, each validated; with ``framing``, the SSE rules are checked too."""
    x = stream.exchange
    if framing:
        t.expect(x.content_type == "text/event-stream",
                 f"Content-Type is {x.content_type or 'missing'!r}, expected 'text/event-stream'")
    chunks: list[dict[str, Any]] = []
    done_at = None
    for i, event in enumerate(stream.events):
        if event.data == "[DONE]":
            if framing and done_at is not None:
                t.problem("'data: [DONE]' comes twice")
            done_at = i
            continue
        if framing and done_at is not None:
            t.problem(f"an event follows 'data: [DONE]': {_clip(event.data, 60)}")
        try:
            chunk = json.loads(event.data)
        except ValueError:
            t.problem(f"event {i} is not JSON: {_clip(event.data, 60)}")
            continue
        if isinstance(chunk, dict) and "error" in chunk:
            t.problem(f"the stream carried an error: {_clip(json.dumps(chunk['error']), 120)}")
            t.validate(chunk, "error", where=f"chunk {len(chunks)}: ")
            continue
        t.validate(chunk, schema, where=f"chunk {len(chunks)}: ", skip=skip)
        if isinstance(chunk, dict):
            chunks.append(chunk)
    if framing:
        if done_at is None:
            cut = f"; it ends with {_clip(stream.tail, 40)}, not followed by a blank line" if stream.tail else ""
            t.problem(f"the stream does not end with 'data: [DONE]' (OpenAI's clients wait for it){cut}")
        elif stream.tail:
            t.problem(f"bytes after the last event, not followed by a blank line: {_clip(stream.tail, 40)}")
        if not chunks:
            t.fail("the stream has no chunks")
        ids = {c.get("id") for c in chunks}
        t.expect(len(ids) == 1, f"the chunks carry {len(ids)} different ids: one completion has one id")
        created = {c.get("created") for c in chunks}
        t.expect(len(created) == 1, f"the chunks carry {len(created)} different 'created' times; "
                 "OpenAI gives every chunk the same")
    return chunks


def finishes(t: Probe, chunks: list[dict[str, Any]]) -> dict[int, str]:
    """Each choice's finish_reason, checking that it comes once and ends that choice."""
    finished: dict[int, str] = {}
    for i, chunk in enumerate(chunks):
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if index in finished:
                t.problem(f"chunk {i}: choice {index} continues after its finish chunk")
            reason = choice.get("finish_reason")
            if reason is not None:
                finished[index] = reason
    if not finished:
        t.problem("no chunk has a finish_reason: a client cannot tell a finished reply from a cut connection")
    return finished


def deltas(chunks: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(chunk number, content) for each chunk that carries text."""
    out = []
    for i, chunk in enumerate(chunks):
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")  # chat, or legacy
            if isinstance(text, str) and text:
                out.append((i, text))
    return out


def chat_stream_body(t: Probe, **extra: Any) -> dict[str, Any]:
    return {"model": t.model, "messages": COUNTING, "max_tokens": STREAM_TOKENS, "temperature": 0, "seed": SEED,
            "stream": True, **extra}


@check("chat.stream", "streamed: role chunk, content, finish chunk, [DONE]", required=True)
def chat_stream(t: Probe) -> None:
    stream = t.session.memo("stream", lambda: t.stream("/chat/completions", chat_stream_body(t)))
    chunks = read_chunks(t, stream, "chat_completion_chunk")
    first = (chunks[0].get("choices") or [{}])[0] if chunks else {}
    role = (first.get("delta") or {}).get("role") if isinstance(first, dict) else None
    t.expect(role == "assistant", f"the first chunk's delta.role is {_clip(role)}, expected 'assistant'")
    finishes(t, chunks)
    text = "".join(c for _, c in deltas(chunks))
    t.expect(text.strip(), "the chunks carry no content")
    # ... and the official client reads such a stream to its end
    import httpx
    import openai

    model = t.model
    try:
        got = "".join(chunk.choices[0].delta.content or "" for chunk in t.session.sdk.chat.completions.create(
            model=model, messages=COUNTING, max_tokens=8, temperature=0, stream=True) if chunk.choices)
        t.expect(got.strip(), "read by the openai client, the stream has no content")
    except (openai.APIError, httpx.HTTPError) as exc:
        t.problem(f"the openai client fails on the stream: {type(exc).__name__}: {exc}")


@check("chat.stream.incremental", "streamed as generated, not buffered", required=True)
def chat_stream_incremental(t: Probe) -> None:
    stream = t.session.memo("stream", lambda: t.stream("/chat/completions", chat_stream_body(t)))
    content_at = [stream.events[i].at for i, _ in _content_events(stream)]
    if len(content_at) < 3:
        t.fail(f"only {len(content_at)} content chunk{'s' * (len(content_at) != 1)} for max_tokens={STREAM_TOKENS}: "
               "too few to tell a stream from a buffered reply")
    first, last = content_at[0], content_at[-1]
    since_headers = last - stream.headers_at
    spread = last - first
    # Sent as generated, the content arrives over the whole generation; buffered, all at once at
    # the end. The bar is low (a quarter) so a busy machine cannot fail a real stream.
    t.expect(spread >= 0.25 * since_headers and spread >= 0.005,
             f"all {len(content_at)} content chunks arrived within {spread * 1000:.1f} ms, "
             f"{last:.2f} s after the request: the reply was generated first and sent in one go")


def _is_json(data: str) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


def _content_events(stream: Stream) -> list[tuple[int, str]]:
    out = []
    for i, event in enumerate(stream.events):
        if event.data == "[DONE]" or not _is_json(event.data):
            continue
        chunk = json.loads(event.data)
        found = deltas([chunk]) if isinstance(chunk, dict) else []
        if found:
            out.append((i, "".join(text for _, text in found)))
    return out


@check("chat.stream.usage", "streamed: include_usage adds a usage chunk", required=True)
def chat_stream_usage(t: Probe) -> None:
    stream = t.stream("/chat/completions", chat_stream_body(t, max_tokens=8, stream_options={"include_usage": True}))
    chunks = read_chunks(t, stream, "chat_completion_chunk", skip=(), framing=False)
    if not chunks:
        t.fail("the stream has no chunks")
    last = chunks[-1]
    usage = last.get("usage")
    if not isinstance(usage, dict):
        t.fail("with stream_options.include_usage the last chunk before [DONE] should carry usage; "
               f"it has {'usage: ' + _clip(usage) if 'usage' in last else 'no usage field'}")
    t.expect(last.get("choices") == [], f"the usage chunk has choices {_clip(last.get('choices'))}, expected []")
    early = [i for i, c in enumerate(chunks[:-1]) if c.get("usage") is not None]
    t.expect(not early, f"chunk {early[0] if early else ''} carries usage before the end: only the last should")
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(completion, int):
        t.expect(1 <= completion <= 8, f"usage.completion_tokens is {completion} with max_tokens=8")
    try:
        reference, _ = baseline(t)
    except Outcome:  # that request's own row says why
        return
    expected = (reference.get("usage") or {}).get("prompt_tokens") if isinstance(reference, dict) else None
    if isinstance(expected, int) and isinstance(prompt, int):
        t.expect(prompt == expected, f"usage.prompt_tokens is {prompt} in the stream, {expected} without "
                 "streaming, for the same messages")


# ---- errors -----------------------------------------------------------------------------------

def error_envelope(t: Probe, x: Any, status: int, *, param: str | None | bool = False, code: str | None = None,
                   type_: str | None = "invalid_request_error", what: str) -> None:
    """The answer is OpenAI's error envelope with ``status`` (``param=False``: not checked)."""
    if x.status < 400:
        t.fail(f"{what}: status {x.status}, expected {status}: the server accepted the request instead of "
               "refusing it")
    if x.status != status:
        hint = {422: " (422 is FastAPI's default for a request it cannot validate; OpenAI answers 400)",
                500: " (a crash, not an answer)"}.get(x.status, "")
        t.problem(f"{what}: status {x.status}, expected {status}{hint}: {x.said()}")
    try:
        body = x.json()
    except ValueError:
        t.fail(f"{what}: the error body is not JSON: {_clip(x.text, 80)}")
    if not isinstance(body, dict) or "error" not in body:
        fastapi = isinstance(body, dict) and "detail" in body
        shape = "FastAPI's default {\"detail\": ...}" if fastapi else _clip(body, 80)
        t.fail(f"{what}: the body is {shape}, not OpenAI's error envelope "
               "{\"error\": {\"message\", \"type\", \"param\", \"code\"}}")
    t.expect(x.content_type == "application/json", f"{what}: Content-Type is {x.content_type!r}, "
             "expected 'application/json'")
    t.validate(body, "error", where=f"{what}: ")
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    if param is not False:
        t.expect(error.get("param") == param, f"{what}: error.param is {_clip(error.get('param'))}, "
                 f"expected {param!r}, the field at fault")
    if code is not None:
        t.expect(error.get("code") == code, f"{what}: error.code is {_clip(error.get('code'))}, expected {code!r}")
    if type_ is not None and x.status == status:
        t.expect(error.get("type") == type_, f"{what}: error.type is {_clip(error.get('type'))}, expected {type_!r}")


@check("errors.bad_json", "malformed JSON: 400 in the error envelope", required=True)
def errors_bad_json(t: Probe) -> None:
    x = t.session.request("POST", "/chat/completions", content=b'{"model": "m", "messages": [',
                          headers={"Content-Type": "application/json"})
    error_envelope(t, x, 400, what="a body cut in the middle")


@check("errors.missing_field", "no messages: 400, param 'messages'", required=True)
def errors_missing_field(t: Probe) -> None:
    x = t.post("/chat/completions", {"model": t.model, "max_tokens": 1})
    error_envelope(t, x, 400, param="messages", what="a chat request without messages")


@check("errors.wrong_type", "max_tokens as a string: 400, param 'max_tokens'", required=True)
def errors_wrong_type(t: Probe) -> None:
    x = t.post("/chat/completions", {"model": t.model, "messages": COUNTING, "max_tokens": "ten"})
    error_envelope(t, x, 400, param="max_tokens", what='max_tokens: "ten"')


@check("errors.unknown_model", "unknown model: 404, code 'model_not_found'", required=True)
def errors_unknown_model(t: Probe) -> None:
    x = t.post("/chat/completions", {"model": NO_SUCH_MODEL, "messages": COUNTING, "max_tokens": 1})
    error_envelope(t, x, 404, code="model_not_found", what=f"chat with model {NO_SUCH_MODEL!r}")
    x = t.get(f"/models/{NO_SUCH_MODEL}")
    error_envelope(t, x, 404, type_=None, what=f"GET /models/{NO_SUCH_MODEL}")


@check("errors.context_length", "prompt over the context: 400 context_length_exceeded", required=True)
def errors_context_length(t: Probe) -> None:
    words = " ".join(["hello"] * CONTEXT_WORDS)
    x = t.post("/chat/completions", {"model": t.model, "messages": [{"role": "user", "content": words}],
                                     "max_tokens": 1})
    # The messages alone overflow, so they are what to shrink: OpenAI says param 'messages'.
    error_envelope(t, x, 400, code="context_length_exceeded", param="messages",
                   what=f"a prompt of {CONTEXT_WORDS:,} words with max_tokens 1")


@check("errors.unknown_path", "unknown path: 404 in the error envelope", required=False)
def errors_unknown_path(t: Probe) -> None:
    x = t.get("/conform-no-such-path")
    error_envelope(t, x, 404, type_=None, what="GET /conform-no-such-path")


# ---- authentication ---------------------------------------------------------------------------

def _auth(t: Probe, headers: dict[str, str], what: str) -> None:
    if not t.session.api_key:
        raise Skip("no --api-key given: pass the server's key to check that it refuses requests without it")
    for x in (t.session.request("GET", "/models", headers=headers, auth=False),
              t.session.request("POST", "/chat/completions", headers=headers, auth=False,
                                json_body={"model": t.model, "messages": COUNTING, "max_tokens": 1})):
        error_envelope(t, x, 401, type_=None, what=f"{x.method} {x.path} {what}")


@check("auth.missing", "no API key: 401", required=True)
def auth_missing(t: Probe) -> None:
    _auth(t, {}, "without a key")


@check("auth.wrong", "wrong API key: 401", required=True)
def auth_wrong(t: Probe) -> None:
    _auth(t, {"Authorization": "Bearer conform-wrong-key"}, "with a wrong key")


# ---- legacy completions -----------------------------------------------------------------------

@check("completions", "legacy completions, not streamed", required=False)
def completions(t: Probe) -> None:
    model = t.model
    body, parsed = t.sdk("POST", "/completions", lambda: t.session.sdk.completions.with_raw_response.create(
        model=model, prompt="Once upon a time", max_tokens=8, temperature=0))
    t.validate(body, "completion_response")
    text = _choice(t, body).get("text")
    t.expect(isinstance(text, str) and text, f"choices[0].text is {_clip(text)}, expected the continuation")


@check("completions.stream", "legacy completions, streamed", required=False)
def completions_stream(t: Probe) -> None:
    stream = t.stream("/completions", {"model": t.model, "prompt": "Once upon a time", "max_tokens": 8,
                                       "temperature": 0, "stream": True})
    chunks = read_chunks(t, stream, "completion_chunk")
    finishes(t, chunks)
    t.expect("".join(text for _, text in deltas(chunks)), "the chunks carry no text")


# ---- embeddings -------------------------------------------------------------------------------

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today."]


def _vectors(t: Probe, body: Any, decode: bool) -> list[list[float]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != len(TEXTS):
        t.fail(f"{len(TEXTS)} inputs, {len(data) if isinstance(data, list) else 'no'} embeddings")
    t.expect([d.get("index") for d in data] == list(range(len(TEXTS))),
             f"the embeddings' indexes are {[d.get('index') for d in data]}, expected 0, 1")
    vectors = []
    for i, item in enumerate(data):
        value = item.get("embedding")
        if decode:
            if not isinstance(value, str):
                t.fail(f"asked for encoding_format 'base64', data[{i}].embedding is {type(value).__name__}")
            raw = base64.b64decode(value)
            if len(raw) % 4:
                t.fail(f"data[{i}].embedding decodes to {len(raw)} bytes, not a whole number of float32")
            value = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) for v in value):
            t.fail(f"data[{i}].embedding is not a list of numbers")
        t.expect(all(math.isfinite(v) for v in value), f"data[{i}].embedding holds NaN or infinity")
        vectors.append(value)
    t.expect(len({len(v) for v in vectors}) == 1, f"the vectors have different lengths: {[len(v) for v in vectors]}")
    t.expect(vectors[0] != vectors[1], "two different sentences have the same vector")
    return vectors


def float_embeddings(t: Probe) -> list[list[float]]:
    model = t.model

    def make() -> tuple[Any, list[list[float]]]:
        body, _ = t.sdk("POST", "/embeddings", lambda: t.session.sdk.embeddings.with_raw_response.create(
            model=model, input=TEXTS, encoding_format="float"))
        return body, _vectors(t, body, decode=False)
    return t.session.memo("embeddings", make)


@check("embeddings.float", "embeddings as floats", required=False)
def embeddings_float(t: Probe) -> None:
    body, _ = float_embeddings(t)
    t.validate(body, "embedding_response")


@check("embeddings.base64", "embeddings as base64 (the openai client's default)", required=False)
def embeddings_base64(t: Probe) -> None:
    model = t.model
    # Without encoding_format the official client asks for base64 and decodes it itself.
    body, parsed = t.sdk("POST", "/embeddings", lambda: t.session.sdk.embeddings.with_raw_response.create(
        model=model, input=TEXTS))
    t.validate(body, "embedding_response")
    vectors = _vectors(t, body, decode=True)
    t.expect([list(d.embedding) for d in parsed.data] == vectors, "the openai client decodes other vectors")
    try:
        _, floats = float_embeddings(t)
    except Outcome:  # that request's own row says why
        return
    if len(floats[0]) != len(vectors[0]):
        t.problem(f"base64 vectors have {len(vectors[0])} dimensions, float ones {len(floats[0])}")
    else:
        worst = max(abs(a - b) for f, v in zip(floats, vectors) for a, b in zip(f, v))
        t.expect(worst < 1e-3, f"base64 and float vectors of the same input differ by up to {worst:.3g}")


# ---- tools and JSON modes ---------------------------------------------------------------------

def _arguments(t: Probe, name: Any, arguments: Any, where: str) -> None:
    t.expect(name == "get_weather", f"{where}: the call is to {_clip(name)}, not the forced 'get_weather'")
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        args = None
    if not isinstance(args, dict):
        t.problem(f"{where}: arguments {_clip(arguments)} are not a JSON object")
        return
    t.expect(isinstance(args.get("city"), str), f"{where}: arguments {_clip(arguments)} lack the required "
             "string 'city'")


@check("tools", "tools: forced tool_choice gives a call with JSON arguments", required=False)
def tools(t: Probe) -> None:
    body, parsed = _chat(t, messages=WEATHER, max_tokens=64, temperature=0, tools=[WEATHER_TOOL],
                         tool_choice=FORCE_WEATHER)
    t.validate(body, "chat_completion_response", skip=("usage",))
    choice = _choice(t, body)
    calls = (choice.get("message") or {}).get("tool_calls")
    if not isinstance(calls, list) or not calls:
        t.fail(f"tool_choice forced get_weather, yet the reply has no tool_calls: the server ignored tools "
               f"(content: {_clip((choice.get('message') or {}).get('content'), 60)})")
    call = calls[0] if isinstance(calls[0], dict) else {}
    t.expect(isinstance(call.get("id"), str) and call.get("id"), "tool_calls[0] has no id to answer it with")
    function = call.get("function") or {}
    _arguments(t, function.get("name"), function.get("arguments"), "tool_calls[0]")
    # OpenAI says 'stop' when tool_choice names the function, 'tool_calls' when the model chose to call
    t.expect(choice.get("finish_reason") in ("tool_calls", "stop"),
             f"finish_reason is {_clip(choice.get('finish_reason'))}, expected 'tool_calls'")


@check("tools.stream", "tools, streamed: argument deltas add up to JSON", required=False)
def tools_stream(t: Probe) -> None:
    stream = t.stream("/chat/completions", {"model": t.model, "messages": WEATHER, "max_tokens": 64,
                                            "temperature": 0, "tools": [WEATHER_TOOL],
                                            "tool_choice": FORCE_WEATHER, "stream": True})
    chunks = read_chunks(t, stream, "chat_completion_chunk")
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            for delta_call in ((choice.get("delta") or {}).get("tool_calls") or []):
                index = delta_call.get("index")
                call = calls.setdefault(index, {"id": None, "name": None, "arguments": ""})
                call["id"] = call["id"] or delta_call.get("id")
                function = delta_call.get("function") or {}
                call["name"] = call["name"] or function.get("name")
                call["arguments"] += function.get("arguments") or ""
    if not calls:
        t.fail("tool_choice forced get_weather, yet no chunk carries tool_calls")
    t.expect(0 in calls, f"tool call indexes are {sorted(calls, key=str)}, expected 0")
    call = calls.get(0) or next(iter(calls.values()))
    t.expect(call["id"], "the streamed tool call has no id")
    _arguments(t, call["name"], call["arguments"], "the streamed tool call")
    finishes(t, chunks)


@check("json.object", "response_format json_object: the reply is JSON", required=False)
def json_object(t: Probe) -> None:
    body, _ = _chat(t, messages=[{"role": "user", "content": 'Give me a JSON object with the key "color" set to '
                                  '"blue". Reply with the JSON only.'}],
                    max_tokens=48, temperature=0, response_format={"type": "json_object"})
    t.validate(body, "chat_completion_response", skip=("usage",))
    content = _content(t, body)
    try:
        value = json.loads(content)
    except ValueError:
        cut = " (cut at max_tokens=48)" if _choice(t, body).get("finish_reason") == "length" else ""
        t.fail(f"response_format json_object, yet the reply is not JSON{cut}: {_clip(content, 60)}")
    t.expect(isinstance(value, dict), f"the reply is JSON but not an object: {_clip(content, 60)}")


@check("json.schema", "response_format json_schema: the reply fits the schema", required=False)
def json_schema(t: Probe) -> None:
    from jsonschema import Draft202012Validator

    body, _ = _chat(t, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=32, temperature=0,
                    response_format={"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                                            "schema": ANSWER_SCHEMA}})
    t.validate(body, "chat_completion_response", skip=("usage",))
    content = _content(t, body)
    try:
        value = json.loads(content)
    except ValueError:
        t.fail(f"response_format json_schema, yet the reply is not JSON: {_clip(content, 60)}")
    errors = [e.message for e in Draft202012Validator(ANSWER_SCHEMA).iter_errors(value)]
    t.expect(not errors, f"the reply {_clip(content, 60)} does not fit the schema: {errors[:1]}")
