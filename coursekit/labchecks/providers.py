"""Checks for lab 10: Ollama's API on the learner's server.

The request's translation into the engine's call, the reply's last line (counts and nanoseconds),
then, through the official ``ollama`` client against the learner's server as a process: ``/api/chat``
streamed as NDJSON by default and whole when asked, ``/api/tags``, and Ollama's error envelope on
``/api/*`` while ``/v1`` keeps OpenAI's. Every body and every line is validated against ``schemas/``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, schema_problems, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request
from ..model import MODEL_ID

DIFFER = Section("10-providers", "Where they differ")
ENGINE = Section("10-providers", "One engine underneath")
RENDERING = Section("10-providers", "Rendering the events back")
ERRORS = Section("10-providers", "Errors in each protocol's shape")
PITFALLS = Section("10-providers", "Pitfalls that break real clients")
WEBUI = Section("10-providers", "Pointing Open WebUI at the server")
SECTIONS = (DIFFER, ENGINE, RENDERING, ERRORS, PITFALLS, WEBUI)

HI = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0, "num_predict": 8}
UNKNOWN = "llama3.2"  # a model every Ollama user has heard of, and your server does not serve


# ---- Step 1: the request, in your engine's terms -------------------------------------------------

def _lab3_generate(self: Any, prompt: Any, max_tokens: int, temperature: float = 1.0, json_schema: Any = None,
                   stop: Any = (), seed: int | None = None) -> None:
    """The engine seam of lab 3, for a package whose engine module cannot be read."""


def _generate_signature() -> inspect.Signature:
    from .fakes import package_module

    try:
        return inspect.signature(package_module("engine").Engine.generate)
    except Exception:
        return inspect.signature(_lab3_generate)


def _engine_call(to_engine: Callable[[Any], Any], body: Any, shown: str) -> tuple[list, Any, dict[str, Any]]:
    """(messages, max_tokens, the values generate would run with) for ``to_engine(body)``."""
    out = to_engine(body)
    if not isinstance(out, tuple) or len(out) != 3:
        raise Mismatch(f"to_engine({shown}) returned {type_name(out) if not isinstance(out, tuple) else f'{len(out)} values'}: "
                       "return three things, (messages, max_tokens, keywords)")
    messages, max_tokens, keywords = out
    if not isinstance(keywords, dict):
        raise Mismatch(f"the keywords to_engine({shown}) returned are {type_name(keywords)}, not a dict")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Mismatch(f"the messages to_engine({shown}) returned are not a list of dicts: {short(messages)}",
                       hint="one dict per message, {'role': ..., 'content': ...}, as your engine's chat template reads them")
    try:
        bound = _generate_signature().bind(None, messages, max_tokens, **keywords)
    except TypeError as exc:
        raise Mismatch(f"your engine's generate cannot take the keywords to_engine({shown}) returned: {exc}",
                       details=[f"keywords: {short(keywords)}"],
                       hint="keep only what your engine's generate takes (temperature, stop, seed, json_schema); "
                            "Ollama's other options have no effect on it") from None
    bound.apply_defaults()
    run = dict(bound.arguments)
    run["stop"] = list(run.get("stop") or [])
    return messages, max_tokens, run


@check("Ollama's request, in your engine's terms", section=ENGINE,
       nudge="Ollama puts the sampling settings in 'options', calls the output budget num_predict, and "
             "streams unless told not to; your engine only needs the values the client actually set",
       hint="stream defaults to True; max_tokens is options.num_predict when it is positive, else None; the "
            "keywords hold temperature, stop and seed when they are not None (0 is a value), and json_schema "
            "for format: 'json' is the schema {'type': 'object'}, a dict is a schema itself")
def translation(chat_request: Any, to_engine: Callable[[Any], Any]) -> str:
    def parse(body: dict[str, Any]) -> Any:
        return chat_request.model_validate({"model": MODEL_ID, "messages": HI, **body})

    bare = parse({})
    if bare.stream is not True:
        raise Mismatch(f"a request that does not mention stream gets stream={bare.stream!r}: an Ollama client "
                       "that says nothing expects NDJSON lines", section=PITFALLS,
                       hint="Ollama streams unless the request says stream: false; give the field that default")
    messages, max_tokens, run = _engine_call(to_engine, bare, "a request without options")
    if [{k: m.get(k) for k in ("role", "content")} for m in messages] != HI:
        raise Mismatch(f"the messages for [user: 'Say hi'] are {short(messages)}",
                       hint="one dict per message with its role and content, in order")
    if max_tokens is not None:
        raise Mismatch(f"without num_predict, max_tokens is {max_tokens!r}: Ollama has no limit then (None: the "
                       "route gives the answer the rest of the window)")
    default = _generate_signature().parameters["temperature"].default
    if run["temperature"] != default or run["stop"] or run["seed"] is not None or run["json_schema"] is not None:
        raise Mismatch("a request without options should leave your engine's defaults alone",
                       details=[f"your engine would run with temperature={run['temperature']!r}, stop={run['stop']!r}, "
                                f"seed={run['seed']!r}, json_schema={run['json_schema']!r}; its defaults are "
                                f"temperature={default!r} and nothing else"],
                       section=Section("10-providers", "What a translation cannot carry"),
                       hint="put a keyword in only when the client set its option (is not None)")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}]
    full = chat_request.model_validate({
        "model": MODEL_ID, "messages": conversation, "stream": False,
        "options": {"temperature": 0, "num_predict": 7, "stop": ["\n\n", "User:"], "seed": 42,
                    "top_k": 40, "num_ctx": 4096, "mirostat": 0}})
    messages, max_tokens, run = _engine_call(to_engine, full, "a request with options")
    problems = []
    if [{k: m.get(k) for k in ("role", "content")} for m in messages] != conversation:
        problems.append(f"the four messages (system, user, assistant, user) became {short(messages)}")
    if max_tokens != 7:
        problems.append(f"num_predict 7 gave max_tokens={max_tokens!r}")
    if run["temperature"] != 0:
        problems.append(f"temperature 0 became {run['temperature']!r}: 0 is a value the client set, not a missing "
                        "one (test `is None`, not truthiness)")
    if run["stop"] != ["\n\n", "User:"]:
        problems.append(f"stop ['\\n\\n', 'User:'] became {run['stop']!r}")
    if run["seed"] != 42:
        problems.append(f"seed 42 became {run['seed']!r}")
    if problems:
        raise Mismatch("the options did not all reach your engine", details=problems)
    for unlimited in (-1, -2):
        _, max_tokens, _ = _engine_call(to_engine, parse({"options": {"num_predict": unlimited}}),
                                        f"num_predict={unlimited}")
        if max_tokens is not None:
            raise Mismatch(f"num_predict {unlimited} gave max_tokens={max_tokens!r}: -1 means no limit and -2 "
                           "'fill the context', so None (the rest of the window)")
    person = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    for fmt, schema in (("json", {"type": "object"}), (person, person)):
        _, _, run = _engine_call(to_engine, parse({"format": fmt}), f"format={short(fmt, 40)}")
        if run["json_schema"] != schema:
            raise Mismatch(f"format {short(fmt, 60)} gave json_schema={short(run['json_schema'], 60)}, not "
                           f"{short(schema, 60)}", section=DIFFER,
                           hint="format 'json' asks for any JSON object: the schema {'type': 'object'}; a dict "
                                "is a JSON Schema, passed on as it is")
    return ("Ollama's request, in your engine's terms: it streams by default, num_predict is max_tokens, the "
            "options the client set reach your engine and the others keep its defaults")


# ---- Step 2: the last line ------------------------------------------------------------------------

def _unit(got: int, want: float) -> str | None:
    """The unit a duration seems to be in, when it is not nanoseconds."""
    if not got:
        return None
    ratio = want / got
    for factor, name in ((1e9, "seconds"), (1e6, "milliseconds"), (1e3, "microseconds")):
        if 0.5 * factor < ratio < 2 * factor:
            return name
    return None


@check("The done line", section=RENDERING,
       nudge="the last line of an Ollama reply is the only one with done true: it says why the answer "
             "stopped, what was counted, and how long each part took, in Ollama's units",
       hint="a line with done True, done_reason from Done's finish_reason, prompt_eval_count and eval_count from "
            "Done's counts, load_duration 0, and three durations from the clock as whole nanoseconds: "
            "total_duration from start to end, prompt_eval_duration from start to first, eval_duration from "
            "first to end (seconds times 1e9, as an int)")
def last_line(done_line: Callable[..., Any], clock_class: Any, done: Any) -> str:
    clock = clock_class()
    clock.start, clock.first, clock.end = 1000.0, 1000.25, 1001.5
    out = done_line(MODEL_ID, "Hello there.", done("length", 23, 8), clock)
    if not isinstance(out, dict):
        raise Mismatch(f"done_line returned {type_name(out)}, not a line (a dict)")
    shown = "done_line(..., 'Hello there.', Done('length', 23, 8), clock)"
    if out.get("done") is not True:
        raise Mismatch(f"{shown} has done={out.get('done')!r}: the last line says done: true, and it is the only one")
    if "done_reason" not in out:
        raise Mismatch(f"{shown} has no done_reason: without it a client cannot tell a finished answer from a cut one",
                       hint="done_reason is Done's finish_reason: 'stop' or 'length'")
    if out["done_reason"] != "length":
        raise Mismatch(f"done_reason is {out['done_reason']!r}; Done says 'length'")
    if "usage" in out or "prompt_tokens" in out:
        raise Mismatch("the line carries OpenAI's token counts: Ollama's are prompt_eval_count and eval_count",
                       section=DIFFER)
    counts = (out.get("prompt_eval_count"), out.get("eval_count"))
    if counts != (23, 8):
        raise Mismatch(f"prompt_eval_count and eval_count are {counts}; Done(..., 23, 8) means 23 prompt tokens "
                       "and 8 in the answer")
    message = out.get("message") or {}
    if message.get("content") != "Hello there.":
        raise Mismatch(f"message.content is {short(message.get('content'))}, not the text given ('Hello there.')")
    want = {"total_duration": 1.5e9, "prompt_eval_duration": 0.25e9, "eval_duration": 1.25e9}
    details = []
    for name, ns in want.items():
        got = out.get(name)
        if got is None:
            details.append(f"{name} is missing")
        elif not isinstance(got, int) or isinstance(got, bool):
            details.append(f"{name} is {got!r}, a {type(got).__name__}: Ollama's durations are whole nanoseconds (int)")
        elif abs(got - ns) > 1000:
            unit = _unit(got, ns)
            details.append(f"{name} is {got:,}" + (f": that is {unit}, not nanoseconds" if unit else
                                                    f", not {int(ns):,}"))
    if details:
        raise Mismatch("with the clock at start 1000.0 s, first event 1000.25 s and end 1001.5 s, the durations are "
                       "wrong", details=details + ["expected total 1,500,000,000, prompt_eval 250,000,000, "
                                                   "eval 1,250,000,000 (nanoseconds)"], section=PITFALLS)
    require_schema(out, "ollama_chat_response", what="the done line")
    quiet = clock_class()
    quiet.start, quiet.first, quiet.end = 5.0, 5.5, 5.5
    empty = done_line(MODEL_ID, "", done("stop", 5, 0), quiet)
    require_schema(empty, "ollama_chat_response", what="the done line of an empty answer (Done('stop', 5, 0))")
    if (empty.get("done_reason"), empty.get("eval_count"), empty.get("eval_duration")) != ("stop", 0, 0):
        raise Mismatch("for Done('stop', 5, 0), with the first event at the end, the line should say done_reason "
                       f"'stop', eval_count 0 and eval_duration 0; it says {empty.get('done_reason')!r}, "
                       f"{empty.get('eval_count')!r} and {empty.get('eval_duration')!r}")
    return "The done line: done_reason, Ollama's counts and three durations in nanoseconds, valid"


# ---- Step 3 onwards: your server, through the official client ---------------------------------------

def _headers(server: Any) -> dict[str, str]:
    key = getattr(server, "api_key", None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def ollama_client(server: Any) -> Any:
    """The official ``ollama`` client on your server: the root URL (no /api, no /v1), and the key if any."""
    import ollama

    return ollama.Client(host=server.root, headers=_headers(server) or None, timeout=120)


def _require_running(server: Any) -> None:
    if not getattr(server, "ready", True) or not getattr(server, "root", None):
        raise Mismatch("your server is not running: the cell that starts it printed why",
                       hint="fix what its log says, run that cell again, then this check")


def _stream_lines(response: Any, what: str) -> list[dict[str, Any]]:
    """The JSON objects of an NDJSON body, strictly: one per line, nothing else."""
    text = response.text
    if not text.strip():
        raise Mismatch(f"{what}: the body is empty")
    raws, out = text.split("\n"), []
    if raws[-1] == "":
        raws.pop()  # the newline after the last line
    for i, raw in enumerate(raws):
        if raw.startswith("data:") or raw.startswith("event:"):
            raise Mismatch(f"{what}: line {i} is an SSE field ({raw[:40]!r}...): NDJSON lines are bare JSON",
                           section=DIFFER)
        if not raw.strip():
            raise Mismatch(f"{what}: line {i} is blank: in NDJSON every line is one JSON object (the ollama "
                           "client parses each line it reads, and an empty one is not JSON)")
        try:
            item = json.loads(raw)
        except ValueError:
            raise Mismatch(f"{what}: line {i} is not JSON: {raw[:80]!r}") from None
        if not isinstance(item, dict):
            raise Mismatch(f"{what}: line {i} is {type_name(item)}, not a JSON object")
        out.append(item)
    return out


CHAT_NUDGE = ("an Ollama client reads a stream as NDJSON, one JSON object per line with no SSE framing, and "
              "gets one when it says nothing; only stream false gets a single object")
CHAT_HINT = ("ndjson_frames yields each line as JSON text plus a newline, encoded; the route returns "
             "ndjson_response of reply_lines when body.stream is true, and the awaited whole_reply otherwise "
             "(never your SSE response)")


@check("POST /api/chat, on a scripted engine", section=RENDERING, nudge=CHAT_NUDGE, hint=CHAT_HINT)
def scripted_chat() -> str:
    """Your app on a real port around a scripted engine (no model, so it takes a second), through the client."""
    from types import SimpleNamespace

    from .fakes import FakeEngine, live_app, package_module

    fake = FakeEngine(pieces=5, delay=0.002)
    app = package_module("app").create_app(package_module("settings").Settings(), engine=fake)
    with _server_log() as raised, live_app(app) as root:
        lines = _chat_exchange(SimpleNamespace(root=root, ready=True, api_key=None, raised=raised))
    return (f"POST /api/chat, on a scripted engine: {len(lines)} NDJSON lines, the last one done; the ollama "
            f"client reads them, streamed and whole")


@check("POST /api/chat, through the ollama client", section=RENDERING, nudge=CHAT_NUDGE, hint=CHAT_HINT)
def chat(server: Any) -> str:
    _require_running(server)
    lines = _chat_exchange(server)
    last = lines[-1]
    return (f"POST /api/chat: {len(lines)} NDJSON lines ending with done_reason {last['done_reason']!r}, and the "
            f"same text through the ollama client, streamed and whole")


@contextlib.contextmanager
def _server_log() -> Iterator[list[str]]:
    """What your app logs while a check serves it in this kernel (its tracebacks), kept for the feedback
    instead of printed: the last line of each exception it logged."""
    import logging

    logger, raised = logging.getLogger("myserver"), []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                raised.append(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")

    handler, propagate = Keep(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield raised
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _why_500(server: Any) -> list[str]:
    raised = getattr(server, "raised", None)
    if raised:
        return [f"your code raised {raised[-1]}"]
    if callable(getattr(server, "log", None)):
        return ["the end of your server's log (print(server.log()) shows more):"] + server.log(3).splitlines()
    return []


def _chat_exchange(server: Any) -> list[dict[str, Any]]:
    """The same greedy chat, raw without 'stream', then through the client whole and streamed; the raw lines."""
    import httpx
    import ollama

    body = {"model": MODEL_ID, "messages": HI, "options": GREEDY}
    started = time.perf_counter()
    r = httpx.post(f"{server.root}/api/chat", json=body, headers=_headers(server), timeout=120)
    wall = time.perf_counter() - started
    if r.status_code != 200:
        raise Mismatch(f"POST /api/chat without 'stream' answered {r.status_code}",
                       details=[f"body: {r.text[:200]!r}"] + (_why_500(server) if r.status_code == 500 else []))
    kind = r.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        raise Mismatch("your server answered Server-Sent Events (text/event-stream): Ollama's stream is NDJSON, "
                       "one JSON object per line, with no 'data:' and no [DONE]", section=DIFFER,
                       details=[f"first bytes: {r.text[:80]!r}"])
    if kind.startswith("application/json"):
        raise Mismatch("a request that does not mention stream got one JSON object: Ollama streams unless the "
                       "request says stream: false", section=PITFALLS,
                       hint="give ChatRequest's stream the default True, and stream when it is true")
    if not kind.startswith("application/x-ndjson"):
        raise Mismatch(f"the stream's content-type is {kind!r}, not application/x-ndjson")
    lines = _stream_lines(r, "the stream")
    for i, item in enumerate(lines):
        problems = schema_problems(item, "ollama_chat_response")
        if problems:
            raise Mismatch(f"line {i} of the stream is not a valid Ollama chat line", details=problems[:4],
                           hint="each line comes from line() or done_line(): compare the one that fails with "
                                "schemas/ollama_chat_response.schema.json")
    dones = [item["done"] for item in lines]
    if dones != [False] * (len(lines) - 1) + [True]:
        raise Mismatch(f"done is {dones}: false on every line but the last, which is the done line")
    last = lines[-1]
    if last["eval_count"] > GREEDY["num_predict"]:
        raise Mismatch(f"eval_count is {last['eval_count']} for num_predict {GREEDY['num_predict']}: the option "
                       "did not reach your engine")
    total = last["total_duration"]
    if total < 1_000_000:
        raise Mismatch(f"total_duration is {total:,}, less than a millisecond in nanoseconds, for a request that "
                       f"took {wall * 1000:.0f} ms: is it in milliseconds?", section=PITFALLS)
    if total > (wall + 1.0) * 1e9:
        raise Mismatch(f"total_duration is {total:,} ns ({total / 1e9:.1f} s), but the whole request took "
                       f"{wall:.2f} s")
    if last.get("prompt_eval_duration", 0) + last.get("eval_duration", 0) > total + 1_000_000:
        raise Mismatch("prompt_eval_duration and eval_duration add up to more than total_duration")
    text = "".join(item["message"]["content"] for item in lines)
    client = ollama_client(server)
    try:
        whole = client.chat(model=MODEL_ID, messages=HI, options=GREEDY, stream=False)
    except json.JSONDecodeError:
        raise Mismatch("with stream: false the ollama client could not read your answer as one JSON object",
                       hint="when body.stream is false, return the awaited whole_reply: one object") from None
    except ollama.ResponseError as exc:
        raise Mismatch(f"with stream: false the ollama client got an error: {exc}") from None
    if whole.message.content != text or not whole.done:
        raise Mismatch("with stream: false the answer differs from the stream's at temperature 0",
                       details=[f"streamed: {text!r}", f"whole:    {whole.message.content!r} (done={whole.done})"],
                       hint="answer stream: false with whole_reply, from the same engine call")
    try:
        streamed = list(client.chat(model=MODEL_ID, messages=HI, options=GREEDY, stream=True))
    except json.JSONDecodeError as exc:
        raise Mismatch(f"with stream: true the ollama client could not read a line as JSON ({exc})") from None
    joined = "".join(part.message.content or "" for part in streamed)
    if joined != text or not streamed[-1].done or streamed[-1].eval_count != whole.eval_count:
        raise Mismatch("through the ollama client with stream=True, the reply differs from the others",
                       details=[f"stream=True: {joined!r}, done={streamed[-1].done}, eval_count={streamed[-1].eval_count}",
                                f"stream=False: {whole.message.content!r}, eval_count={whole.eval_count}"])
    return lines


@check("GET /api/tags, through the ollama client", section=WEBUI,
       nudge="Ollama's clients (and Open WebUI's model picker) read the model list in Ollama's shape, not "
             "in OpenAI's",
       hint="answer a dict whose one key 'models' holds a list with one entry: 'name' and 'model' both your "
            "model's id, then everything model_facts gives (size, digest, modified_at, details)")
def tags(server: Any) -> str:
    import httpx

    _require_running(server)
    r = httpx.get(f"{server.root}/api/tags", headers=_headers(server), timeout=30)
    if r.status_code != 200:
        raise Mismatch(f"GET /api/tags answered {r.status_code}", details=[f"body: {r.text[:200]!r}"])
    listed = r.json()
    if isinstance(listed, dict) and "data" in listed and "models" not in listed:
        raise Mismatch("GET /api/tags answered OpenAI's list ({'object': 'list', 'data': [...]}): Ollama's is "
                       "{'models': [...]}", section=DIFFER)
    require_schema(listed, "ollama_model_list", what="the answer to GET /api/tags")
    models = ollama_client(server).list().models
    if [m.model for m in models] != [MODEL_ID]:
        raise Mismatch(f"the ollama client lists {[m.model for m in models]}, not [{MODEL_ID!r}]",
                       hint="one entry, with your engine's model_id as both 'name' and 'model'")
    version = httpx.get(f"{server.root}/api/version", headers=_headers(server), timeout=30)
    require_schema(version.json() if version.status_code == 200 else None, "ollama_version",
                   what=f"GET /api/version ({version.status_code})")
    entry = listed["models"][0]
    return (f"GET /api/tags: {entry['model']} ({entry['size'] / 1e6:.0f} MB, "
            f"{entry['details']['quantization_level'] or 'quantization unknown here'}), listed by the ollama client")


def _error_body(r: Any, what: str, status: int, schema: str) -> dict[str, Any]:
    if r.status_code != status:
        raise Mismatch(f"{what} answered {r.status_code}, not {status}", details=[f"body: {r.text[:200]!r}"])
    try:
        body = r.json()
    except ValueError:
        raise Mismatch(f"{what}: the {status} is not JSON: {r.text[:120]!r}") from None
    problems = schema_problems(body, schema)
    if problems:
        other = "OpenAI's" if schema == "ollama_error" else "Ollama's"
        raise Mismatch(f"{what}: the {status} is not in {'Ollama' if schema == 'ollama_error' else 'OpenAI'}'s "
                       f"envelope: {short(body, 100)}", details=problems[:3] + ([
                           f"it looks like {other} envelope"] if "error" in body else []))
    return body


@check("Ollama's errors on /api/*", section=ERRORS,
       nudge="every error leaves through your four handlers; the protocol a client speaks is in the path it "
             "called, so the handlers' answer can be reshaped by path, and only there",
       hint="in reshaped, find the registered prefix the request's path starts with; for that one, read the "
            "'error' object of the response's JSON body, and return with_body of the response and that "
            "protocol's envelope of it; with no matching prefix, return the response unchanged")
def envelope(server: Any) -> str:
    import httpx
    import ollama

    _require_running(server)
    try:
        ollama_client(server).chat(model=UNKNOWN, messages=HI, options={"num_predict": 1})
    except ollama.ResponseError as exc:
        if isinstance(exc.error, dict):
            raise Mismatch("the ollama client got OpenAI's envelope for an unknown model: its users see a dict",
                           details=[f"error: {short(exc.error, 100)}"],
                           hint="reshape errors on /api/ with the envelope registered for that prefix") from None
        if exc.status_code != 404 or exc.error != f"model '{UNKNOWN}' not found":
            raise Mismatch(f"an unknown model gave status {exc.status_code} and error {exc.error!r}; Ollama says "
                           f"404 and \"model '{UNKNOWN}' not found\"") from None
    else:
        raise Mismatch(f"a chat with model {UNKNOWN!r} was answered: your server serves {MODEL_ID} only")
    root, auth = server.root, _headers(server)
    bad = httpx.post(f"{root}/api/chat", headers=auth, timeout=30,
                     json={"model": MODEL_ID, "messages": HI, "options": {"temperature": "hot"}})
    said = _error_body(bad, "a chat with options.temperature 'hot'", 400, "ollama_error")["error"]
    if "temperature" not in said:
        raise Mismatch(f"the 400 for options.temperature 'hot' says {said!r}: name the field")
    _error_body(httpx.post(f"{root}/api/pull", headers=auth, json={"model": MODEL_ID}, timeout=30),
                "POST /api/pull (a route your server does not have)", 404, "ollama_error")
    if auth:
        nokey = httpx.get(f"{root}/api/tags", timeout=30)
        _error_body(nokey, "GET /api/tags without the API key", 401, "ollama_error")
        if "bearer" not in nokey.headers.get("www-authenticate", "").lower():
            raise Mismatch("the 401 on /api/tags lost its WWW-Authenticate header",
                           hint="with_body keeps the response's status and headers: reshape the response, do not "
                                "build a new one without them")
        _error_body(httpx.get(f"{root}/v1/models", timeout=30), "GET /v1/models without the API key", 401, "error")
    _error_body(httpx.get(f"{root}/v1/models/{UNKNOWN}", headers=auth, timeout=30),
                f"GET /v1/models/{UNKNOWN}", 404, "error")
    _error_body(httpx.post(f"{root}/v1/chat/completions", headers=auth, timeout=30,
                           json={"model": MODEL_ID, "messages": HI, "temperature": "hot"}),
                "a /v1 chat with temperature 'hot'", 400, "error")
    return ("Ollama's errors on /api/*: {\"error\": \"...\"} for an unknown model (404), a bad option (400), an "
            "unknown route (404)" + (" and a missing key (401)" if auth else "") + "; /v1 keeps OpenAI's envelope")
