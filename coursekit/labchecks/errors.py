"""Checks for lab 05: every failure in OpenAI's envelope, and a client that retries only what helps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, schema_problems, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request
from ..model import MODEL_ID

ENVELOPE = Section("05-errors", "The envelope")
STATUS = Section("05-errors", "Status codes, and what the official client does with each")
CONTEXT = Section("05-errors", "The context window")
OTHER = Section("05-errors", "Every other failure, in the same shape")
OVERLOAD = Section("05-errors", "Overload: 429 and Retry-After")
AUTH = Section("05-errors", "Authentication: 401")
CLIENT = Section("05-errors", "What a client sees")
PITFALLS = Section("05-errors", "Pitfalls that break real clients")
VALIDATION = Section("03-fastapi-basics", "Validation errors in OpenAI's shape")
SECTIONS = (ENVELOPE, STATUS, CONTEXT, OTHER, OVERLOAD, AUTH, CLIENT, PITFALLS, VALIDATION)

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


def _error(response: Any, what: str, status: int, *, param: Any = ..., code: Any = ...,
           type: str | None = None) -> dict[str, Any]:
    """The envelope of ``response`` after checking its status, shape and the given fields."""
    try:
        body = response.json()
    except ValueError:
        raise Mismatch(f"{what} answered {response.status_code} with a body that is not JSON: "
                       f"{response.text[:100]!r}", hint="every error handler returns a JSONResponse") from None
    if isinstance(body, dict) and "detail" in body:
        raise Mismatch(f"{what} answered {response.status_code} with FastAPI's {{\"detail\": ...}}, not the "
                       "OpenAI envelope", details=[f"body: {short(body)}"], section=PITFALLS,
                       hint="this failure still goes through one of FastAPI's default handlers: replace it")
    if response.status_code != status:
        raise Mismatch(f"{what} answered {response.status_code}, not {status}", details=[f"body: {short(body)}"])
    problems = schema_problems(body, "error")
    if problems:
        raise Mismatch(f"the body of {what} is not a valid error envelope", details=problems, section=ENVELOPE)
    e = body["error"]
    wrong = []
    if param is not ... and e["param"] != param:
        wrong.append(f"param is {short(e['param'])}, expected {short(param)}")
    if code is not ... and e["code"] != code:
        wrong.append(f"code is {short(e['code'])}, expected {short(code)}")
    if type is not None and e["type"] != type:
        wrong.append(f"type is {short(e['type'])}, expected {type!r}")
    if wrong:
        raise Mismatch(f"{what}: {status} in the envelope, but the fields are off", details=wrong)
    return e


# ---- Step 2: validation ---------------------------------------------------------------------------

LOCATIONS = [
    (("body", "temperature"), "temperature"),
    (("body", "messages"), "messages"),
    (("body", "messages", 0, "content"), "messages[0].content"),
    (("body", "messages", 2, "role"), "messages[2].role"),
    (("body", "stream_options", "include_usage"), "stream_options.include_usage"),
    (("body",), None),
]


@check("param from a location", section=VALIDATION,
       nudge="FastAPI says where a value failed as a path through the request; param is that path as "
             "the client wrote the field",
       hint="drop the leading 'body'; join names with '.', put indexes in brackets; nothing left means None")
def param_from_loc(fn: Callable[[tuple[Any, ...]], Any]) -> str:
    wrong = []
    for loc, want in LOCATIONS:
        got = fn(loc)
        if got != want:
            wrong.append(f"param_from_loc({loc!r}) is {got!r}, expected {want!r}")
    if wrong:
        raise Mismatch(f"{len(wrong)} of {len(LOCATIONS)} locations are turned into the wrong param", details=wrong)
    return "param from a location: ('body', 'messages', 0, 'content') is messages[0].content"


@check("Validation errors are 400", section=VALIDATION,
       nudge="FastAPI's 422 for a body that does not fit the model is, for an OpenAI client, a 400 in the "
             "envelope",
       hint="a handler for FastAPI's validation error: status 400, type invalid_request_error, param from "
            "the first error's location (null when the JSON itself is broken)")
def validation(http: Any, headers: dict[str, str]) -> str:
    url = "/v1/chat/completions"
    _error(http.post(url, json={**CHAT, "temperature": "hot"}, headers=headers),
           "a request with temperature 'hot'", 400, param="temperature", type="invalid_request_error")
    _error(http.post(url, json={"model": MODEL_ID}, headers=headers),
           "a request without messages", 400, param="messages")
    _error(http.post(url, json={**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, headers=headers),
           "a message with role 'wizard'", 400, param="messages[0].role")
    broken = http.post(url, content=b'{"model": ', headers={**headers, "Content-Type": "application/json"})
    _error(broken, "a body that is not JSON", 400, param=None)
    return "Validation errors are 400: in the envelope, with the field to blame in param"


@check("Every other failure, in the envelope", section=OTHER,
       nudge="every failure the client can see, the framework's and your bugs too, is an envelope; a bug's "
             "details go to the log, not to the client",
       hint="a handler for Starlette's HTTP exception covering 404 and 405 (keep its headers: 405 carries "
            "Allow), and a handler for any exception that logs the traceback and answers a fixed 500 message")
def other_failures(http: Any, headers: dict[str, str], server_log: list[str]) -> str:
    _error(http.get("/v1/engines", headers=headers), "GET /v1/engines (no such route)", 404,
           type="invalid_request_error")
    wrong_method = http.delete("/v1/chat/completions", headers=headers)
    _error(wrong_method, "DELETE /v1/chat/completions", 405, type="invalid_request_error")
    if "allow" not in {k.lower() for k in wrong_method.headers}:
        raise Mismatch("the 405 lost its Allow header: pass headers=exc.headers to the JSONResponse")
    before = len(server_log)
    crash = http.get("/v1/debug/crash", headers=headers)
    e = _error(crash, "a route that raises RuntimeError", 500, type="server_error")
    leaked = [word for word in ("hunter2", "RuntimeError", "Traceback", "File \"") if word in crash.text]
    if leaked:
        raise Mismatch(f"the 500 response shows {', '.join(repr(w) for w in leaked)}: an exception's text "
                       "may hold secrets and file paths", details=[f"message: {e['message'][:120]!r}"],
                       hint="answer a fixed message, e.g. 'The server had an error while processing your request.'")
    if len(server_log) == before or "hunter2" not in "\n".join(server_log[before:]):
        raise Mismatch("the 500 is right, but the server log did not get the traceback: "
                       "log.error(..., exc_info=exc) in the handler, so whoever runs the server can find the bug")
    return "Every other failure, in the envelope: 404 and 405 as OpenAI sends them; a 500 that hides the bug"


# ---- Step 3: the route's own errors -------------------------------------------------------------

@check("The server's own errors", section=CONTEXT,
       nudge="errors the server finds itself are raised as API errors before any work starts: a wrong key, "
             "a prompt too long for the context",
       hint="require_api_key raises the invalid-key error; check_context raises the context-length error with "
            "param 'messages' when the prompt alone is too long, 'max_tokens' when the answer would not fit")
def route_errors(http: Any, key: str, engine: Any) -> str:
    url = "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        no_key = http.post(url, json=CHAT)
        _error(no_key, "a request without an Authorization header", 401, code="invalid_api_key")
        if "www-authenticate" not in {k.lower() for k in no_key.headers}:
            raise Mismatch("the 401 has no WWW-Authenticate header", section=AUTH)
        _error(http.post(url, json=CHAT, headers={"Authorization": "Bearer sk-wrong"}),
               "a request with a wrong key", 401, code="invalid_api_key")
    except Mismatch as m:
        raise Mismatch(m.what, details=m.details, section=AUTH,
                       hint="require_api_key: no header, or not 'Bearer <key>', or a key not among the "
                            "server's keys -> raise invalid_api_key(message)") from None
    _error(http.post(url, json={**CHAT, "model": "gpt-4o"}, headers=headers), "model 'gpt-4o'", 404,
           param="model", code="model_not_found")
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}
    _error(http.post(url, json=long, headers=headers), "a 2000-word message", 400, param="messages",
           code="context_length_exceeded")
    _error(http.post(url, json={**CHAT, "max_tokens": 2000}, headers=headers), "max_tokens 2000", 400,
           param="max_tokens", code="context_length_exceeded")
    before = engine.state
    engine.state = "loading"  # as if the model were still loading
    try:
        loading = http.post(url, json=CHAT, headers=headers)
    finally:
        engine.state = before
    try:
        _error(loading, "a request while the model loads", 503, code="model_loading", type="server_error")
    except Mismatch as m:
        raise Mismatch(m.what, details=m.details, section=OVERLOAD) from None
    if not loading.headers.get("retry-after", "").strip().isdigit():
        raise Mismatch("the 503 has no Retry-After header (in seconds): clients would not know when to retry",
                       section=OVERLOAD)
    ok = http.post(url, json=CHAT, headers=headers)
    if ok.status_code != 200:
        raise Mismatch(f"a correct request answered {ok.status_code}: {ok.text[:120]!r}")
    return "The server's own errors: 401, 404 model_not_found, 400 context_length_exceeded, 503 with Retry-After"


# ---- Step 5: retries ---------------------------------------------------------------------------------

@check("Backoff with jitter", section=OVERLOAD,
       nudge="retries wait longer each time, each client a bit differently, and the server's Retry-After "
             "overrules the guess",
       hint="without Retry-After: BASE doubled per attempt, capped at CAP, then jittered by the random factor "
            "rand gives (at least half, at most all of it); with a numeric Retry-After: exactly that many seconds")
def backoff(backoff_delay: Callable[..., Any]) -> str:
    def delay(attempt: int, retry_after: Any = None, r: float = 0.5) -> float:
        value = backoff_delay(attempt, retry_after, rand=lambda: r)
        if not isinstance(value, (int, float)):
            raise Mismatch(f"backoff_delay({attempt}) returned {type_name(value)}, not a number of seconds")
        return float(value)

    full = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    tops = [delay(a, r=0.999999) for a in range(6)]
    lows = [delay(a, r=0.0) for a in range(6)]
    wrong = []
    for attempt, (top, low, cap) in enumerate(zip(tops, lows, full)):
        if not (cap * 0.99 <= top <= cap * 1.01):
            wrong.append(f"attempt {attempt} with rand() near 1 waits {top:.3g} s; expected about {cap:g} s")
    if wrong:
        raise Mismatch("the delays do not double from BASE up to CAP", details=wrong[:4])
    short_waits = [f"attempt {a} with rand() = 0 waits {low:.3g} s; expected at least {cap / 2:g} s"
                   for a, (low, cap) in enumerate(zip(lows, full)) if not (cap * 0.5 * 0.99 <= low <= cap * 1.01)]
    if short_waits and all(abs(t - lo) > 1e-9 for t, lo in zip(tops, lows)):
        raise Mismatch("with rand() near 0 your client barely waits: jitter spreads the retries, it should not "
                       "cancel the backoff (a wait near 0 s hits the overloaded server again at once)",
                       details=short_waits[:3],
                       hint="keep at least half of the delay: delay * (0.5 + rand() / 2)")
    if all(abs(t - lo) < 1e-9 for t, lo in zip(tops, lows)):
        raise Mismatch("the delay does not depend on rand(): without jitter, every client that failed at the "
                       "same moment retries at the same moment, and the server fails again",
                       hint="multiply by a random factor, e.g. delay * (0.5 + rand() / 2)")
    if delay(0, "2") != 2.0 or delay(3, "7") != 7.0:
        raise Mismatch(f"with Retry-After '2' you wait {delay(0, '2'):g} s: wait what the server says",
                       hint="float(retry_after), without jitter: the server knows when it will be ready")
    fallback = delay(1, "Wed, 21 Oct 2015 07:28:00 GMT")
    if not (0 <= fallback <= 1.0):
        raise Mismatch(f"with a Retry-After that is not a number you wait {fallback:g} s: fall back to the backoff")
    return f"Backoff with jitter: {', '.join(f'{d:.2g}' for d in tops[:5])} s at most, and Retry-After is honoured"


@check("Retry only what can succeed", section=STATUS,
       nudge="retry only what a second try can fix: a dropped connection, a 429, a 503; a 400 fails again",
       hint="up to max_retries + 1 tries: on a transport error or a status in RETRYABLE, sleep the backoff "
            "delay (with the response's Retry-After) and try again; otherwise return the response")
def retries(send_with_retries: Callable[..., Any], flaky_server: Callable[..., Any]) -> str:
    import httpx

    def run(send: Callable[[], Any], **kwargs: Any) -> tuple[Any, list[float]]:
        waits: list[float] = []
        start = time.monotonic()
        result = send_with_retries(send, sleep=waits.append, rand=lambda: 0.5, **kwargs)
        if time.monotonic() - start > 1.0 and not waits:
            raise Mismatch("send_with_retries slept for real: call the sleep it was given, so tests "
                           "(and this check) need not wait")
        return result, waits

    def post(server: Any) -> Callable[[], Any]:
        return lambda: server.post("/v1/chat/completions", json=CHAT)

    server = flaky_server(2)
    result, waits = run(post(server))
    if getattr(result, "status_code", None) != 200:
        raise Mismatch(f"against a server that fails twice with 503 then succeeds, you returned "
                       f"{getattr(result, 'status_code', type_name(result))}, not the 200 response")
    if server.app.state.calls != 3 or len(waits) != 2:
        raise Mismatch(f"{server.app.state.calls} attempts and {len(waits)} sleeps; expected 3 attempts, 2 sleeps")
    if not waits[0] < waits[1]:
        raise Mismatch(f"the waits were {waits}: each wait should be longer than the last")

    server = flaky_server(1, status=429, headers={"Retry-After": "3"})
    result, waits = run(post(server))
    if waits != [3.0] or getattr(result, "status_code", None) != 200:
        raise Mismatch(f"a 429 with Retry-After: 3 then a 200 gave waits {waits} and "
                       f"{getattr(result, 'status_code', result)}; expected one wait of 3 s, then the 200",
                       section=OVERLOAD)

    for status in (400, 401, 404, 422):
        server = flaky_server(5, status=status)
        result, waits = run(post(server))
        if server.app.state.calls != 1 or waits:
            raise Mismatch(f"a {status} was sent {server.app.state.calls} times: the same request will fail "
                           "the same way, so it is never retried", hint="RETRYABLE holds 429 and 503 only")
        if getattr(result, "status_code", None) != status:
            raise Mismatch(f"after a {status} return that response, so the caller can read its error")

    server = flaky_server(100)
    result, waits = run(post(server), max_retries=3)
    if server.app.state.calls != 4 or getattr(result, "status_code", None) != 503:
        raise Mismatch(f"a server that always answers 503 got {server.app.state.calls} attempts with "
                       "max_retries=3, and you returned "
                       f"{getattr(result, 'status_code', type_name(result))}; expected 4 attempts, then the last 503")

    attempts = []

    def refused() -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"ok": True})
    result, waits = run(refused)
    if len(attempts) != 3 or getattr(result, "status_code", None) != 200:
        got = getattr(result, "status_code", repr(result))
        raise Mismatch("two connection errors then a 200 should give 3 attempts and the 200",
                       details=[f"attempts: {len(attempts)}, result: {short(got)}"])
    attempts.clear()

    def down() -> Any:
        attempts.append(1)
        raise httpx.ConnectError("connection refused")
    try:
        run(down, max_retries=2)
    except httpx.ConnectError:
        pass
    else:
        raise Mismatch("when the server stays unreachable, raise the last connection error after the "
                       "retries: there is no response to return")
    if len(attempts) != 3:
        raise Mismatch(f"an unreachable server got {len(attempts)} attempts with max_retries=2, not 3")
    return "Retry only what can succeed: 429, 503 and connection errors, never 400, 401, 404 or 422"


@check("A full queue is a 429", section=OVERLOAD,
       nudge="a bounded queue refuses at once when it is full, so the client can retry later instead of "
             "waiting without end",
       hint="in the worker's reserve: when the jobs already there exceed max_queue (one running, max_queue "
            "waiting), raise the queue-full error before counting the new job")
def overload() -> str:
    import threading

    import httpx

    from .fakes import FakeEngine, live_app, package_module

    fake = FakeEngine(pieces=40, delay=0.03)
    app = package_module("app").create_app(package_module("settings").Settings(max_queue=1), engine=fake)
    body = {**CHAT, "max_tokens": 40}
    results: dict[str, Any] = {}

    def send(name: str) -> None:
        try:
            results[name] = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=30)
        except httpx.HTTPError as exc:
            results[name] = exc

    def until(condition: Callable[[], bool], timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        return condition()

    with live_app(app) as root:
        worker = app.state.worker
        first = threading.Thread(target=send, args=("running",))
        first.start()
        until(lambda: fake.yielded > 0)
        second = threading.Thread(target=send, args=("waiting",))
        second.start()
        until(lambda: worker.jobs >= 2, timeout=3)
        start = time.monotonic()
        third = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=30)
        waited = time.monotonic() - start
        first.join(timeout=30)
        second.join(timeout=30)
    if third.status_code == 200:
        raise Mismatch(f"with max_queue=1, one request running and one waiting, a third was queued anyway: it "
                       f"waited {waited:.1f} s for its 200", hint="reserve must refuse when the queue is full")
    e = _error(third, "a request to a full queue", 429, code="rate_limit_exceeded", type="rate_limit_error")
    if not third.headers.get("retry-after", "").strip().isdigit():
        raise Mismatch("the 429 has no Retry-After header (in seconds): the official client would not know when "
                       "to retry", details=[f"message: {e['message'][:100]!r}"])
    if waited > 1.0:
        raise Mismatch(f"the 429 came after {waited:.1f} s: refuse at once, before any work starts")
    statuses = [getattr(results.get(n), "status_code", results.get(n)) for n in ("running", "waiting")]
    if statuses != [200, 200]:
        raise Mismatch(f"the running and the waiting requests should both succeed, got {statuses}")
    return f"A full queue is a 429: refused in {waited * 1000:.0f} ms with Retry-After, the two others served"


def summary(errors: dict[str, Any]) -> dict[str, Any]:
    """(status, code, param) per probe, for the checkpoint; never raises."""
    out = {}
    for name, response in errors.items():
        try:
            e = response.json()["error"]
            out[name] = [response.status_code, e["code"], e["param"]]
        except Exception:
            out[name] = [getattr(response, "status_code", None), "not an envelope", None]
    return out


def probe(http: Any, key: str) -> dict[str, Any]:
    """One request per failure the lab handles (its checkpoint keeps what the server answered)."""
    headers = {"Authorization": f"Bearer {key}"}
    url = "/v1/chat/completions"
    as_json = {**headers, "Content-Type": "application/json"}
    return {
        "malformed_json": http.post(url, content=b'{"model": ', headers=as_json),
        "bad_temperature": http.post(url, json={**CHAT, "temperature": "hot"}, headers=headers),
        "no_key": http.post(url, json=CHAT),
        "unknown_model": http.post(url, json={**CHAT, "model": "gpt-4o"}, headers=headers),
        "too_long": http.post(url, json={**CHAT, "max_tokens": 2000}, headers=headers),
        "unknown_route": http.get("/v1/engines", headers=headers),
        "wrong_method": http.delete(url, headers=headers),
        "crash": http.get("/v1/debug/crash", headers=headers),
    }
