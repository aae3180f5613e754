"""GET /health: 200 when the model is ready, 503 (OpenAI envelope) while it loads or if it failed."""

from __future__ import annotations

from fastapi import APIRouter

from ..openapi import responses
from ..serving.types import HealthResponse
from .deps import BackendDep

router = APIRouter(tags=["health"])


# --8<-- [start:health]
@router.get("/health", response_model=None, responses=responses(HealthResponse, errors=(503,)))
async def health(backend: BackendDep) -> HealthResponse:
    backend.require_ready()
    return {"status": "ok", "model": backend.models()[0].id, "queue_depth": backend.queue_depth}
# --8<-- [end:health]
