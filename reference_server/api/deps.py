"""Request-scoped helpers shared by the routers: the backend, readiness, the model check, disconnects."""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from .. import errors, request_limits
from ..backends.base import Backend, Run, start
from ..errors import error_body

T = TypeVar("T")

if sys.version_info < (3, 11):  # anyio's dependency there
    from exceptiongroup import BaseExceptionGroup


# --8<-- [start:get_backend]
def get_backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(get_backend)]

# --8<-- [end:get_backend]


def check_limits(request: Request, body: Any) -> None:
    """The server's limits on lists and counts (request_limits.py): a 400 naming the parameter."""
    request_limits.check(body, request.app.state.settings)


# --8<-- [start:require_model]
def require_model(backend: Backend, requested: str) -> None:
    """Unknown names are refused with 404, never silently mapped to the loaded model."""
    if all(card.id != requested for card in backend.models()):
        raise errors.model_not_found(requested)
# --8<-- [end:require_model]


# --8<-- [start:unless_disconnected]
async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | JSONResponse:
    """Awaits ``work`` (a non-streamed generation) but abandons it if the client hangs up.

    Abandoning cancels the generation, so a client that gives up on a long request frees the
    model for the next one instead of leaving it to finish for nobody. (Streams need no help:
    Starlette cancels them on disconnect.)
    """
    result: dict[str, Any] = {}
    try:
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            result["value"] = await work
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # anyio wraps even the host's error: unwrap it (an APIError's status)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if "value" in result:
        return result["value"]
    # 499 "client closed request" (nginx's convention); nobody is there to read it.
    return JSONResponse(error_body("Client closed the request.", "invalid_request_error"), status_code=499)
# --8<-- [end:unless_disconnected]


# --8<-- [start:started]
async def started(request: Request, run: Run) -> JSONResponse | None:
    """Waits until the backend has begun ``run`` (backends/base.py: ``start``), unless the client hangs up.

    For the local backend this returns at once. A gateway waits here for an upstream's first
    token, so a failure on every upstream is still an HTTP status; a 499 if the client left.
    """
    if getattr(run.events, "start", None) is None:
        return None
    gone = await unless_disconnected(request, start(run))
    return gone if isinstance(gone, JSONResponse) else None
# --8<-- [end:started]


# --8<-- [start:introspective]
def introspective(backend: Backend, what: str) -> Backend:
    """The backend, if it can show the model itself (backends/base.py, introspection); else a 501.

    The local backend can; a gateway to other servers (backends/upstream/) cannot tokenize or
    read a model file it does not have.
    """
    if not callable(getattr(backend, "info", None)):
        raise errors.APIError(501, f"{what} needs the model itself, which this server's backend (a gateway "
                              "to other servers) cannot show.", type="server_error", code="not_supported")
    return backend
# --8<-- [end:introspective]
