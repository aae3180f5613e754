"""How much one request may ask for: the body size, and the lists and counts inside it.

A body over ``max_body_bytes`` is refused with a 413 by ``BodyLimit`` before anything parses
it: by its Content-Length when it declares one, else by counting the bytes as they arrive
(a chunked body). The other limits (``LIMITS``) apply to a parsed request: too many messages,
choices, tools or inputs is a 400 that names the parameter. One table drives both the check
and the OpenAPI document (openapi.py), so what /docs says is what the server refuses.
Every limit is a setting (settings.py); course/reference/reliability.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from starlette.responses import JSONResponse

from . import errors
from .protocol import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
from .protocol_responses import CreateResponse
from .settings import Settings

# Methods whose body a route reads; the others' bodies are never read, so they cost nothing.
LIMITED_METHODS = frozenset({"POST", "PUT", "PATCH"})


# --8<-- [start:body_limit]
class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is a 413 in the protocol's envelope, unparsed.

    The body is read here (it would be read whole before parsing anyway) and handed on as one
    message; later ``receive`` calls go to the server, so disconnects are still seen.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in LIMITED_METHODS:
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            return await self._refuse(scope, receive, send, declared)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send, None)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any, size: int | None) -> None:
        """The 413, at once. The connection stays open, and the server reads and drops the rest of the
        body, so that a client still sending it gets to read the answer (closing now would reset the
        connection under it); a body declared at more than twice the limit is not worth it: closed."""
        exc = errors.request_too_large(self.limit, size)
        body = errors.render(scope["path"], exc.status, exc.message, exc.type, exc.param, exc.code)
        headers = {"Connection": "close"} if size is not None and size > 2 * self.limit else None
        await JSONResponse(body, status_code=exc.status, headers=headers)(scope, receive, send)
# --8<-- [end:body_limit]


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed Content-Length before we see it
    return None


# --8<-- [start:limits_table]
@dataclass(frozen=True)
class Limit:
    """``field`` of ``model`` may hold at most ``settings.<setting>``: items, inputs, or a value."""

    model: type[BaseModel]
    field: str
    setting: str
    kind: Literal["items", "inputs", "value"]  # inputs: a list of prompts, not one list of token ids


LIMITS = [
    Limit(CreateChatCompletionRequest, "messages", "max_messages", "items"),
    Limit(CreateChatCompletionRequest, "tools", "max_tools", "items"),
    Limit(CreateChatCompletionRequest, "n", "max_n", "value"),
    Limit(CreateCompletionRequest, "n", "max_n", "value"),
    Limit(CreateCompletionRequest, "prompt", "max_inputs", "inputs"),
    Limit(CreateEmbeddingRequest, "input", "max_inputs", "inputs"),
    Limit(CreateResponse, "input", "max_messages", "inputs"),  # the Responses API: items are its messages
    Limit(CreateResponse, "tools", "max_tools", "items"),
]


def check(body: BaseModel, settings: Settings) -> None:
    """Raises a 400 naming the first parameter over its limit."""
    for limit in LIMITS:
        if type(body) is not limit.model:
            continue
        value, most = getattr(body, limit.field), getattr(settings, limit.setting)
        got = _size(value, limit.kind)
        if got is not None and got > most:
            raise errors.above_limit(limit.field, got, most, items=limit.kind != "value")
# --8<-- [end:limits_table]


def _size(value: Any, kind: str) -> int | None:
    if value is None:
        return None
    if kind == "value":
        return int(value)
    if kind == "inputs" and (isinstance(value, str) or value and isinstance(value[0], int)):
        return None  # one prompt (text or token ids): bounded by the context window, not by count
    return len(value)


def apply_to_schema(components: dict[str, Any], settings: Settings) -> None:
    """Writes each limit into the request schemas of an OpenAPI document (openapi.py)."""
    for limit in LIMITS:
        schema = components.get(limit.model.__name__, {}).get("properties", {}).get(limit.field)
        if schema is None:
            continue
        most = getattr(settings, limit.setting)
        for branch in _branches(schema):
            if limit.kind == "value" and branch.get("type") == "integer":
                branch["maximum"] = min(most, branch.get("maximum", most))
            elif branch.get("type") == "array" and not (limit.kind == "inputs" and _is_token_list(branch)):
                branch["maxItems"] = min(most, branch.get("maxItems", most))


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [schema, *schema.get("anyOf", ()), *schema.get("oneOf", ())]


def _is_token_list(branch: dict[str, Any]) -> bool:
    return branch.get("items", {}).get("type") == "integer"
