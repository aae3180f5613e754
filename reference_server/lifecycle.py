"""Stopping cleanly: on SIGTERM the server stops accepting connections, lets the requests in
flight finish for ``shutdown_grace`` seconds, ends what is left with an error, and exits 0.

uvicorn already stops accepting and waits for open responses; what it does at the end of its
wait is cancel them, which cuts a stream mid-chunk and turns a pending request into a bare
500. ``Drain`` ends them first, in the protocol's own words: a stream gets an error event and
its terminator (the client's SDK raises a clear error instead of a broken connection), a
request still waiting for the model gets a 503 in the error envelope. Cancelling a request
closes its generation, so the model stops working for it at the next token.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import anyio
import uvicorn
from starlette.responses import JSONResponse

from . import errors
from .serving.sse import DONE, encode

# After the grace period the drain ends every response; uvicorn's own deadline comes this much later.
BACKSTOP_S = 5.0


def shutting_down() -> errors.APIError:
    return errors.APIError(503, "The server is shutting down; the request was stopped before it finished. "
                           "Retry it.", type="server_error", code="server_shutting_down",
                           headers={"Retry-After": "1"})


# How a protocol ends a stream with an error; protocols with their own framing register theirs.
StreamEnding = Callable[[dict[str, Any]], bytes]
_STREAM_ENDINGS: dict[str, StreamEnding] = {"/": lambda body: encode(body) + DONE}


def register_stream_ending(path_prefix: str, ending: StreamEnding) -> None:
    _STREAM_ENDINGS[path_prefix] = ending


def _stream_ending(path: str) -> StreamEnding:
    return _STREAM_ENDINGS[max((p for p in _STREAM_ENDINGS if path.startswith(p)), key=len)]


# --8<-- [start:drain]
class Drain:
    """The app's requests in flight, and the deadline after which they are ended."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.started = self.expired = False
        self._scopes: set[anyio.CancelScope] = set()

    @property
    def in_flight(self) -> int:
        return len(self._scopes)

    def begin(self) -> None:
        """Shutdown has started (on the event loop): the grace period runs from now."""
        if not self.started:
            self.started = True
            asyncio.get_running_loop().call_later(self.grace, self.expire)

    def expire(self) -> None:
        self.expired = True
        for scope in list(self._scopes):
            scope.cancel()


class DrainMiddleware:
    """ASGI middleware: runs each request where the drain can end it, and ends it properly."""

    def __init__(self, app: Any, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "ended": False, "stream": False}

        async def tracked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["stream"] = any(k == b"content-type" and v.startswith(b"text/event-stream")
                                      for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        with anyio.CancelScope() as cancel:
            self.drain._scopes.add(cancel)
            try:
                await self.app(scope, receive, tracked)
            finally:
                self.drain._scopes.discard(cancel)
        if cancel.cancel_called and not state["ended"]:
            await self._end(scope, receive, send, state)

    async def _end(self, scope: dict[str, Any], receive: Any, send: Any, state: dict[str, bool]) -> None:
        exc = shutting_down()
        body = errors.render(scope["path"], exc.status, exc.message, exc.type, exc.param, exc.code)
        if not state["started"]:
            await JSONResponse(body, status_code=exc.status, headers=exc.headers)(scope, receive, send)
        else:  # a stream: an error event and the end of it; anything else was sent whole already
            ending = _stream_ending(scope["path"])(body) if state["stream"] else b""
            await send({"type": "http.response.body", "body": ending, "more_body": False})
# --8<-- [end:drain]


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
