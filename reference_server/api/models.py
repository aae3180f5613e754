"""GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from ..backends.base import ModelCard
from ..serving.types import ListModelsResponse, Model
from .deps import BackendDep, require_model

router = APIRouter(tags=["models"])


def model_object(card: ModelCard) -> Model:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": card.owned_by}


# --8<-- [start:list_models]
@router.get("/models", response_model=None)
async def list_models(backend: BackendDep) -> ListModelsResponse:
    return {"object": "list", "data": [model_object(card) for card in backend.models()]}
# --8<-- [end:list_models]


@router.get("/models/{model_id:path}", response_model=None)
async def retrieve_model(model_id: str, backend: BackendDep) -> Model:
    require_model(backend, model_id)
    return next(model_object(card) for card in backend.models() if card.id == model_id)
