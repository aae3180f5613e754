"""POST /v1/chat/completions: messages in, an assistant message (or a stream of deltas) out."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..protocol import CreateChatCompletionRequest
from ..serving import chat
from ..serving.common import Responder
from ..serving.sse import sse_response
from .deps import BackendDep, require_model, started, unless_disconnected

router = APIRouter(tags=["chat"])


# --8<-- [start:create_chat_completion]
@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: CreateChatCompletionRequest, request: Request, backend: BackendDep):
    require_model(backend, body.model)
    run = backend.chat(body)  # validated and queued: a full queue is a 429 before anything is sent
    if gone := await started(request, run):  # a gateway: an upstream has sent its first token
        return gone
    want_logprobs = bool(body.logprobs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        r = Responder.start("chatcmpl", "chat.completion.chunk", body.model, backend.fingerprint, include_usage)
        return sse_response(chat.stream_chunks(run, r, want_logprobs))
    r = Responder.start("chatcmpl", "chat.completion", body.model, backend.fingerprint)
    return await unless_disconnected(request, chat.collect(run, r, want_logprobs))
# --8<-- [end:create_chat_completion]
