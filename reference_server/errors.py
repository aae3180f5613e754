"""Every failure leaves the server as OpenAI's error envelope.

    {"error": {"message": "...", "type": "...", "param": "..." | null, "code": "..." | null}}

Handlers here replace FastAPI's ``{"detail": ...}`` for validation errors, HTTP errors
(unknown routes, wrong methods) and unexpected exceptions, so no client ever sees another shape.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("reference_server")


# --8<-- [start:api_error]
class APIError(Exception):
    """An error the client should see, with the HTTP status and OpenAI's fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
# --8<-- [end:api_error]


# --8<-- [start:envelopes]
# Other protocols (Ollama's /api/*, Anthropic's /v1/messages) answer errors in their own shape.
# A protocol registers how to render (status, message, type, param, code) for its path prefix;
# everything else gets OpenAI's envelope. The handlers below go through ``render``.
Envelope = Callable[[int, str, str, "str | None", "str | None"], dict[str, Any]]
_ENVELOPES: dict[str, Envelope] = {}


def register_envelope(path_prefix: str, envelope: Envelope) -> None:
    _ENVELOPES[path_prefix] = envelope


def render(path: str, status: int, message: str, type: str, param: str | None = None,
           code: str | None = None) -> dict[str, Any]:
    """The error body for a request to ``path``, in its protocol's shape (longest prefix wins)."""
    for prefix in sorted(_ENVELOPES, key=len, reverse=True):
        if path.startswith(prefix):
            return _ENVELOPES[prefix](status, message, type, param, code)
    return error_body(message, type, param, code)


def respond(request: Request, status: int, message: str, type: str, param: str | None = None,
            code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(render(request.url.path, status, message, type, param, code), status_code=status,
                        headers=headers)
# --8<-- [end:envelopes]


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --8<-- [start:constructors]
def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def model_loading() -> APIError:
    return APIError(503, "The model is still loading; retry in a few seconds.", type="server_error",
                    code="model_loading", headers={"Retry-After": "1"})


def queue_full(limit: int) -> APIError:
    return APIError(429, f"The server is busy: {limit} requests are already waiting for the model. "
                    "Retry after a short wait.", type="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": "1"})


def context_length_exceeded(prompt_tokens: int, max_tokens: int, n_ctx: int, param: str) -> APIError:
    return invalid_request(
        f"This model's maximum context length is {n_ctx} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
        f"completion). Please reduce the length of the messages or completion.",
        param=param, code="context_length_exceeded")
# --8<-- [end:constructors]


def loc_to_param(loc: tuple[Any, ...] | list[Any], body: Any = None, absent_key: bool = True) -> str | None:
    """('body', 'messages', 0, 'user', 'content') -> 'messages[0].content'.

    Pydantic puts union-branch labels (a discriminator's tag, 'str', 'list[...]') into the
    location; they are not fields the client sent. Walking the request body alongside the
    location keeps only real keys and indexes, plus a trailing key the client did not send
    when ``absent_key`` (the error is about a missing or unknown field).
    """
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out, cur = "", body
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int) and isinstance(cur, list) and part < len(cur):
            out, cur = out + f"[{part}]", cur[part]
        elif isinstance(cur, dict) and part in cur:
            out, cur = out + (f".{part}" if out else str(part)), cur[part]
        elif last and absent_key and (isinstance(cur, dict) or body is None) and not isinstance(part, int):
            out += f".{part}" if out else str(part)
    return out or None


def _absent_key(err: dict[str, Any]) -> bool:
    """Whether the error's last location is a field the client did not send (or should not have)."""
    return err.get("type") in ("missing", "extra_forbidden") or err.get("type") is None


# --8<-- [start:most_relevant]
def most_relevant(errors: list[dict[str, Any]], body: Any) -> dict[str, Any]:
    """The error to report when pydantic gives several (one per branch of a union).

    A list sent for ``stop`` fails the ``str`` branch ("should be a valid string") and the list
    branch ("at most 4 items"); the second is the one the client needs. Prefer the error that
    reaches deepest into what the client sent, then one that is not a plain type mismatch.
    """
    def rank(err: dict[str, Any]) -> tuple[int, int, int]:
        param = loc_to_param(err.get("loc", ()), body, _absent_key(err)) or ""
        depth = param.count(".") + param.count("[") + bool(param)
        kind = str(err.get("type", ""))
        mismatch = kind.endswith("_type") or kind == "literal_error" and isinstance(err.get("input"), (dict, list))
        return depth, not mismatch, -errors.index(err)
    return max(errors, key=rank) if errors else {}
# --8<-- [end:most_relevant]


_CONTENT_PART_TYPE = re.compile(r"messages\[\d+\]\.content\[\d+\]\.type")


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    if err.get("type") == "cross_field":  # a rule between two fields (protocol.py): its own words
        return str(err.get("msg"))
    if err.get("type") == "union_tag_invalid":  # e.g. an unknown message role
        ctx = err.get("ctx", {})
        return f"Invalid value for '{param}': {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}."
    if param and err.get("type") == "literal_error" and _CONTENT_PART_TYPE.fullmatch(param):
        return (f"Invalid content type: '{err.get('input')}' parts are not supported by this model, "
                f"which reads text only. Send 'text' parts or a string.")
    if param is None:
        return f"The request body must be a JSON object: {err.get('msg', 'invalid body')}."
    if err.get("type") in ("missing", "union_tag_not_found"):
        return f"Missing required parameter: '{param}'."
    if err.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    got = err.get("input")
    shown = json.dumps(got, default=str)[:200] if not isinstance(got, dict) else "an object"
    return f"Invalid value for '{param}': {err.get('msg', 'invalid value')} (got {shown})."


# --8<-- [start:validation_handler]
async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid" or (first.get("loc") == ("body",) and first.get("type") == "missing"):
        message = ("We could not parse the JSON body of your request. The API expects a JSON object "
                   "body with Content-Type: application/json.")
        return respond(request, 400, message, "invalid_request_error")
    content_type = request.headers.get("content-type", "")
    if first.get("loc") == ("body",) and "json" not in content_type:
        message = (f"The request body must be JSON, sent with 'Content-Type: application/json' "
                   f"(got {content_type or 'no Content-Type'}).")
        return respond(request, 400, message, "invalid_request_error")
    chosen = most_relevant(errors, exc.body)
    param = loc_to_param(chosen.get("loc", ()), exc.body, _absent_key(chosen))
    if chosen.get("type") in ("union_tag_invalid", "union_tag_not_found") and param:  # the field that picks the branch
        param += "." + str(chosen.get("ctx", {}).get("discriminator", "")).strip("'")
    return respond(request, 400, _validation_message(chosen, param), "invalid_request_error", param)
# --8<-- [end:validation_handler]


async def _on_api_error(request: Request, exc: APIError) -> JSONResponse:
    return respond(request, exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return respond(request, exc.status_code, message, type_, headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return respond(request, 500, "The server had an error while processing your request.", "server_error")


# --8<-- [start:install]
def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
# --8<-- [end:install]
