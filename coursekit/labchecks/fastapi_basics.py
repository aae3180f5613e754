"""Checks for lab 03: your package's worker, lifespan, /v1/models and a non-streamed chat route."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short, type_name
from ..checks import hint as hint  # check.hint(check.worker): the concrete hint, on request
from ..model import MODEL_ID

SHAPING = Section("02-openai-format", "A request and its response")
ROUTES = Section("03-fastapi-basics", "The app factory")
REQUESTS = Section("03-fastapi-basics", "Request models: OpenAI's names, OpenAI's rules")
CLIENT = Section("01-api-design", "What a client actually depends on")
ONE_MODEL = Section("01-api-design", "One model, one name")



#: what the engine yields for one answer (then a Done): the input of collect
SAMPLE_PIECES = ["The capital", " of France", " is Paris"]
SAMPLE_DONE = ("length", 31, 7)
SAMPLE_META = {"id": "chatcmpl-lab3example", "created": 1748779200, "model": MODEL_ID}
LOADING = Section("03-fastapi-basics", "Loading the model without blocking startup")
BLOCKING = Section("03-fastapi-basics", "Async endpoints and blocking work")


def _json(response: Any, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise Mismatch(f"{what} answered {response.status_code} with a body that is not JSON: "
                       f"{response.text[:120]!r}") from None


@check("collect", section=SHAPING,
       nudge="a whole answer is what the stream of events adds up to: its text, why it stopped, what it "
             "cost; the route knows the rest",
       hint="join the str events into the content; the Done event (the one that is not a str) gives "
            "finish_reason and the usage counts; id, created and model come from meta")
def collecting(collect: Callable[[Any, dict[str, Any]], Any], done: Callable[..., Any]) -> str:
    events = [*SAMPLE_PIECES, done(*SAMPLE_DONE)]
    out = collect(iter(events), dict(SAMPLE_META))
    require_schema(out, "chat_completion_response", what="collect(events, meta)")
    details = []
    for key in ("id", "created", "model"):
        if out[key] != SAMPLE_META[key]:
            details.append(f"{key} is {short(out[key])}: take it from meta ({short(SAMPLE_META[key])}), "
                           "the route chose it")
    content = out["choices"][0]["message"]["content"]
    if content != "".join(SAMPLE_PIECES):
        details.append(f"content is {short(content)}: it should be the pieces joined, "
                       f"{''.join(SAMPLE_PIECES)!r}")
    if out["choices"][0]["finish_reason"] != "length":
        details.append("finish_reason should come from Done ('length' here: max_tokens cut the text)")
    if out["usage"] != {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38}:
        details.append(f"usage is {short(out['usage'])}: Done(..., 31, 7) means 31 prompt tokens, "
                       "7 completion tokens, 38 in total")
    if details:
        raise Mismatch("a valid chat.completion, but with the wrong values", details=details)
    stopped = collect(iter(["Hi.", done("stop", 12, 2)]), dict(SAMPLE_META))
    if stopped["choices"][0]["finish_reason"] != "stop":
        raise Mismatch("with Done('stop', ...) the finish_reason should be 'stop'")
    return "collect: a valid chat.completion, with the route's id and the engine's text and counts"


@check("The worker", section=BLOCKING,
       nudge="a blocking call must not run on the event loop's thread: hand it to another thread and "
             "await the result",
       hint="submit the call with its arguments to the worker's one-thread pool, turn the concurrent future "
            "it gives into an asyncio one, and await that")
def worker(worker_class: Callable[[int], Any]) -> str:
    import asyncio
    import threading

    from .fakes import run_async

    w = worker_class(4)
    seen: list[tuple[str, Any]] = []

    def blocking(x: Any, pause: float = 0.3) -> Any:
        seen.append((threading.current_thread().name, x))
        time.sleep(pause)
        return x * 2

    async def main() -> tuple[Any, int, str, list[Any]]:
        ticks = 0
        loop_thread = threading.current_thread().name

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            call = w.run(blocking, 21)
            if not asyncio.iscoroutine(call) and not asyncio.isfuture(call):
                raise Mismatch(f"Worker.run(...) returned {type_name(call)}: it should be awaited "
                               "(an async def that awaits the pool's future)")
            result = await call
            during = ticks
            both = await asyncio.gather(w.run(blocking, 1, 0.05), w.run(blocking, 2, 0.05))
        finally:
            task.cancel()
        return result, during, loop_thread, both

    try:
        result, ticks, loop_thread, both = run_async(main)
    finally:
        with contextlib.suppress(Exception):
            w.close()
    if result is None:
        raise Mismatch("await worker.run(fn, 21) gave None: return (await) the result of the call")
    if result != 42:
        raise Mismatch(f"await worker.run(fn, 21) gave {short(result)}, not fn(21) = 42: pass the arguments on")
    threads = {name for name, _ in seen}
    if loop_thread in threads:
        raise Mismatch("the call ran on the event loop's own thread: while the model runs, no other request "
                       "could be served", hint="submit it to self.pool instead of calling it")
    if len(threads) != 1 or not all(name.startswith("model") for name in threads):
        raise Mismatch(f"the calls ran on {sorted(threads)}: every model call must run on the worker's one "
                       "thread (self.pool), never on a thread pool of several")
    if ticks < 3:
        raise Mismatch(f"the event loop ticked {ticks} times during a 0.3 s call: it was blocked")
    if both != [2, 4] or [x for _, x in seen[1:]] != [1, 2]:
        raise Mismatch("two calls at once should run one after the other, in order, and each return its result")
    return "The worker: calls run on one worker thread, in order, while the event loop keeps serving"


@check("Loading at startup", section=LOADING,
       nudge="the server answers (503 on /health) while the model loads: the load starts at startup, but "
             "startup does not wait for it",
       hint="before its yield, the lifespan starts a background task that runs the engine's load on the "
            "worker; after the yield it waits for that task")
def startup(http: Any) -> str:
    from fastapi.testclient import TestClient

    from .fakes import FakeEngine, package_module

    r = http.get("/health")
    body = _json(r, "GET /health")
    if r.status_code != 200:
        code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        if code == "model_not_loaded":
            raise Mismatch("/health says the model is not loading: nothing started it",
                           details=[f"body: {short(body)}"])
        raise Mismatch(f"GET /health answered {r.status_code}: the model is not ready", details=[f"body: {short(body)}"])
    slow = FakeEngine(load_seconds=1.0)
    app = package_module("app").create_app(package_module("settings").Settings(), engine=slow)
    client = TestClient(app, raise_server_exceptions=False)
    start = time.monotonic()
    client.__enter__()
    try:
        started = time.monotonic() - start
        early = client.get("/health")
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = client.get("/health").status_code
    finally:
        client.__exit__(None, None, None)
    if started >= 0.9:
        raise Mismatch(f"with a model that takes 1 s to load, the app took {started:.1f} s to start: the lifespan "
                       "waited for the load before its yield, so the server looked dead meanwhile")
    if early.status_code != 503:
        raise Mismatch(f"while the model loads, /health should answer 503, not {early.status_code}")
    if ready != 200:
        raise Mismatch("the model's load was started but /health never became 200 (is the task awaited?)")
    if slow.load_thread and not slow.load_thread.startswith("model"):
        raise Mismatch(f"the load ran on {slow.load_thread!r}: run it on the worker (app.state.worker.run), "
                       "so that every llama.cpp call happens on the same thread")
    return f"Loading at startup: the app starts in {started * 1000:.0f} ms, /health says 503 until the model is ready"


@check("GET /v1/models", section=ROUTES,
       nudge="a handler returns plain data and FastAPI writes the JSON; the body is OpenAI's model list",
       hint="a dict with object 'list' and data, a list holding the one model card of the engine")
def models_endpoint(http: Any) -> str:
    r = http.get("/v1/models")
    if r.status_code != 200:
        raise Mismatch(f"GET /v1/models answered {r.status_code}, not 200",
                       details=[f"body: {r.text[:160]!r}"])
    body = _json(r, "GET /v1/models")
    require_schema(body, "model_list", what="the body of GET /v1/models")
    ids = [m["id"] for m in body["data"]]
    if MODEL_ID not in ids:
        raise Mismatch(f"the list holds {ids}, not {MODEL_ID!r}")
    return f"GET /v1/models: 200, a valid model list with {MODEL_ID}"


@check("POST /v1/chat/completions", section=REQUESTS,
       nudge="the model runs on the worker thread, for every request, and the handler shapes what it "
             "made into a chat.completion",
       hint="await the worker running the engine's generate with this request's messages, max_tokens and "
            "sampling, consumed into a list there (a generator runs where it is read); then collect the "
            "events with meta")
def chat_endpoint(http: Any) -> str:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8, "temperature": 0}
    r = http.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        raise Mismatch(f"POST /v1/chat/completions answered {r.status_code}, not 200",
                       details=[f"body: {r.text[:160]!r}"])
    out = _json(r, "POST /v1/chat/completions")
    if out is None:
        raise Mismatch("POST /v1/chat/completions answered 200 with null: the handler returned None",
                       hint="the handler must return the response dict")
    require_schema(out, "chat_completion_response", what="the body of POST /v1/chat/completions")
    details = []
    if out["model"] != MODEL_ID:
        details.append(f"model is {short(out['model'])}, not {MODEL_ID!r}")
    if out["usage"]["completion_tokens"] > 8:
        details.append(f"{out['usage']['completion_tokens']} completion tokens for max_tokens=8: pass "
                       "the request's max_tokens to llama.cpp")
    if details:
        raise Mismatch("valid, but not an answer to this request", details=details)
    fresh = _asks_the_model(body)
    if fresh:
        raise Mismatch("the answer does not come from the model for this request", details=fresh,
                       hint="every request runs engine.generate (on the worker) with the request's messages and "
                            "max_tokens; nothing is kept from an earlier request")
    return (f"POST /v1/chat/completions: 200, valid, {out['usage']['completion_tokens']} tokens, "
            f"finish_reason {out['choices'][0]['finish_reason']!r}")


def _asks_the_model(body: dict[str, Any]) -> list[str]:
    """What is wrong when two requests go to an app around a scripted engine (empty when each asks it)."""
    from fastapi.testclient import TestClient

    from .fakes import FakeEngine, package_module

    fake = FakeEngine(pieces=6)
    app = package_module("app").create_app(package_module("settings").Settings(), engine=fake)
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        answers = [client.post("/v1/chat/completions", json={**body, "max_tokens": n}) for n in (2, 4)]
    problems = []
    if fake.started < 2:
        problems.append(f"two requests ran the engine {fake.started} time{'s' if fake.started != 1 else ''}: "
                        "an answer kept from before is not an answer to this request")
    for n, r in zip((2, 4), answers):
        try:
            text = r.json()["choices"][0]["message"]["content"]
        except Exception:
            problems.append(f"with max_tokens={n} the app answered {r.status_code}: {r.text[:120]!r}")
            continue
        want = "".join(f" {i}" for i in range(n))
        if text.strip() != want.strip():
            problems.append(f"with max_tokens={n}, an engine that says {want!r} got the answer {text!r}")
    return problems


@check("Stretch: GET /v1/models/{id}", section=ONE_MODEL,
       nudge="a path parameter picks one item of a collection; an id that is not there is a 404 in the "
             "envelope",
       hint="the given require_model raises the 404 for an unknown id; otherwise the handler returns the "
            "engine's model card")
def retrieve_endpoint(http: Any) -> str:
    r = http.get(f"/v1/models/{MODEL_ID}")
    if r.status_code != 200:
        raise Mismatch(f"GET /v1/models/{MODEL_ID} answered {r.status_code}, not 200")
    require_schema(_json(r, "GET /v1/models/{id}"), "model", what=f"the body of GET /v1/models/{MODEL_ID}")
    r = http.get("/v1/models/gpt-4o")
    if r.status_code != 404:
        raise Mismatch(f"GET /v1/models/gpt-4o answered {r.status_code}: an unknown model is 404")
    body = _json(r, "GET /v1/models/gpt-4o")
    require_schema(body, "error", what="the body of GET /v1/models/gpt-4o")
    if body["error"]["code"] != "model_not_found":
        raise Mismatch(f"the error code is {body['error']['code']!r}, not 'model_not_found'")
    return "Stretch: GET /v1/models/{id}: 200 for the served model, OpenAI's 404 for any other"



SECTIONS = (SHAPING, ROUTES, REQUESTS, CLIENT, ONE_MODEL, LOADING, BLOCKING)
