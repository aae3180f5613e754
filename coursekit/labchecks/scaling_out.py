"""Checks for lab 11: your server as a gateway in front of two upstreams.

The gateway's rules are checked first on made-up upstreams, in milliseconds: an engine that
plays a script (text pieces, a refused connection, a death after two pieces) stands in for each
upstream, and time is a number the check chooses, as lab 5 injected ``sleep``. Then for real:
two reference servers started by the lab (``lab.upstreams``), your package as the gateway
(``lab.serve``), the official client in front, and one upstream killed in the middle of a stream.
Which upstream serves a request is read where it happens: each upstream's ``/metrics`` says how
many requests it is answering (``reference_server_requests_in_flight``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request
from ..model import MODEL_ID

ROUTING = Section("11-scaling-out", "Routing: the least busy upstream")
HEALTH = Section("11-scaling-out", "Health, cool-downs and the model list")
RETRIES = Section("11-scaling-out", "Retries: only before the first token")
LIMITS = Section("11-scaling-out", "Limits and budgets per key")
YOURS = Section("11-scaling-out", "Your server as a gateway")
SECTIONS = (ROUTING, HEALTH, RETRIES, LIMITS, YOURS)

# A prompt this model answers at length (it counts on and on), so a stream is still running when
# the check looks at it, or kills its upstream.
LONG = [{"role": "user", "content": "Count from 1 to 200, separated by commas."}]
LONG_TOKENS = 200

#: what the checks against real servers saw: the lab's checkpoint records it
OBSERVED: dict[str, Any] = {}


# ---- made-up upstreams ---------------------------------------------------------------------------

class FakeUpstream:
    """What ``pick`` reads of an upstream: its number, its outstanding count, whether it is available."""

    def __init__(self, number: int, outstanding: int = 0, up: bool = True) -> None:
        self.number, self.outstanding, self.up = number, outstanding, up

    def available(self, now: float) -> bool:
        return self.up

    def __repr__(self) -> str:
        return f"upstream {self.number} ({self.outstanding} outstanding{'' if self.up else ', cooling down'})"


class ScriptedUpstream:
    """An upstream's engine that plays a script: text pieces, and exceptions raised where they stand.

    It ends with the learner's ``Done`` if the script gets that far. ``started`` counts the
    generations asked of it: an upstream asked again and again stops the check instead of looping.
    """

    def __init__(self, name: str, script: list[Any], done: Any) -> None:
        self.name, self.script, self.done = name, script, done
        self.state, self.upstream_model, self.model_id = "ready", "upstream-model", MODEL_ID
        self.started = 0
        self.closed = 0

    def generate(self, prompt: Any, max_tokens: int, **options: Any) -> Any:
        self.started += 1
        if self.started > 4:
            raise RuntimeError(f"{self.name} was asked for the same reply {self.started} times")
        pieces = 0
        try:
            for step in self.script:
                if isinstance(step, BaseException):
                    raise step
                pieces += 1
                yield step
            yield self.done("stop", 7, pieces)
        finally:
            self.closed += 1

    def count_tokens(self, prompt: Any) -> int:
        return 7

    def load(self) -> None:
        self.state = "ready"


def _connect_error() -> Exception:
    import httpx

    return httpx.ConnectError("[Errno 111] Connection refused")


def _dropped() -> Exception:
    import httpx

    return httpx.RemoteProtocolError("peer closed connection without sending complete message body")


# ---- Step 1: health ------------------------------------------------------------------------------

@check("Cool-downs", section=HEALTH,
       nudge="a failed upstream is not dead forever: it sits out a while, then gets another chance; and "
             "the time is the one you are given, not the clock's",
       hint="failed stores the moment its cool-down ends, `now` plus COOLDOWN, in down_until; available "
            "is true once `now` has reached down_until, so a fresh upstream (0.0) is available at once")
def cooldown(Upstream: type, COOLDOWN: float) -> str:
    u = Upstream(1, engine=None)
    if not u.available(1000.0):
        raise Mismatch("a new upstream that never failed is not available",
                       hint="before any failure, available must be true: the end of the cool-down "
                            "starts in the past")
    u.failed(1000.0)
    if u.available(1000.0):
        raise Mismatch("right after failing at t=1000 s, it is still available at t=1000 s: the next request "
                       "would go straight back to an upstream that just failed")
    if u.available(1000.0 + COOLDOWN * 0.9):
        raise Mismatch(f"it is available again before its cool-down of {COOLDOWN:g} s has passed")
    if not u.available(1000.0 + COOLDOWN):
        later = [t for t in (2, 10, 100, 10_000) if u.available(1000.0 + COOLDOWN * t)]
        if not later:
            raise Mismatch("an upstream that failed once is never available again: when it comes back "
                           "(a restart, a network blip), your gateway would never send it anything")
        raise Mismatch(f"the cool-down lasts longer than COOLDOWN ({COOLDOWN:g} s): available again only "
                       f"{COOLDOWN * later[0]:g} s later")
    u.failed(5000.0)
    if u.available(5000.0 + COOLDOWN / 2):
        raise Mismatch("a second failure, later, does not start a new cool-down")
    return f"Cool-downs: a failed upstream sits out {COOLDOWN:g} s, then gets another chance"


# ---- Step 2: routing -----------------------------------------------------------------------------

def _pick_cases() -> list[tuple[str, list[FakeUpstream], list[int], int | None]]:
    """(what, upstreams, numbers to exclude, the number pick must return)."""
    F = FakeUpstream
    return [
        ("fewest outstanding", [F(1, 3), F(2, 1), F(3, 2)], [], 2),
        ("fewest outstanding, again", [F(1, 0), F(2, 4)], [], 1),
        ("a tie goes to the first in the list", [F(1, 2), F(2, 1), F(3, 1)], [], 2),
        ("an idle pool: the first", [F(1, 0), F(2, 0)], [], 1),
        ("one cooling down is left out, however idle", [F(1, 0, up=False), F(2, 5)], [], 2),
        ("one already tried is left out", [F(1, 0), F(2, 3)], [1], 2),
        ("none left: None", [F(1, 0, up=False), F(2, 1)], [2], None),
    ]


@check("Least outstanding", section=ROUTING,
       nudge="the next request goes where the fewest requests are in flight right now, among the "
             "upstreams that may take one: not in turn, not always the first",
       hint="keep the upstreams that are available at `now` and not in `exclude`; of those, return "
            "the one with the smallest outstanding count, the first one on a tie, or None if none is left")
def routing(pick: Callable[..., Any]) -> str:
    for what, ups, excluded, want in _pick_cases():
        exclude = [u for u in ups if u.number in excluded]
        got = pick(ups, 100.0, exclude=exclude)
        if got is not None and not isinstance(got, FakeUpstream):
            raise Mismatch(f"pick returned {type_name(got)}: it returns one of the upstreams it was given "
                           "(or None)")
        if (got.number if got else None) != want:
            shown = f"upstream {got.number}" if got else "None"
            wanted = f"upstream {want}" if want else "None"
            details = [f"upstreams: {ups}", f"exclude: {[f'upstream {n}' for n in excluded] or 'nothing'}",
                       f"yours: {shown}, expected: {wanted}"]
            again = [pick(ups, 100.0, exclude=exclude) for _ in range(3)]
            if len({id(g) for g in again}) > 1:
                raise Mismatch("the same upstreams gave different answers: round-robin ignores how busy "
                               "each upstream is, so a long generation keeps getting its share", details=details)
            raise Mismatch(f"{what}: wrong upstream", details=details)
    return "Least outstanding: the least busy available upstream, the first on a tie, None when none is left"


# --- a small simulation, to see why (not a check) ---

def simulate(choose: Callable[[list[Any], int], Any], lengths: list[int]) -> dict[str, float]:
    """Two serial upstreams (one request at a time each, like a llama.cpp context); a request arrives
    every tick and takes ``lengths[i]`` ticks. ``choose(upstreams, i)`` picks one for request i.
    Returns the mean and the worst wait before a request starts."""
    class Sim:
        def __init__(self, number: int) -> None:
            self.number, self.queue, self.busy_until = number, [], 0

        @property
        def outstanding(self) -> int:
            return len(self.queue)

        def available(self, now: float) -> bool:
            return True

        def __repr__(self) -> str:
            return f"upstream {self.number}"

    ups = [Sim(1), Sim(2)]
    waits = []
    for now, length in enumerate(lengths):
        for u in ups:  # finished requests leave
            u.queue = [end for end in u.queue if end > now]
        chosen = choose(ups, now)
        if chosen is None:
            return {"mean_wait": float("nan"), "worst_wait": float("nan")}
        start = max(now, max(chosen.queue, default=now))
        waits.append(start - now)
        chosen.queue.append(start + length)
    return {"mean_wait": round(sum(waits) / len(waits), 2), "worst_wait": max(waits)}


# ---- Step 3: retries ------------------------------------------------------------------------------

_ENGINES: dict[int, tuple[Any, list[float]]] = {}


def _gateway(GatewayEngine: type, Settings: type, scripts: list[list[Any]], done: Any) -> tuple[Any, list[Any], list[float]]:
    """The learner's GatewayEngine over two scripted upstreams, fresh ones each time, and its clock.

    The engine itself is made once per class (each RemoteEngine it makes opens an httpx client,
    which costs a tenth of a second); each call gives it new Upstreams of the learner's class.
    """
    if id(GatewayEngine) not in _ENGINES:
        now = [100.0]
        settings = Settings(upstream_url="http://127.0.0.1:9/v1,http://127.0.0.1:9/v1", upstream_api_key=None)
        engine = GatewayEngine(settings, clock=lambda: now[0])
        if len(getattr(engine, "upstreams", [])) != 2:
            raise Mismatch("GatewayEngine(settings) with two URLs in upstream_url should have two upstreams "
                           "(the given __init__ splits the list at commas)")
        _ENGINES.clear()
        _ENGINES[id(GatewayEngine)] = engine, now
    engine, now = _ENGINES[id(GatewayEngine)]
    now[0] = 100.0
    fakes = [ScriptedUpstream(f"upstream {i + 1}", script, done) for i, script in enumerate(scripts)]
    engine.upstreams = [type(upstream)(i + 1, fake) for i, (upstream, fake) in enumerate(zip(engine.upstreams, fakes))]
    engine.state = "ready"
    return engine, fakes, now


def _consume(events: Any, APIError: type) -> tuple[list[Any], Any]:
    """Every event until the end or an error: (events, the exception or None)."""
    got: list[Any] = []
    try:
        for event in events:
            got.append(event)
            if len(got) > 50:
                break
    except APIError as error:
        return got, error
    except Exception as error:  # noqa: BLE001 - what leaked out is the feedback
        return got, error
    return got, None


def _texts(events: list[Any]) -> str:
    return "".join(e for e in events if isinstance(e, str))


@check("Retries, only before the first token", section=RETRIES,
       nudge="a request may move to another upstream only while nothing of its reply has left; once "
             "a piece has, a failure ends the reply with an error; and a request the upstream refuses "
             "as wrong is wrong everywhere",
       hint="yield the upstream's events one by one, noting that one was sent; on an exception: if "
            "something was sent, mark the upstream failed and raise cut_off for it; otherwise, if the "
            "error is retryable, mark it failed and let the loop take the next upstream; else raise it "
            "unchanged")
def retries(GatewayEngine: type, Settings: type, Done: type, APIError: type) -> str:
    question = [{"role": "user", "content": "Hi"}]

    # 1. refused before any token: the next upstream answers, the client never knows
    engine, (a, b), now = _gateway(GatewayEngine, Settings, [[_connect_error()], ["Hel", "lo"]], Done)
    events, error = _consume(engine.generate(question, 16), APIError)
    if error is not None:
        raise Mismatch(f"upstream 1 refused the connection before any token, and the request failed "
                       f"({type(error).__name__}: {short(str(error), 80)}): it should have moved to upstream 2",
                       hint="an error before anything was yielded is retried when retryable says so: "
                            "mark the upstream failed and let the while loop take the next one")
    if _texts(events) != "Hello" or not isinstance(events[-1], Done):
        raise Mismatch(f"after upstream 1 refused, the events were {short(events)}, not upstream 2's "
                       "'Hel', 'lo' and its Done")
    if engine.upstreams[0].available(now[0]):
        raise Mismatch("upstream 1 refused the connection, but it is still available: the next request "
                       "would try it first again", hint="mark it failed, at the engine's clock time")
    if [u.outstanding for u in engine.upstreams] != [0, 0]:
        raise Mismatch(f"outstanding counts are {[u.outstanding for u in engine.upstreams]} after the reply, "
                       "not [0, 0]: the given `finally` releases each upstream; keep it")

    # 2. a 503 before any token: the same
    engine, (a, b), now = _gateway(GatewayEngine, Settings, [
        [APIError(503, "The model is still loading.", type="server_error", code="model_loading")], ["Hi"]], Done)
    events, error = _consume(engine.generate(question, 16), APIError)
    if error is not None or _texts(events) != "Hi":
        raise Mismatch("upstream 1 answered 503 before any token: the request should have moved to upstream 2",
                       details=[f"events: {short(events)}", f"error: {error!r}"])

    # 3. dead after two pieces, while upstream 2 is fine: the reply ends with an error, it is not resumed
    engine, (a, b), now = _gateway(GatewayEngine, Settings, [["Par", "is", _dropped()], ["Hel", "lo"]], Done)
    events, error = _consume(engine.generate(question, 16), APIError)
    text = _texts(events)
    if b.started or text != "Paris":
        raise Mismatch(f"upstream 1 died after sending 'Par', 'is'; the reply became {text!r}"
                       + (" (upstream 2 was asked too)" if b.started else ""),
                       details=["the client has already shown 'Paris': another upstream starts a new reply, "
                                "so the client would read the start of one answer glued to another"],
                       hint="once anything was yielded, a failure is not retried: raise what cut_off makes")
    if error is None:
        raise Mismatch("upstream 1 died after two pieces and the reply just ended, with no error: the client "
                       "would take a truncated answer for a whole one")
    if not isinstance(error, APIError) or error.status < 500 or error.code != "upstream_error":
        raise Mismatch(f"the reply ended with {type(error).__name__}: {short(str(error), 80)}, not the gateway's "
                       "502 upstream_error: raise what cut_off makes, which lab 5's stream guard turns "
                       "into an error event the client can read")
    if engine.upstreams[0].available(now[0]):
        raise Mismatch("upstream 1 died mid-stream but is still available: the next request would go to it")

    # 4. a 400 before any token: the request is wrong everywhere, passed on unchanged, not retried
    bad = APIError(400, "This model's maximum context length is 512 tokens.", code="context_length_exceeded")
    engine, (a, b), now = _gateway(GatewayEngine, Settings, [[bad], ["Hi"]], Done)
    events, error = _consume(engine.generate(question, 16), APIError)
    if b.started or error is not bad:
        raise Mismatch("upstream 1 refused the request with a 400 (context_length_exceeded): every upstream "
                       "would refuse it the same way, so the client should get that 400, unchanged",
                       details=[f"upstream 2 asked: {bool(b.started)}", f"error: {error!r}"],
                       hint="an error that retryable says no to is raised as it is")
    if not engine.upstreams[0].available(now[0]):
        raise Mismatch("upstream 1 is cooling down after a 400: a wrong request is not the upstream's fault")

    # 5. every upstream refuses: one clear error, no endless loop
    engine, (a, b), now = _gateway(GatewayEngine, Settings, [[_connect_error()], [_connect_error()]], Done)
    events, error = _consume(engine.generate(question, 16), APIError)
    if not isinstance(error, APIError):
        raise Mismatch(f"with both upstreams refusing, the request ended with {error!r}: the given take() "
                       "raises the client's error once every upstream was tried")

    # 6. the client leaves after the first piece: the upstream is released
    engine, (a, b), now = _gateway(GatewayEngine, Settings, [["one", "two", "three"], []], Done)
    events = engine.generate(question, 16)
    next(events)
    events.close()
    if [u.outstanding for u in engine.upstreams] != [0, 0] or not a.closed:
        raise Mismatch("a client that left after the first piece left its upstream counted as busy "
                       "(or still generating)")
    return "Retries, only before the first token: moved on a refusal or a 503, cut off with 502 after a token, a 400 passed on"


# ---- Step 4: limits ---------------------------------------------------------------------------------

@check("Requests per minute", section=LIMITS,
       nudge="count each key's requests in the last window of time, sliding, not per calendar minute; "
             "when the window is full, say how long until its oldest request leaves it",
       hint="keep each key's admission times, oldest first; drop those that are `window` seconds old or "
            "older; if `limit` remain, raise rate_limited with the seconds until the oldest one leaves; "
            "otherwise record `now`")
def rate_limit(RequestsPerMinute: type, APIError: type) -> str:
    def admitted(limiter: Any, key: str, now: float) -> Any:
        try:
            limiter.admit(key, now)
        except APIError as error:
            return error
        return None

    rpm = RequestsPerMinute(3, window=60.0)
    for t in (0.0, 10.0, 20.0):
        if (error := admitted(rpm, "sk-alice", t)) is not None:
            raise Mismatch(f"request {int(t / 10) + 1} of 3 at t={t:g} s was refused ({short(str(error), 60)}): "
                           "the limit is 3 per 60 s")
    refused = admitted(rpm, "sk-alice", 30.0)
    if refused is None:
        raise Mismatch("a 4th request within 60 s was admitted: the limit is 3")
    if refused.status != 429 or refused.code != "rate_limit_exceeded":
        raise Mismatch(f"the refusal is {refused.status} {refused.code!r}: OpenAI's is 429 rate_limit_exceeded "
                       "(rate_limited(...) makes it)")
    headers = {k.lower(): v for k, v in (refused.headers or {}).items()}
    if "retry-after" not in headers:
        raise Mismatch("the 429 has no Retry-After header: clients cannot know when to come back")
    try:
        retry_after = float(headers["retry-after"])
    except ValueError:
        raise Mismatch(f"Retry-After is {headers['retry-after']!r}: a number of seconds") from None
    if not 30 <= retry_after <= 60:
        raise Mismatch(f"at t=30 s, with requests at 0, 10 and 20 s, Retry-After says {headers['retry-after']} s: "
                       "the request of t=0 leaves the 60-second window at t=60, so 30 s"
                       + (" (a client that waits that long is refused again)" if retry_after < 30 else ""))
    if admitted(rpm, "sk-bob", 30.0) is not None:
        raise Mismatch("another key was refused because sk-alice used up her limit: limits are per key")
    if admitted(rpm, "sk-alice", 59.0) is None:
        raise Mismatch("at t=59 s the three requests of 0, 10 and 20 s are all less than 60 s old, yet a "
                       "4th was admitted")
    if (error := admitted(rpm, "sk-alice", 60.0)) is not None:
        raise Mismatch("at t=60 s the request of t=0 has left the window, yet the next was refused "
                       "(were refused requests counted? only admitted ones use the window)")
    # a sliding window, not calendar minutes
    rpm = RequestsPerMinute(3, window=60.0)
    for t in (50.0, 55.0, 59.0):
        admitted(rpm, "sk-carol", t)
    if admitted(rpm, "sk-carol", 61.0) is None:
        raise Mismatch("requests at 50, 55 and 59 s, then one at 61 s was admitted: that is 4 requests in "
                       "11 seconds. The window slides: a new minute on the clock does not empty it")
    if admitted(rpm, "sk-carol", 110.0) is not None:
        raise Mismatch("at t=110 s the request of t=50 has left the window, yet the next was refused")
    return f"Requests per minute: per key, a sliding window, 429 with Retry-After ({headers['retry-after']} s when it was 30)"


# ---- the real thing -------------------------------------------------------------------------------

def metrics(upstream: Any) -> dict[str, float]:
    """An upstream's /metrics, as ``name{labels}`` -> value."""
    import httpx

    out = {}
    for line in httpx.get(f"{upstream.root}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def in_flight(upstream: Any) -> int:
    """How many requests the upstream is answering (its own /metrics request included)."""
    return int(metrics(upstream).get("reference_server_requests_in_flight", 0))


def _settled(upstreams: list[Any], timeout: float = 5.0) -> list[int]:
    """Each upstream's in-flight count once none is answering anything but this look (a stream just
    closed by the client takes a moment to end upstream); the counts as they are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [in_flight(u) for u in upstreams]
        if all(c <= 1 for c in counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def _first_content(stream: Any, timeout: float) -> str:
    """Iterates a streamed reply in a thread until its first content; raises Mismatch after ``timeout``."""
    got: dict[str, Any] = {}

    def read() -> None:
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got["text"] = chunk.choices[0].delta.content
                    return
            got["error"] = "the stream ended without any content"
        except Exception as exc:  # noqa: BLE001
            got["error"] = f"{type(exc).__name__}: {short(str(exc), 100)}"

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise Mismatch(f"no content within {timeout:g} s")
    if "error" in got:
        raise Mismatch(got["error"])
    return got["text"]


def _stream(client: Any) -> Any:
    return client.chat.completions.create(model=MODEL_ID, messages=LONG, max_tokens=LONG_TOKENS, temperature=0,
                                          stream=True)


def _ready(server: Any, upstreams: list[Any]) -> None:
    if not server.ready:
        raise Mismatch("your gateway did not become ready (see the output of lab.serve() above)")
    for u in upstreams:
        if not getattr(u, "ready", True):
            u.wait()


def _open(client: Any, what: str) -> Any:
    import openai

    try:
        return _stream(client)
    except openai.APIStatusError as e:
        raise Mismatch(f"{what}: your gateway answered {e.status_code}: {short(e.message, 120)}") from None


@check("Least busy, for real", section=YOURS,
       nudge="two requests in flight at once should be answered by two upstreams: one per upstream while "
             "the other is busy; this takes both the routing and a worker that runs more than one request",
       hint="pick, and step 5's worker and app (which give the worker the engine's `threads`), must all be in "
            "your package: run their cells, then start the gateway again (the serve cell)")
def spread(server: Any, upstreams: list[Any], api_key: str) -> str:
    _ready(server, upstreams)
    client = server.client(api_key=api_key).with_options(timeout=30)
    before = _settled(upstreams)
    streams = []
    try:
        for label in ("the first stream", "the second stream"):
            stream = _open(client, label)
            streams.append(stream)
            try:
                _first_content(stream, 15)
            except Mismatch as m:
                if label == "the second stream" and "no content" in m.what:
                    raise Mismatch("the second stream did not start while the first was running: your gateway "
                                   "answers one request at a time (lab 3's worker has one thread; step 5's "
                                   "worker and app give it as many as the engine's `threads`)") from None
                raise Mismatch(f"{label}: {m.what}") from None
        during = [in_flight(u) - b for u, b in zip(upstreams, before)]
    finally:
        for stream in streams:
            stream.close()
    if during != [1, 1]:
        raise Mismatch(f"with two streams in flight, the upstreams were answering {during} of them: "
                       "expected one each", details=["the second request went to the busy upstream: "
                                                     "outstanding counts decide, not the list order alone"])
    OBSERVED["in_flight_per_upstream"] = during
    return "Least busy, for real: two streams at once, one on each upstream"


@check("An upstream dies mid-stream", section=RETRIES,
       nudge="the client already has the first part of this reply: after a token, a failure ends the "
             "stream with an error event, it is not continued elsewhere",
       hint="the retries check must pass first; the error that ends the stream is cut_off's 502, which "
            "lab 5's guard sends as the stream's last event")
def mid_stream(server: Any, upstreams: list[Any], api_key: str) -> str:
    import openai

    _ready(server, upstreams)
    alive = [u for u in upstreams if u.alive]
    if len(alive) < 2:
        raise Mismatch("this check needs both upstreams alive: run the cell that starts them (and restart "
                       "the gateway)")
    client = server.client(api_key=api_key).with_options(timeout=30)
    before = _settled(alive)
    stream = _open(client, "the stream")
    try:
        text = _first_content(stream, 15)
        during = [in_flight(u) - b for u, b in zip(alive, before)]
        if sorted(during) != [0, 1]:
            raise Mismatch(f"could not tell which upstream serves the stream (in flight: {during})")
        victim = alive[during.index(1)]
        victim.kill()
        error = None
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
        except openai.APIConnectionError as exc:
            raise Mismatch(f"the connection to your gateway broke ({type(exc).__name__}): the stream should end "
                           "with an error event, in the stream's format, then [DONE]") from None
        except openai.APIError as exc:  # an error event: the openai client raises it with its body
            error = exc
    finally:
        stream.close()
    if error is None:
        raise Mismatch(f"upstream {victim.number} was killed after the first token, and the stream still ended "
                       "normally: the rest must have come from the other upstream",
                       details=[f"the client read: {short(text, 150)}"])
    if getattr(error, "code", None) != "upstream_error":
        raise Mismatch(f"the stream ended with an error event, but not the gateway's: code {error.code!r}, "
                       f"{short(error.message, 100)}", details=["raise what cut_off makes: the client then "
                                                                "learns that the upstream failed, not your server"])
    OBSERVED["mid_stream"] = {"killed": victim.number, "text_before_error": text, "error_code": error.code}
    return (f"An upstream dies mid-stream: upstream {victim.number} killed mid-reply; the client had read "
            f"{short(text, 40)}, then came the error event ({error.code})")


@check("Failover", section=RETRIES,
       nudge="with one upstream dead, every request must still be answered, by the other one",
       hint="the retries and cool-down checks must pass first; a refused connection before the first token "
            "moves the request on, and marks the dead upstream so the next requests skip it")
def failover(server: Any, upstreams: list[Any], api_key: str, requests: int = 3) -> str:
    import openai

    _ready(server, upstreams)
    if all(u.alive for u in upstreams):
        upstreams[0].kill()  # the mid-stream check did not get as far as killing one
    if not any(u.alive for u in upstreams):
        raise Mismatch("both upstreams are dead: run the cell that starts them again, and the gateway")
    client = server.client(api_key=api_key).with_options(timeout=30)
    answered, started = 0, time.perf_counter()
    for i in range(requests):
        try:
            reply = client.chat.completions.create(model=MODEL_ID, max_tokens=4, temperature=0,
                                                   messages=[{"role": "user", "content": f"Say {i}."}])
        except openai.APIStatusError as e:
            raise Mismatch(f"request {i + 1} of {requests}, with one upstream dead: {e.status_code} "
                           f"{short(e.message, 120)}") from None
        if not reply.choices:
            raise Mismatch(f"request {i + 1}: a reply without choices")
        answered += 1
    seconds = time.perf_counter() - started
    OBSERVED["failover"] = {"answered": answered, "sent": requests, "seconds": round(seconds, 3)}
    return f"Failover: {answered} of {requests} requests answered with one upstream dead ({seconds:.2f} s)"


@check("Rate limit, for real", section=LIMITS,
       nudge="the limit is per key and comes back by itself: the key that hit it waits as long as "
             "Retry-After says, the others never notice",
       hint="the requests-per-minute check must pass first, and the upgraded auth must be in your package "
            "(run its cell, then restart the gateway)")
def rate_limit_live(server: Any, api_key: str, other_key: str, limit: int) -> str:
    import openai

    if not server.ready:
        raise Mismatch("your gateway did not become ready (see the output of lab.serve() above)")
    client = server.client(api_key=api_key).with_options(timeout=30)
    refused = None
    for i in range(limit + 1):
        try:
            client.models.list()
        except openai.RateLimitError as e:
            refused = (i, e)
            break
    if refused is None:
        raise Mismatch(f"{limit + 1} requests in a row with one key were all answered: the limit is {limit} "
                       "per window (MYSERVER_REQUESTS_PER_MINUTE)")
    i, e = refused
    if i < limit:
        raise Mismatch(f"request {i + 1} was refused, below the limit of {limit}")
    headers = e.response.headers
    if e.code != "rate_limit_exceeded" or "retry-after" not in headers:
        raise Mismatch("the 429 needs OpenAI's envelope (code rate_limit_exceeded) and a Retry-After header",
                       details=[f"code: {e.code!r}", f"headers: {dict(headers)}"])
    try:
        client.with_options(api_key=other_key).models.list()
    except openai.RateLimitError:
        raise Mismatch("another key was refused too: each key has its own limit") from None
    wait = float(headers["retry-after"])
    if not 0 < wait <= 60:
        raise Mismatch(f"Retry-After is {headers['retry-after']}: a number of seconds, at most the window")
    time.sleep(wait)
    try:
        client.models.list()
    except openai.RateLimitError:
        raise Mismatch(f"after waiting the {headers['retry-after']} s Retry-After asked for, the key is still "
                       "refused") from None
    OBSERVED["rate_limit"] = {"refused_request": i + 1, "retry_after": headers["retry-after"],
                              "x-ratelimit-limit-requests": headers.get("x-ratelimit-limit-requests")}
    return (f"Rate limit, for real: request {i + 1} refused with 429 and Retry-After {headers['retry-after']}, "
            "the other key unaffected, answered again after the wait")
