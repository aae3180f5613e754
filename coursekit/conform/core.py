"""The machinery of ``coursekit conform``: rows, groups of checks, one HTTP session, the report.

A check is a function that receives a ``Probe`` and talks to the server through it. It records
problems (``probe.problem``, ``probe.validate``) and may stop early by raising an ``Outcome``:
``Refused`` when the server answered an error status (an optional row then reads "not offered",
a required one "fail"), ``Fail``, ``NotOffered`` or ``Skip``. A check that returns without a
problem passes. A protocol is a ``Group`` of checks; ``run`` in ``__init__`` runs the groups.
"""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

PASS, FAIL, NOT_OFFERED, SKIPPED = "pass", "fail", "not offered", "skipped"
STATUSES = (PASS, FAIL, NOT_OFFERED, SKIPPED)
MAX_PROBLEMS = 20  # per row, in the JSON; the table shows the first


# ---- outcomes a check can raise --------------------------------------------------------------

class Outcome(Exception):
    status = FAIL

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Fail(Outcome):
    pass


class NotOffered(Outcome):
    status = NOT_OFFERED


class Skip(Outcome):
    """The row cannot be checked as asked (auth without ``--api-key``); it counts for nothing."""

    status = SKIPPED


class Refused(Outcome):
    """The server answered an error status where the check wanted a result.

    A 4xx other than 401/403/408/429 is a refusal in words: "not offered" for an optional row.
    Anything else (a 5xx, an auth or rate-limit error) is a failure even there: a crash is not
    a way to say "I don't do that".
    """

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.http_status = status

    @property
    def is_refusal(self) -> bool:
        return 400 <= self.http_status < 500 and self.http_status not in (401, 403, 408, 429) or self.http_status == 501


# ---- rows and the report ---------------------------------------------------------------------

@dataclass
class Row:
    id: str
    group: str
    feature: str
    required: bool
    status: str = FAIL
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def blocking(self) -> bool:
        """A required row that did not pass (a skipped row counts for nothing)."""
        return self.required and self.status not in (PASS, SKIPPED)


