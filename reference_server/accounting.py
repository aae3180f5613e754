"""What each request costs: counted once, for metrics (metrics.py) and for its key (limits.py).

Two pieces meet through a ``Ticket``, one per HTTP request:

* ``Observe``, an ASGI middleware, opens the ticket, times the request, counts it by route and
  status, and adds the ticket's headers (``x-ratelimit-*``, ``x-upstream``) to the response.
* ``Metered`` wraps the backend (any backend: local or upstream) and follows each Run's events:
  the time to the first token, the tokens in and out, whether the client left before the end.
  When a run ends it charges the ticket's key and counts the tokens.

The ticket travels in a context variable, so routers need no changes: whatever protocol a
router speaks, its runs come from the wrapped backend and are counted the same way.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backends.base import Backend, BackendWrapper, ChoiceDone, Embedded, Event, Run, TextDelta, ToolCallDelta

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .limits import Account, Limits
    from .metrics import Metrics
    from .protocol import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
    from .settings import Settings


# --8<-- [start:ticket]
@dataclass
class Ticket:
    """One HTTP request's bookkeeping; ``Observe`` opens it, dependencies and backends fill it in."""

    started: float = field(default_factory=time.perf_counter)
    account: Account | None = None
    headers: dict[str, str] = field(default_factory=dict)  # added to the response if it lacks them


_ticket: ContextVar[Ticket | None] = ContextVar("reference_server_ticket", default=None)


def set_account(account: Account) -> None:
    ticket = _ticket.get()
    if ticket is not None:
        ticket.account = account


def response_headers(headers: dict[str, str]) -> None:
    ticket = _ticket.get()
    if ticket is not None:
        ticket.headers.update(headers)


def response_header(name: str, value: str) -> None:
    response_headers({name: value})
# --8<-- [end:ticket]


# --8<-- [start:observe]
class Observe:
    """ASGI middleware: a ticket per request; requests, durations and headers at the response."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ticket = Ticket()
        token = _ticket.set(ticket)
        status = 500  # if the app raises before answering, the server answers 500

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if ticket.headers:
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in ticket.headers.items()
                             if k.lower().encode("latin-1") not in present]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _ticket.reset(token)
            self.metrics.in_flight.dec()
            route = route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - ticket.started)
# --8<-- [end:observe]


def route_template(scope: dict[str, Any]) -> str:
    """``/v1/models/{model_id}``, never the raw path (labels must stay few), or ``unmatched``.

    FastAPI keeps the prefix of an included router apart from its route's path; the template
    with the prefix is in its per-request context (fastapi 0.165), else the route's own path.
    """
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(scope.get("route"), "path_format", None)
    return template or "unmatched"


# --8<-- [start:metered_events]
class MeteredEvents:
    """A Run's events, passed through untouched, and what they cost, reported once at the end."""

    def __init__(self, run: Run, model: str, meter: Meter) -> None:
        self.run, self.inner, self.model, self.meter = run, run.events, model, meter
        self.ticket = _ticket.get()
        self.first: float | None = None
        self.completion = 0
        self.unfinished: dict[int, int] = {}  # deltas of choices not done: counted if the client leaves
        self.reported = False

    def __aiter__(self) -> "MeteredEvents":
        return self

    def __getattr__(self, name: str) -> Any:  # ``start`` (backends/base.py), where the inner events have it
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def __anext__(self) -> Event:
        try:
            event = await self.inner.__anext__()
        except (StopAsyncIteration, Exception):  # the end, or a failure
            self._report(cancelled=False)
            raise
        except BaseException:  # cancelled while waiting: the client went away
            self._report(cancelled=True)
            raise
        if isinstance(event, (TextDelta, ToolCallDelta)):
            if self.first is None:
                self.first = time.perf_counter()
            self.unfinished[event.index] = self.unfinished.get(event.index, 0) + 1
        elif isinstance(event, ChoiceDone):
            self.completion += event.completion_tokens
            self.unfinished.pop(event.index, None)
        return event

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self._report(cancelled=True)

    def _report(self, cancelled: bool) -> None:
        if self.reported:
            return
        self.reported = True
        completion = self.completion + sum(self.unfinished.values())  # a delta is at least one token
        ttft = None if self.first is None or self.ticket is None else self.first - self.ticket.started
        self.meter.report(self.ticket, self.model, self.run.prompt_tokens, completion, ttft,
                          cancelled=cancelled and bool(self.unfinished or self.first is None))
# --8<-- [end:metered_events]


class Meter:
    """Where costs go: the metrics, and the key's account."""

    def __init__(self, metrics: Metrics, limits: Limits | None) -> None:
        self.metrics, self.limits = metrics, limits

    def report(self, ticket: Ticket | None, model: str, prompt_tokens: int, completion_tokens: int,
               ttft: float | None, cancelled: bool = False) -> None:
        account = ticket.account if ticket else None
        key = account.name if account else "-"
        m = self.metrics
        m.prompt_tokens.labels(model, key).inc(prompt_tokens)
        m.completion_tokens.labels(model, key).inc(completion_tokens)
        if ttft is not None:
            m.ttft.labels(model).observe(ttft)
        if cancelled:
            m.cancelled.labels(model).inc()
        if account is not None and self.limits is not None:
            self.limits.charge(account, prompt_tokens, completion_tokens)


# --8<-- [start:metered]
class Metered(BackendWrapper):
    """Any backend, with every run and embedding metered; everything else passes through."""

    def __init__(self, inner: Backend, meter: Meter) -> None:
        super().__init__(inner)
        self.meter = meter

    def _metered(self, run: Run, model: str) -> Run:
        run.events = MeteredEvents(run, model, self.meter)
        return run

    def chat(self, body: CreateChatCompletionRequest) -> Run:
        return self._metered(self.inner.chat(body), body.model)

    def complete(self, body: CreateCompletionRequest) -> list[Run]:
        return [self._metered(run, body.model) for run in self.inner.complete(body)]

    async def embed(self, body: CreateEmbeddingRequest) -> Embedded:
        result = await self.inner.embed(body)
        self.meter.report(_ticket.get(), body.model, result.prompt_tokens, 0, None)
        return result
# --8<-- [end:metered]


# --8<-- [start:install]
def install(app: FastAPI, settings: Settings, backend: Backend, owned: bool) -> Backend:
    """Metrics, limits and the metering wrapper around ``backend``; returns the backend to serve."""
    from .limits import Limits
    from .metrics import Metrics

    limits = Limits(settings.keys_file, settings.usage_file) if settings.keys_file else None
    metered = Metered(backend, Meter(Metrics(backend), limits))
    app.state.metrics, app.state.limits = metered.meter.metrics, limits
    app.add_middleware(Observe, metrics=metered.meter.metrics)

    inner_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        async with inner_lifespan(app) as state:
            yield state
        if limits is not None:
            limits.save(force=True)
        if owned and settings.upstreams:  # its health checks are tasks on this event loop
            await backend.close()

    app.router.lifespan_context = lifespan
    return metered
# --8<-- [end:install]
