"""POST /v1/completions: the legacy text-in, text-out endpoint (no chat template)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..protocol import CreateCompletionRequest
from ..serving import completions
from ..serving.common import Responder
from ..serving.sse import sse_response
from .deps import BackendDep, require_model, started, unless_disconnected

router = APIRouter(tags=["completions"])


@router.post("/completions", response_model=None)
async def create_completion(body: CreateCompletionRequest, request: Request, backend: BackendDep):
    require_model(backend, body.model)
    runs = backend.complete(body)
    if gone := await started(request, runs[0]):
        return gone
    want_logprobs = body.logprobs is not None
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    r = Responder.start("cmpl", "text_completion", body.model, backend.fingerprint, include_usage)
    if body.stream:
        return sse_response(completions.stream_chunks(runs[0], r, want_logprobs))
    return await unless_disconnected(request, completions.collect(runs, r, want_logprobs))
