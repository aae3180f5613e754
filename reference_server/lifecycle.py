"""Stopping cleanly: on SIGTERM the server stops accepting connections, lets the requests in
flight finish for ``shutdown_grace`` seconds, ends what is left with an error, and exits 0.

uvicorn already stops accepting and waits for open responses; what it does at the end of its
wait is cancel them, which cuts a stream mid-chunk and turns a pending request into a bare
500. ``Drain`` ends them first, and in each protocol's own words: every run of the backend goes
through ``Drained``, and a run still going at the deadline raises the ``server_shutting_down``
error where it is being read, exactly as a failing generation would. So a chat stream ends with
an error event and ``[DONE]``, a Responses stream with ``error`` and ``response.failed``, and a
request still waiting for the model gets a 503 in its envelope. The generation is closed, so the
model stops working for it at the next token. Anything the backend does not hold (a body still
arriving, say) is cancelled by ``DrainMiddleware`` a moment later.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from types import FrameType
from typing import Any, TypeVar

import anyio
import uvicorn
from starlette.responses import JSONResponse

from . import errors
from .backends.base import Backend, BackendWrapper, Embedded, Event, Run

T = TypeVar("T")

BACKSTOP_S = 5.0  # uvicorn's own deadline comes this much after the grace period
FALLBACK_S = 1.0  # after the deadline, what the backend did not end is cancelled this much later


def shutting_down() -> errors.APIError:
    return errors.APIError(503, "The server is shutting down; the request was stopped before it finished. "
                           "Retry it.", type="server_error", code="server_shutting_down",
                           headers={"Retry-After": "1"})


# --8<-- [start:drain]
class Drain:
    """The deadline of a shutdown, and what is waiting on the backend when it comes."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.started = self.expired = False
        self._waiting: dict[asyncio.Task[Any], bool] = {}  # task -> interrupted by the drain
        self._scopes: set[anyio.CancelScope] = set()

    def begin(self) -> None:
        """Shutdown has started (on the event loop): the grace period runs from now."""
        if not self.started:
            self.started = True
            loop = asyncio.get_running_loop()
            loop.call_later(self.grace, self.expire)
            loop.call_later(self.grace + FALLBACK_S, self._cancel_the_rest)

    def expire(self) -> None:
        self.expired = True
        for task in list(self._waiting):
            self._waiting[task] = True
            task.cancel()

    async def interruptible(self, work: Awaitable[T]) -> T:
        """Awaits ``work`` (the backend's); at the deadline it raises ``shutting_down()`` instead."""
        if self.expired:
            getattr(work, "close", lambda: None)()  # a coroutine never awaited
            raise shutting_down()
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = False
        try:
            return await work
        except asyncio.CancelledError:
            if not self._waiting.get(task):
                raise  # cancelled by someone else (the client left): not ours to turn into an error
            if hasattr(task, "uncancel"):  # Python 3.11+: the cancellation is consumed here
                task.uncancel()
            raise shutting_down() from None
        finally:
            self._waiting.pop(task, None)

    def _cancel_the_rest(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()
# --8<-- [end:drain]


class DrainedEvents:
    """A Run's events, passed through; at the deadline, the one being waited for is the error."""

    def __init__(self, inner: Any, drain: Drain) -> None:
        self.inner, self.drain = inner, drain

    def __aiter__(self) -> "DrainedEvents":
        return self

    def __getattr__(self, name: str) -> Any:  # ``start`` (backends/base.py), where the inner events have it
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def __anext__(self) -> Event:
        try:
            return await self.drain.interruptible(self.inner.__anext__())
        except errors.APIError:
            await self.inner.aclose()  # stops the generation
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class Drained(BackendWrapper):
    """Any backend, with every run (and embedding) ended by the drain's deadline; the rest passes through."""

    def __init__(self, inner: Backend, drain: Drain) -> None:
        super().__init__(inner)
        self.drain = drain

    def _drained(self, run: Run) -> Run:
        run.events = DrainedEvents(run.events, self.drain)
        return run

    def chat(self, body: Any) -> Run:
        return self._drained(self.inner.chat(body))

    def complete(self, body: Any) -> list[Run]:
        return [self._drained(run) for run in self.inner.complete(body)]

    async def embed(self, body: Any) -> Embedded:
        return await self.drain.interruptible(self.inner.embed(body))


class DrainMiddleware:
    """ASGI middleware: what is still in flight just after the deadline (and not on the backend:
    a body still arriving) is cancelled; a request not yet answered gets the 503."""

    def __init__(self, app: Any, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "ended": False}

        async def tracked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        with anyio.CancelScope() as cancel:
            self.drain._scopes.add(cancel)
            try:
                await self.app(scope, receive, tracked)
            finally:
                self.drain._scopes.discard(cancel)
        if not cancel.cancel_called or state["ended"]:
            return
        if not state["started"]:
            exc = shutting_down()
            body = errors.render(scope["path"], exc.status, exc.message, exc.type, exc.param, exc.code)
            await JSONResponse(body, status_code=exc.status, headers=exc.headers)(scope, receive, send)
        else:  # a response cut short: end it (the protocol's error event is the backend's job, above)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


# --8<-- [start:server]
class Server(uvicorn.Server):
    """uvicorn's server, which begins the app's drain when shutdown starts and exits 0 on SIGTERM."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, so the process would die "killed by
        # SIGTERM" (exit status 143). A drained shutdown is the clean exit SIGTERM asks for.
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets: Any = None) -> None:
        self.drain.begin()
        await super().shutdown(sockets)
# --8<-- [end:server]
