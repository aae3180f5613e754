"""Checks for lab 04: Server-Sent Events by hand, the chunk sequence, streaming routes, cancellation, a reader."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, schema_problems, short, type_name
from ..checks import hint as hint  # check.hint(check.framing): the concrete hint, on request
from ..model import MODEL_ID

WIRE = Section("04-streaming", "The wire format")
CHUNKS = Section("04-streaming", "The sequence of chunks")
FRAMING = Section("04-streaming", "Framing: from chunks to bytes")
READING = Section("04-streaming", "Reading a stream")
PITFALLS = Section("04-streaming", "Pitfalls that break real clients")
CANCELLING = Section("04-streaming", "When the client goes away")
SECTIONS = (WIRE, CHUNKS, FRAMING, READING, PITFALLS, CANCELLING)

META = {"id": "chatcmpl-lab4example", "created": 1748779200, "model": MODEL_ID}


# ---- Step 1: one event ------------------------------------------------------------------------

@check("SSE framing", section=WIRE,
       nudge="an SSE event is a field name and its value on one line, closed by a blank line; and a "
             "response body is bytes, not text",
       hint="an event is the line 'data: ' + the text, then an empty line: 'data: ...\\n\\n', "
            "encoded as UTF-8 bytes")
def framing(sse_event: Callable[[str], Any]) -> str:
    from fastapi.sse import format_sse_event

    samples = [json.dumps({"id": "chatcmpl-1", "choices": []}), "[DONE]", "Café ☕ 你好"]
    for data in samples:
        shown = repr(data if len(data) <= 24 else data[:21] + "...")
        got = sse_event(data)
        want = format_sse_event(data_str=data)
        if isinstance(got, str):
            raise Mismatch(f"sse_event({shown}) returned a str: a response body is bytes",
                           hint="return the text .encode('utf-8')")
        if not isinstance(got, bytes):
            raise Mismatch(f"sse_event({shown}) returned {type_name(got)}, not bytes")
        if got == want:
            continue
        details = [f"yours:   {got!r}", f"FastAPI: {want!r}"]
        if got.rstrip(b"\n") == want.rstrip(b"\n"):
            what = "the event does not end with a blank line: the client would glue it to the next one"
        elif got.startswith(b"data:") and not got.startswith(b"data: "):
            what = "write 'data: ' with one space after the colon, as OpenAI and FastAPI do"
        elif not got.startswith(b"data"):
            what = "each event line starts with the field name 'data: '"
        else:
            what = f"sse_event({shown}) differs from FastAPI's format_sse_event"
        raise Mismatch(what, details=details)
    return "SSE framing: your events are byte for byte what FastAPI's format_sse_event makes"


# ---- Step 2: the chunk sequence -----------------------------------------------------------------

def sequence_problems(chunks: list[Any], *, include_usage: bool, meta: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with a list of chunk dicts as one stream (empty when it is right)."""
    if not chunks:
        return ["there are no chunks at all"]
    for i, chunk in enumerate(chunks):
        problems = schema_problems(chunk, "chat_completion_chunk") if isinstance(chunk, dict) else \
            [f"expected a dict, got {type_name(chunk)}"]
        if problems:
            return [f"chunk {i} is not a valid chat.completion.chunk: {problems[0]}"]
    out = []
    first = chunks[0]
    for key in ("id", "created", "model"):
        values = {json.dumps(c.get(key)) for c in chunks}
        if len(values) > 1:
            out.append(f"'{key}' changes between chunks: one stream keeps one {key}")
        elif meta is not None and first.get(key) != meta.get(key):
            out.append(f"'{key}' is {short(first.get(key))}, not the meta's {short(meta.get(key))}")
    body = chunks
    if include_usage:
        last = chunks[-1]
        if last.get("choices") != [] or not last.get("usage"):
            out.append("with include_usage the last chunk is the usage chunk: choices [] and the usage counts")
        else:
            body = chunks[:-1]
        if any("usage" not in c or c["usage"] is not None for c in body):
            out.append("with include_usage every chunk before the usage chunk carries \"usage\": null")
    elif any("usage" in c for c in chunks):
        out.append("without include_usage there is no usage chunk and no 'usage' field at all")
    if not body or any(not c.get("choices") for c in body):
        out.append("every chunk but the usage chunk has one choice")
        return out
    deltas = [c["choices"][0]["delta"] for c in body]
    finishes = [c["choices"][0]["finish_reason"] for c in body]
    if deltas[0].get("role") != "assistant":
        out.append("the first chunk's delta carries the role: {'role': 'assistant', 'content': ''}")
    if any("role" in d for d in deltas[1:]):
        out.append("only the first delta carries the role")
    if finishes[-1] is None or any(f is not None for f in finishes[:-1]):
        out.append(f"finish_reason is null on every chunk but the finish chunk; found {finishes}")
    elif deltas[-1] != {}:
        out.append(f"the finish chunk's delta is empty, {{}}; found {short(deltas[-1])}")
    if any(d.get("content") == "" for d in deltas[1:]):
        out.append("a content chunk with empty content: send only pieces that carry text")
    return out


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def _events(items: list[Any]) -> Any:
    """An async iterator over ``items``: what the route's events look like to chat_chunks."""
    async def gen() -> Any:
        for item in items:
            yield item
    return gen()


