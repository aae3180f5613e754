"""Anthropic's Messages API under /v1: what the ``anthropic`` SDK and coding agents pointed at a local base URL call.

The SDK sends its key as ``x-api-key``; api/auth.py accepts it as well as a Bearer token.
Errors on /v1/messages* are Anthropic's envelope, ``{"type": "error", "error": {"type",
"message"}}``, its type following the status, whatever raised them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from .. import errors
from ..protocol_anthropic import CountTokensRequest, CreateMessageRequest
from ..serving import anthropic
from .deps import BackendDep, introspective, require_model, started, unless_disconnected
from ..serving.types import AnthropicError

router = APIRouter(tags=["anthropic"])


# --8<-- [start:envelope]
def anthropic_error(status: int, message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return anthropic.error_body(status, message)


errors.register_envelope("/v1/messages", anthropic_error, AnthropicError)
# --8<-- [end:envelope]


# --8<-- [start:create_message]
@router.post("/messages", response_model=None)
async def create_message(body: CreateMessageRequest, request: Request, backend: BackendDep):
    require_model(backend, body.model)
    run = backend.chat(body.to_chat_request(body.model))  # validated and queued: a full queue is a 429 here
    if gone := await started(request, run):  # a gateway: an upstream has sent its first token
        return gone
    reply = anthropic.Reply.start(body.model)
    if body.stream:
        return anthropic.sse_response(anthropic.stream_events(run, reply))
    return await unless_disconnected(request, anthropic.collect(run, reply))
# --8<-- [end:create_message]


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, backend: BackendDep) -> dict[str, int]:
    require_model(backend, body.model)
    counter = introspective(backend, "Counting tokens")
    return {"input_tokens": counter.count_chat_tokens(body.to_openai(body.model))}