@dataclass
class Report:
    base_url: str
    model: str | None
    rows: list[Row]
    started: str
    seconds: float
    api_key_given: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every required row passes: what ``coursekit conform`` exits 0 on."""
        return not any(r.blocking for r in self.rows)

    @property
    def ok_strict(self) -> bool:
        """``ok``, and no optional feature that the server offers is broken."""
        return self.ok and not any(r.status == FAIL for r in self.rows)

    def blocking_count(self) -> str:
        n = sum(r.blocking for r in self.rows)
        return f"{n} required row{'s' * (n != 1)} not passing"

    def row(self, id: str) -> Row:
        for r in self.rows:
            if r.id == id:
                return r
        raise KeyError(id)

    def statuses(self) -> dict[str, str]:
        """``{row id: status}``, the shape tests and room summaries compare."""
        return {r.id: r.status for r in self.rows}

    def summary(self) -> str:
        def counts(rows: list[Row]) -> str:
            parts = [f"{sum(r.status == s for r in rows)} {s}" for s in STATUSES if any(r.status == s for r in rows)]
            return ", ".join(parts) or "none"
        required = [r for r in self.rows if r.required]
        optional = [r for r in self.rows if not r.required]
        blocking = [r.id for r in self.rows if r.blocking]
        verdict = ("CONFORMS: every required feature passes" if not blocking else
                   f"DOES NOT CONFORM: {self.blocking_count()} ({', '.join(blocking)})")
        return f"required: {counts(required)} · optional: {counts(optional)} · {self.seconds:.1f} s\n{verdict}"

    def header(self) -> str:
        lines = [f"coursekit conform {self.base_url}  model: {self.model or '(none)'}"
                 f"  API key: {'given' if self.api_key_given else 'none'}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def table(self, width: int = 110) -> str:
        return "\n".join([self.header(), "", table_head(self.rows)]
                         + [format_row(r, self.rows, width) for r in self.rows]
                         + ["", self.summary()])

    def to_json(self) -> dict[str, Any]:
        return {"checker": "coursekit conform", "format": 1, "base_url": self.base_url, "model": self.model,
                "api_key_given": self.api_key_given, "started": self.started, "seconds": round(self.seconds, 2),
                "ok": self.ok, "ok_strict": self.ok_strict, "notes": self.notes,
                "rows": [dict(asdict(r), seconds=round(r.seconds, 3)) for r in self.rows]}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        rows = [Row(**{k: v for k, v in r.items() if k in Row.__dataclass_fields__}) for r in data["rows"]]
        return cls(data["base_url"], data.get("model"), rows, data.get("started", ""), data.get("seconds", 0.0),
                   data.get("api_key_given", False), data.get("notes", []))


_MARK = {PASS: "pass", FAIL: "FAIL", NOT_OFFERED: "not offered", SKIPPED: "skipped"}


def table_head(rows: list[Row]) -> str:
    idw = max([len(r.id) for r in rows] + [3])
    return f"{'result':<11}  {'need':<8}  {'row':<{idw}}  feature"


def format_row(row: Row, rows: list[Row], width: int = 110) -> str:
    """One table line, and the reason wrapped underneath for anything but a pass."""
    idw = max([len(r.id) for r in rows] + [3])
    line = f"{_MARK[row.status]:<11}  {'required' if row.required else 'optional':<8}  {row.id:<{idw}}  {row.feature}"
    if row.status == PASS:
        return line
    indent = " " * (11 + 2 + 8 + 2)
    reason = row.reason + (f" (+{len(row.problems) - 1} more problem{'s' * (len(row.problems) > 2)}; see --json)"
                           if len(row.problems) > 1 else "")
    wrapped = textwrap.fill(reason, width=max(width, 60), initial_indent=indent + "-> ",
                            subsequent_indent=indent + "   ", break_long_words=True)
    return f"{line}\n{wrapped}"


def markdown(reports: dict[str, Report]) -> str:
    """Several servers side by side: one row per feature, one column per server, reasons inline."""
    first = next(iter(reports.values()))
    names = list(reports)
    lines = ["| row | need | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]

    def cell(r: Row | None) -> str:
        if r is None:
            return "—"
        if r.status == PASS:
            return "pass"
        text = r.reason.replace("|", "\\|").replace("\n", " ")
        return f"**{r.status}**: {text}" if r.status == FAIL else f"{r.status}: {text}"

    for row in first.rows:
        found = [next((r for r in rep.rows if r.id == row.id), None) for rep in reports.values()]
        lines.append(f"| `{row.id}` {row.feature.replace('|', '/')} | {'required' if row.required else 'optional'} | "
                     + " | ".join(cell(r) for r in found) + " |")
    lines.append("| **verdict** | | " + " | ".join(
        "**conforms**" if rep.ok else f"**does not conform** ({rep.blocking_count()})"
        for rep in reports.values()) + " |")
    return "\n".join(lines)


# ---- talking to the server -------------------------------------------------------------------

def normalize_base_url(url: str) -> tuple[str, list[str]]:
    """``http://host:8000`` -> ``http://host:8000/v1`` (with a note); a given path is kept."""
    url = url.strip().rstrip("/")
    notes = []
    if "://" not in url:
        url = "http://" + url
        notes.append(f"no scheme given: using {url}")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
        notes.append(f"no path given: using {url} (OpenAI's base URLs end in /v1)")
    return url, notes


@dataclass
class Exchange:
    """One HTTP request and its full answer, as the wire carried it."""

    method: str
    path: str
    status: int
    headers: httpx.Headers
    body: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def said(self) -> str:
        """What the body says, in a few words: the error message, FastAPI's detail, or the text."""
        try:
            body = self.json()
        except ValueError:
            return _clip(self.text.strip() or "(empty body)", 160)
        if isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]:
            return _clip(str(body["error"]["message"]), 160)
        if isinstance(body, dict) and "detail" in body:
            return _clip("{\"detail\": " + json.dumps(body["detail"])[:140] + "}", 160)
        return _clip(self.text.strip(), 160)

    def refused(self) -> Refused:
        return Refused(f"{self.method} {self.path} answered {self.status}: {self.said()}", self.status)


@dataclass
class Event:
    """One server-sent event: its ``data`` (lines joined), when its last byte arrived, and its
    ``event:`` name if it has one (the Responses API names every event)."""

    data: str
    at: float
    name: str | None = None