def _collect(chunks: Any, limit: int = 100) -> list[Any]:
    """Everything an async generator yields (run on a loop of its own)."""
    from .fakes import run_async

    if chunks is None:
        raise Mismatch("chat_chunks returned None: it should yield the chunks (an async generator)")
    if hasattr(chunks, "__next__") and not hasattr(chunks, "__anext__"):
        raise Mismatch("chat_chunks is a plain generator: make it an async generator (async def, reading the "
                       "events with async for), because the events arrive from the worker thread")
    if not hasattr(chunks, "__anext__"):
        if hasattr(chunks, "close"):
            chunks.close()  # a coroutine (an async def without yield): never awaited, not a warning
        raise Mismatch(f"chat_chunks returned {type_name(chunks)}: it should yield the chunks "
                       "(an async def that yields is an async generator)")

    async def drain() -> list[Any]:
        out = []
        async for item in chunks:
            out.append(dict(item) if isinstance(item, dict) else item)
            if len(out) >= limit:
                break
        return out
    return run_async(drain)


def run_chunks(chat_chunks: Callable[..., Any], events: list[Any], meta: dict[str, Any],
               include_usage: bool = False) -> list[Any]:
    """The chunks ``chat_chunks`` yields for ``events``; an empty list while it is not written."""
    try:
        return _collect(chat_chunks(_events(events), dict(meta), include_usage))
    except Mismatch:
        return []


@check("The chunk sequence", section=CHUNKS,
       nudge="a stream is one opening chunk (who speaks), the content pieces as they arrive, and one "
             "closing chunk (why it stopped); each chunk leaves as soon as its event is read",
       hint="yield the role chunk first, then one chunk per text piece, then on Done the finish chunk "
            "(empty delta, its finish_reason) and, with include_usage, the usage chunk (choices [])")
def chunk_sequence(chat_chunks: Callable[..., Any], done: Callable[..., Any]) -> str:
    from .fakes import run_async

    events = ["Hel", "lo", " world", done("stop", 12, 3)]

    def run(items: list[Any], include_usage: bool) -> list[Any]:
        return _collect(chat_chunks(_events(items), dict(META), include_usage))

    plain = run(events, False)
    problems = sequence_problems(plain, include_usage=False, meta=META)
    if problems:
        raise Mismatch("the stream of 'Hel', 'lo', ' world', Done('stop', 12, 3) is not right", details=problems)
    if _text(plain) != "Hello world":
        raise Mismatch(f"the deltas add up to {_text(plain)!r}, not 'Hello world'",
                       hint="one content chunk per text piece, in order, with the piece as delta.content")
    if plain[-1]["choices"][0]["finish_reason"] != "stop":
        raise Mismatch("the finish chunk should carry Done's finish_reason ('stop' here)")
    with_usage = run(events, True)
    problems = sequence_problems(with_usage, include_usage=True, meta=META)
    if problems:
        raise Mismatch("with include_usage=True the stream is not right", details=problems)
    if with_usage[-1]["usage"] != {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}:
        raise Mismatch(f"the usage chunk says {short(with_usage[-1]['usage'])}: Done(..., 12, 3) means "
                       "12 prompt tokens, 3 completion tokens, 15 in total")
    cut = run(["a", done("length", 5, 1)], False)
    if sequence_problems(cut, include_usage=False) or cut[-1]["choices"][0]["finish_reason"] != "length":
        raise Mismatch("when max_tokens cuts the answer (Done('length', ...)) the finish_reason is 'length'")

    async def slow() -> Any:
        yield "Hel"
        raise TimeoutError("the model is still thinking")

    async def first_two() -> None:
        gen = chat_chunks(slow(), dict(META), False)
        await gen.__anext__()
        await gen.__anext__()  # the role chunk and 'Hel' must not wait for the rest
        await gen.aclose()
    try:
        run_async(first_two)
    except TimeoutError:
        raise Mismatch("chat_chunks reads every event before it yields its first chunk: the client would "
                       "wait for the whole answer", hint="yield inside the loop over events, not after it") from None
    return "The chunk sequence: role, content, finish and usage chunks, valid, in order, sent as they come"


