"""/v1/models: the models this server is configured to route to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import Models, Settings, StartedAt
from app.errors import APIError

router = APIRouter(prefix="/models", tags=["models"])


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "opengrove"}


def _model_names(settings: Settings, models: Models) -> list[str]:
    """Configured names first, then aliases from the model config file."""
    names = list(settings.models)
    names += [n for n in models.names() if n not in names]
    return names


@router.get("")
async def list_models(settings: Settings, models: Models, created: StartedAt) -> dict[str, Any]:
    return {"object": "list", "data": [_model(m, created) for m in _model_names(settings, models)]}


@router.get("/{model_id:path}")
async def get_model(
    model_id: str, settings: Settings, models: Models, created: StartedAt
) -> dict[str, Any]:
    if model_id not in _model_names(settings, models):
        raise APIError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    return _model(model_id, created)