@dataclass
class Stream:
    exchange: Exchange  # body: the raw bytes of the whole stream
    events: list[Event]
    headers_at: float
    tail: str  # bytes after the last blank line: an event the server never finished


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_events(buffer: str, at: float) -> tuple[list[Event], str]:
    """Complete events in ``buffer`` (SSE: blank-line separated, ``data:`` lines), and what is left.

    Lines may end in CRLF, LF or CR; a CR at the very end waits for the next bytes, in case they
    begin with its LF.
    """
    held = "\r" if buffer.endswith("\r") else ""
    buffer = buffer[: len(buffer) - len(held)].replace("\r\n", "\n").replace("\r", "\n")
    *complete, rest = buffer.split("\n\n")
    events = []
    for block in complete:
        data, event_name = [], None
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event_name = value
        if data:
            events.append(Event("\n".join(data), at, event_name))
    return events, rest + held


class Session:
    """One server: a raw httpx client for the wire, the official client for what clients do."""

    def __init__(self, base_url: str, api_key: str | None, model: str | None, timeout: float) -> None:
        import openai

        self.base_url, self.notes = normalize_base_url(base_url)
        self.api_key, self.model_arg, self.timeout = api_key, model, timeout
        self.prefix = urlsplit(self.base_url).path.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A fresh connection per request: a server that drops its connection after a crash must
        # fail the row that crashed it, not the next one (which would meet the closed socket).
        fresh = httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.Client(timeout=timeout, headers=headers, limits=fresh)
        # No retries: a failure must show as a failure, not as a slow success.
        self.sdk = openai.OpenAI(base_url=self.base_url, api_key=api_key or "no-key-given", max_retries=0,
                                 timeout=timeout, http_client=openai.DefaultHttpxClient(limits=fresh))
        self._memo: dict[str, Any] = {}
        self.reported: dict[str, set[str]] = {}  # schema -> problems a row has already reported
        self.model_used: str | None = None
        self.unreachable: str | None = None

    def note_connect_failure(self, exc: BaseException, reason: str) -> None:
        import openai

        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or (
                isinstance(exc, openai.APIConnectionError) and isinstance(exc.__cause__, (httpx.ConnectError,
                                                                                          httpx.ConnectTimeout))):
            self.unreachable = f"not checked: the server could not be reached ({reason})"

    def close(self) -> None:
        self.http.close()
        self.sdk.close()

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per run; an outcome it raised is raised again to every later caller."""
        if key not in self._memo:
            try:
                self._memo[key] = (True, make())
            except Outcome as exc:
                self._memo[key] = (False, exc)
        ok, value = self._memo[key]
        if not ok:
            raise _again(value)
        return value

    def shown(self, path: str) -> str:
        return self.prefix + path

    def request(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True, timeout: float | None = None) -> Exchange:
        """``path`` is relative to the base URL (``/chat/completions``)."""
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if json_body is not None:
            kwargs["json"] = json_body
        if content is not None:
            kwargs["content"] = content
        if timeout is not None:
            kwargs["timeout"] = timeout
        t0 = time.perf_counter()
        with self._transport(method, path):
            if auth:
                r = self.http.request(method, self.base_url + path, **kwargs)
            else:
                with httpx.Client(timeout=self.timeout) as bare:  # no Authorization header at all
                    r = bare.request(method, self.base_url + path, **kwargs)
        return Exchange(method, self.shown(path), r.status_code, r.headers, r.content, time.perf_counter() - t0)

    def stream(self, path: str, body: dict[str, Any]) -> Stream:
        """POST ``body`` and read the answer as it arrives, timing every event (raises Refused if not 200)."""
        t0 = time.perf_counter()
        events: list[Event] = []
        raw, pending = b"", ""
        with self._transport("POST", path), self.http.stream("POST", self.base_url + path, json=body) as r:
            headers_at = time.perf_counter() - t0
            if r.status_code != 200:
                r.read()
                raise Exchange("POST", self.shown(path), r.status_code, r.headers, r.content,
                               time.perf_counter() - t0).refused()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            for chunk in r.iter_bytes():
                now = time.perf_counter() - t0
                raw += chunk
                new, pending = parse_events(pending + decoder.decode(chunk), now)
                events += new
            pending += decoder.decode(b"", final=True)
        exchange = Exchange("POST", self.shown(path), r.status_code, r.headers, raw, time.perf_counter() - t0)
        return Stream(exchange, events, headers_at, pending.replace("\r", "\n").strip("\n"))

    def _transport(self, method: str, path: str) -> Any:
        self.reachable()
        return _TransportErrors(self, f"{method} {self.shown(path)}")

    def reachable(self) -> None:
        """After one failed connection, every later request fails at once with the same reason:
        an unreachable address would otherwise cost a full time-out per row."""
        if self.unreachable:
            raise Fail(self.unreachable)


def _again(exc: Outcome) -> Outcome:
    """A fresh exception with the same outcome, so every row raises its own."""
    if isinstance(exc, Refused):
        return Refused(exc.reason, exc.http_status)
    return type(exc)(exc.reason)


class _TransportErrors:
    """Connection problems and time-outs become a failed row with a sentence, not a traceback."""

    def __init__(self, session: Session, what: str) -> None:
        self.session, self.what = session, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if exc is None:
            return False
        s = self.session
        reason = transport_reason(exc, self.what, s.base_url, s.timeout)
        if reason is None:
            return False
        s.note_connect_failure(exc, reason)
        raise Fail(reason) from exc


def transport_reason(exc: BaseException, what: str, base_url: str, timeout: float) -> str | None:
    import openai

    if isinstance(exc, (httpx.TimeoutException, openai.APITimeoutError)):
        return f"{what}: no answer within {timeout:g} s"
    if isinstance(exc, (httpx.ConnectError, openai.APIConnectionError)):
        return f"{what}: cannot connect to {base_url} (is the server running?)"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return f"{what}: the connection broke: {exc}"
    if isinstance(exc, httpx.HTTPError):
        return f"{what}: {type(exc).__name__}: {exc}"
    return None


# ---- a check's view ---------------------------------------------------------------------------

class Probe:
    """What a check uses: the session, and a list of problems that makes its row fail."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.problems: list[str] = []

    # problems
    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def expect(self, condition: Any, text: str) -> bool:
        if not condition:
            self.problem(text)
        return bool(condition)

    def fail(self, text: str) -> NoReturn:
        raise Fail(text)

    def validate(self, instance: Any, schema: str, *, where: str = "", skip: tuple[str, ...] = (),
                 only: tuple[str, ...] | None = None) -> bool:
        """``instance`` against ``schemas/`` and OpenAI's component; problems under ``skip``
        (or outside ``only``) belong to another row. True if nothing was found."""
        import schemas
        from schemas import openai_spec

        def mine(path: str) -> bool:
            if only is not None and not any(_under(path, p) for p in only):
                return False
            return not any(_under(path, p) for p in skip)

        ours = [p for p in schemas.validate(instance, schema) if mine(p.path)]
        component = openai_spec.COMPONENTS[schema]
        found = [p.message for p in ours] + [
            f"OpenAI's {component}: {path}: {message}" for path, message in openai_spec.problems(instance, schema)
            if mine(path) and not any(_under(path, p.path) for p in ours)]
        # One defect, one row: a problem every reply has (a missing field, say) is reported by the
        # first row that meets it, not again by each row after it, nor for every chunk of a stream.
        seen = self.session.reported.setdefault(schema, set())
        for message in found:
            key = re.sub(r"\[\d+\]", "[]", message)
            if key not in seen:
                seen.add(key)
                self.problem(f"{where}{message}")
        return not found

    # the server
    @property
    def model(self) -> str:
        s = self.session
        if s.model_arg:
            s.model_used = s.model_arg
            return s.model_arg
        try:
            models = s.memo("models", lambda: fetch_models(s))
        except Outcome as exc:
            raise Fail(f"no model to ask for: listing the models failed ({exc.reason}); pass --model") from None
        data = models.get("data") if isinstance(models, dict) else None
        ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if not ids or not isinstance(ids[0], str):
            raise Fail("no model to ask for: GET /models lists none; pass --model")
        s.model_used = ids[0]
        return ids[0]

    def get(self, path: str, **kw: Any) -> Exchange:
        return self.session.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Exchange:
        return self.session.request("POST", path, json_body=body, **kw)

    def ok_json(self, exchange: Exchange) -> Any:
        """The JSON body of a 200, or the row stops: Refused for an error status, Fail for a bad body."""
        if exchange.status != 200:
            raise exchange.refused()
        self.expect(exchange.content_type == "application/json",
                    f"{exchange.method} {exchange.path}: Content-Type is {exchange.content_type or 'missing'!r}, "
                    "expected 'application/json'")
        try:
            return exchange.json()
        except ValueError:
            self.fail(f"{exchange.method} {exchange.path}: the body is not JSON: {_clip(exchange.text, 120)!r}")

    def sdk(self, method: str, path: str, call: Callable[[], Any]) -> tuple[Any, Any]:
        """Runs an official-client call made ``with_raw_response``: (raw JSON body, parsed object)."""
        import openai

        shown = self.session.shown(path)
        self.session.reachable()
        try:
            raw = call()
        except openai.APIStatusError as exc:
            raise Exchange(method, shown, exc.status_code, exc.response.headers, exc.response.content, 0.0).refused() \
                from None
        except (openai.APIError, httpx.HTTPError) as exc:
            reason = (transport_reason(exc, f"{method} {shown}", self.session.base_url, self.session.timeout)
                      or f"{method} {shown}: {type(exc).__name__}: {exc}")
            self.session.note_connect_failure(exc, reason)
            raise Fail(reason) from None
        response = raw.http_response
        body = self.ok_json(Exchange(method, shown, response.status_code, response.headers, response.content, 0.0))
        try:
            parsed = raw.parse()
        except Exception as exc:  # the official client could not read what the server sent
            self.fail(f"{method} {shown}: the openai client cannot read the reply: {type(exc).__name__}: {exc}")
        return body, parsed

    def stream(self, path: str, body: dict[str, Any]) -> Stream:
        return self.session.stream(path, body)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def fetch_models(session: Session) -> Any:
    exchange = session.request("GET", "/models")
    if exchange.status != 200:
        raise exchange.refused()
    try:
        return exchange.json()
    except ValueError:
        raise Fail(f"GET {exchange.path}: the body is not JSON") from None