# ---- Step 4: the route --------------------------------------------------------------------------

def parse_events(body: str) -> tuple[list[str], list[str]]:
    """(data payloads, problems) of a text/event-stream body, strictly as OpenAI frames it."""
    problems = []
    if not body.endswith("\n\n"):
        problems.append("the body does not end with a blank line after the last event")
    payloads = []
    for event in body.split("\n\n"):
        if not event:
            continue
        lines = event.split("\n")
        if any(not line.startswith("data: ") for line in lines) or len(lines) != 1:
            problems.append(f"an event is not a single 'data: ...' line: {event[:80]!r}")
            continue
        payloads.append(lines[0][len("data: "):])
    return payloads, problems


@check("POST /v1/chat/completions with stream", section=FRAMING,
       nudge="one route answers both ways: the request's stream flag decides whether the engine's events "
             "are collected into one answer or sent on, event by event, as they are made",
       hint="when the body asks for a stream, the route returns your SSE response around the chunks of the "
            "same events (with the request's include_usage); sse_frames sends each chunk as it comes, then "
            "the [DONE] event")
def stream_endpoint(http: Any) -> str:
    question = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 8, "temperature": 0}
    r = http.post("/v1/chat/completions", json={**question, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    if r.status_code != 200:
        raise Mismatch(f"a streamed request answered {r.status_code}, not 200", details=[f"body: {r.text[:160]!r}"])
    kind = r.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise Mismatch(f"the content-type is {kind!r}, not text/event-stream: the route answered as if "
                       "stream were false", details=[f"body: {r.text[:120]!r}"])
    payloads, problems = parse_events(r.text)
    if problems:
        raise Mismatch("the body is not framed as Server-Sent Events", details=problems[:3])
    if not payloads or payloads[-1] != "[DONE]":
        raise Mismatch("the stream does not end with 'data: [DONE]': some clients take that for a dropped "
                       "connection, and send the request again", section=PITFALLS,
                       hint="sse_frames yields sse_event('[DONE]') after the last chunk")
    try:
        chunks = [json.loads(p) for p in payloads[:-1]]
    except ValueError as exc:
        raise Mismatch(f"an event's data is not JSON ({exc})") from None
    problems = sequence_problems(chunks, include_usage=True)
    if problems:
        raise Mismatch("the events are not a valid stream (with include_usage)", details=problems,
                       section=PITFALLS if any("usage" in p for p in problems) else CHUNKS)
    usage = chunks[-1]["usage"]
    if usage["completion_tokens"] > 8:
        raise Mismatch(f"{usage['completion_tokens']} completion tokens for max_tokens=8")
    plain = http.post("/v1/chat/completions", json=question)
    require_schema(plain.json(), "chat_completion_response", what="the non-streamed answer")
    expected = plain.json()["choices"][0]["message"]["content"]
    if _text(chunks) != expected:
        raise Mismatch(f"at temperature 0 the stream says {_text(chunks)!r} but the non-streamed answer is "
                       f"{expected!r}", hint="build the stream from the same events, one content chunk per piece")
    bare = http.post("/v1/chat/completions", json={**question, "stream": True})
    payloads, problems = parse_events(bare.text)
    try:
        bare_chunks = [json.loads(p) for p in payloads[:-1]]
    except ValueError:
        bare_chunks = []
    problems = problems or sequence_problems(bare_chunks, include_usage=False)
    if problems:
        raise Mismatch("without stream_options the stream is not right", details=problems)
    late = _first_event_before_the_end()
    if late:
        raise Mismatch("the stream is valid, but it is sent all at once at the end: the client waits as long "
                       "as without stream", details=late,
                       hint="send each chunk as it is made: read the events with async for and yield inside "
                            "the loop, never into a list first (in chat_chunks, sse_frames and the route)")
    return (f"POST /v1/chat/completions with stream: {len(chunks)} valid chunks, [DONE], "
            f"and the same text as without stream, each event sent as soon as it is made")


def _first_event_before_the_end() -> list[str]:
    """What shows the stream is buffered, with a scripted engine that takes 1.5 s (empty when it is not).

    Through TestClient the whole body arrives at once whatever the app does, so this reads the
    learner's app over a real socket, as ``cancellation`` does, and notes how far the generation
    had got when the first event came.
    """
    import httpx

    from .fakes import FakeEngine, live_app, package_module

    fake = FakeEngine(pieces=30, delay=0.05)
    app = package_module("app").create_app(package_module("settings").Settings(), engine=fake)
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 30,
            "temperature": 0, "stream": True}
    made = None
    with live_app(app) as root, httpx.stream("POST", f"{root}/v1/chat/completions", json=body,
                                             timeout=30) as response:
        if response.status_code != 200:
            return [f"with a scripted engine the streamed request answered {response.status_code}"]
        for line in response.iter_lines():
            if line.startswith("data:"):
                made = (fake.yielded, fake.finished)
                break
    if made is None:
        return ["no event at all came from the app around a scripted engine"]
    yielded, finished = made
    if finished or yielded >= fake.pieces:
        return [f"the first event reached the client after all {fake.pieces} pieces had been generated "
                f"({fake.pieces * fake.delay:.1f} s of generation)"]
    return []


@check("POST /v1/completions", section=FRAMING,
       nudge="this route is given: it fails because a piece it streams through (sse_event, sse_frames, "
             "sse_response) is not right yet",
       hint="the route is given: it streams through your sse_response, so sse_event and sse_frames must pass "
            "their checks first")
def completions_endpoint(http: Any) -> str:
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    plain = http.post("/v1/completions", json=body)
    if plain.status_code != 200:
        raise Mismatch(f"POST /v1/completions answered {plain.status_code}", details=[f"body: {plain.text[:160]!r}"])
    require_schema(plain.json(), "completion_response", what="the non-streamed text_completion")
    r = http.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    if not r.headers.get("content-type", "").startswith("text/event-stream"):
        raise Mismatch(f"a streamed completion answered {r.status_code} {r.headers.get('content-type')!r}, "
                       "not an event stream", details=[f"body: {r.text[:120]!r}"])
    payloads, problems = parse_events(r.text)
    if problems or not payloads or payloads[-1] != "[DONE]":
        raise Mismatch("the streamed completion is not framed as Server-Sent Events ending with [DONE]",
                       details=problems[:3] or [f"last event: {payloads[-1:]!r}"])
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        wrong = schema_problems(chunk, "completion_chunk")
        if wrong:
            raise Mismatch("a chunk of the streamed completion is not valid", details=wrong[:3])
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    if text != plain.json()["choices"][0]["text"]:
        raise Mismatch(f"at temperature 0 the stream says {text!r}, the plain answer "
                       f"{plain.json()['choices'][0]['text']!r}")
    if chunks[-1]["choices"] or not chunks[-1].get("usage"):
        raise Mismatch("with include_usage the last chunk carries the usage (and no choices)")
    return f"POST /v1/completions: {text!r}, streamed and not, the same text"


@check("A client that hangs up", section=CANCELLING,
       nudge="when the client goes away the event loop cancels the request's task, but the worker thread "
             "generating for it does not notice unless it looks",
       hint="in the worker's job, check generation.cancelled before handing each event over, and break "
            "when it is set")
def cancellation() -> str:
    import httpx

    from .fakes import FakeEngine, live_app, package_module

    fake = FakeEngine(pieces=150, delay=0.02)
    app = package_module("app").create_app(package_module("settings").Settings(), engine=fake)
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 150,
            "temperature": 0, "stream": True}
    with live_app(app) as root:
        events = 0
        with httpx.stream("POST", f"{root}/v1/chat/completions", json=body, timeout=30) as response:
            if response.status_code != 200 or not response.headers.get("content-type", "").startswith(
                    "text/event-stream"):
                raise Mismatch(f"a streamed request answered {response.status_code} "
                               f"{response.headers.get('content-type')!r}: the stream check must pass first")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events += 1
                if events >= 3:  # the role chunk and two pieces: now hang up
                    break
        left_at = fake.yielded
        stopped = fake.closed.wait(timeout=2.0)
        after = fake.yielded - left_at
        start = time.monotonic()
        second = httpx.post(f"{root}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3},
                            timeout=30)
        waited = time.monotonic() - start
    if not stopped:
        raise Mismatch(f"after the client hung up, your worker went on generating for nobody: {after} more "
                       f"pieces in 2 s (of {fake.pieces})")
    if after > 10:
        raise Mismatch(f"your worker stopped, but only {after} pieces after the client hung up")
    if second.status_code != 200:
        raise Mismatch(f"the next request answered {second.status_code}: {second.text[:120]!r}")
    return (f"A client that hangs up: the generation stopped {after} piece{'s' if after != 1 else ''} later, "
            f"and the next request was served in {waited * 1000:.0f} ms")


