"""GET /v1/models and GET /v1/models/{id}, and the one place a model name is checked."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .. import errors
from ..engine import Engine
from .deps import get_engine

router = APIRouter()


def model_object(engine: Engine) -> dict[str, Any]:
    return {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "local"}


# --8<-- [start:require_model]
def require_model(engine: Engine, requested: str) -> None:
    """Unknown names are refused with 404, never silently mapped to the loaded model."""
    if requested != engine.model_id:
        raise errors.model_not_found(requested)
# --8<-- [end:require_model]


# --8<-- [start:list_models]
@router.get("/models")
async def list_models(engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(engine)]}
# --8<-- [end:list_models]


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    require_model(engine, model_id)
    return model_object(engine)
