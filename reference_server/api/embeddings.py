"""POST /v1/embeddings: one vector per input."""

from __future__ import annotations

from fastapi import APIRouter

from ..protocol import CreateEmbeddingRequest
from ..serving.common import encode_base64
from ..serving.types import CreateEmbeddingResponse
from .deps import BackendDep, require_model

router = APIRouter(tags=["embeddings"])


# --8<-- [start:create_embedding]
@router.post("/embeddings", response_model=None)
async def create_embedding(body: CreateEmbeddingRequest, backend: BackendDep) -> CreateEmbeddingResponse:
    require_model(backend, body.model)
    result = await backend.embed(body)
    encode = encode_base64 if body.encoding_format == "base64" else list
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)],
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
# --8<-- [end:create_embedding]