# ---- Step 6: reading ------------------------------------------------------------------------------

#: what httpx's iter_lines() gives for a stream: lines without their line ends
SAMPLE_LINES = [
    ": ping",
    "",
    'data: {"n": 1}',
    "",
    'data:{"n": 2, "text": "no space after the colon is allowed too"}',
    "",
    "data: [DONE]",
    "",
    'data: {"n": 3, "text": "after [DONE]: never read"}',
    "",
]


@check("Reading SSE by hand", section=READING,
       nudge="reading is the framing backwards: lines, comments to skip, the data field, and the [DONE] "
             "sentinel that ends the stream",
       hint="skip empty lines and comments (lines starting with ':'); for 'data:' lines take what follows "
            "(without one leading space); stop at [DONE]; json.loads the rest")
def reader(read_sse: Callable[[Any], Any]) -> str:
    out = read_sse(iter(SAMPLE_LINES))
    if out is None:
        raise Mismatch("read_sse returned None: it should yield one dict per data event")
    got = list(out)
    want = [{"n": 1}, {"n": 2, "text": "no space after the colon is allowed too"}]
    if got == want:
        return "Reading SSE by hand: comments skipped, both events parsed, stopped at [DONE]"
    details = [f"got {short(got)}"]
    if any(isinstance(g, str) for g in got):
        details.append("yield json.loads(payload), not the text")
    if want[1] not in got:
        details.append("'data:{...}' without a space is a data line too: the space after the colon is optional")
    if {"n": 3, "text": "after [DONE]: never read"} in got:
        details.append("you read past [DONE]: return as soon as you see it")
    raise Mismatch("read_sse(SAMPLE_LINES) should give the two events before [DONE]", details=details)


def summary(chunks: Any) -> dict[str, Any]:
    """The shape of a stream, for the checkpoint: how many chunks of each kind; never raises."""
    try:
        kinds = {"role": 0, "content": 0, "finish": 0, "usage": 0}
        for c in chunks or []:
            if not c["choices"]:
                kinds["usage"] += 1
            elif c["choices"][0]["finish_reason"] is not None:
                kinds["finish"] += 1
            elif "role" in c["choices"][0]["delta"]:
                kinds["role"] += 1
            else:
                kinds["content"] += 1
        return kinds
    except Exception as exc:  # the learner's chunks may be anything
        from ..checks import describe
        return {"error": describe(exc)}
