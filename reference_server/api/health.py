"""GET /health: 200 when the model is ready, 503 (OpenAI envelope) while it loads or if it failed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .deps import BackendDep

router = APIRouter(tags=["health"])


# --8<-- [start:health]
@router.get("/health")
async def health(backend: BackendDep) -> dict[str, Any]:
    backend.require_ready()
    return {"status": "ok", "model": backend.models()[0].id, "queue_depth": backend.queue_depth}
# --8<-- [end:health]