# ---- groups of checks -------------------------------------------------------------------------

CheckFn = Callable[[Probe], None]


@dataclass(frozen=True)
class Check:
    id: str
    feature: str
    required: bool
    fn: CheckFn


@dataclass
class Group:
    """One protocol's rows (OpenAI's API now; Responses, Ollama, Anthropic later), in table order."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)

    def check(self, id: str, feature: str, *, required: bool) -> Callable[[CheckFn], CheckFn]:
        def register(fn: CheckFn) -> CheckFn:
            if any(c.id == id for c in self.checks):
                raise ValueError(f"two checks named {id!r}")
            self.checks.append(Check(id, feature, required, fn))
            return fn
        return register


def run_group(group: Group, session: Session) -> Iterator[Row]:
    for check in group.checks:
        yield run_check(check, group.name, session)


def run_check(check: Check, group: str, session: Session) -> Row:
    row = Row(check.id, group, check.feature, check.required)
    probe = Probe(session)
    t0 = time.perf_counter()
    try:
        check.fn(probe)
        status, reason = (FAIL, "") if probe.problems else (PASS, "")
    except Refused as exc:
        status = NOT_OFFERED if exc.is_refusal and not check.required else FAIL
        reason = ("refused: " if exc.is_refusal and check.required else "") + exc.reason
        if exc.http_status == 401 and not session.api_key:
            reason += " (the server wants an API key: pass --api-key)"
    except Outcome as exc:
        status, reason = exc.status, exc.reason
    except Exception as exc:  # a reply shaped so oddly that the check itself tripped over it
        status = FAIL
        reason = f"the reply could not be checked ({type(exc).__name__}: {_clip(str(exc), 200)})"
    row.seconds = time.perf_counter() - t0
    if status in (PASS, FAIL) and probe.problems:
        status = FAIL
    problems = probe.problems + ([reason] if reason and reason not in probe.problems else [])
    row.status, row.problems = status, problems[:MAX_PROBLEMS]
    row.reason = problems[0] if problems else ""
    return row


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
