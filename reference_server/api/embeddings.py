"""POST /v1/embeddings: one vector per input."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..openapi import responses
from ..protocol import CreateEmbeddingRequest
from ..serving.common import encode_base64
from ..serving.types import CreateEmbeddingResponse
from .deps import BackendDep, check_limits, require_model

router = APIRouter(tags=["embeddings"])


# --8<-- [start:create_embedding]
@router.post("/embeddings", response_model=None,
             responses=responses(CreateEmbeddingResponse, errors=(404,), backend=True))
async def create_embedding(body: CreateEmbeddingRequest, request: Request, backend: BackendDep) -> CreateEmbeddingResponse:
    check_limits(request, body)
    require_model(backend, body.model)
    result = await backend.embed(body)
    encode = encode_base64 if body.encoding_format == "base64" else list
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)],
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
# --8<-- [end:create_embedding]
