"""GET /health: 200 when the model is ready, 503 (OpenAI envelope) while it loads or if it failed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..engine import Engine
from .deps import get_engine

router = APIRouter()


# --8<-- [start:health]
@router.get("/health")
async def health(engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    engine.require_ready()
    return {"status": "ok", "model": engine.model_id, "queue_depth": engine.queue_depth}
# --8<-- [end:health]
