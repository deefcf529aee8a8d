"""/v1/models: the models this server is configured to route to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import CallerDep, Models, Settings, StartedAt
from app.errors import APIError

router = APIRouter(prefix="/models", tags=["models"])


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "opengrove"}


def _model_names(settings: Settings, models: Models, caller: CallerDep) -> list[str]:
    """The project's own list, or: configured names first, then the config file's aliases."""
    if caller.models is not None:
        return list(caller.models)
    names = list(settings.models)
    names += [n for n in models.names() if n not in names]
    return names


@router.get("")
async def list_models(
    settings: Settings, models: Models, caller: CallerDep, created: StartedAt
) -> dict[str, Any]:
    names = _model_names(settings, models, caller)
    return {"object": "list", "data": [_model(m, created) for m in names]}


@router.get("/{model_id:path}")
async def get_model(
    model_id: str, settings: Settings, models: Models, caller: CallerDep, created: StartedAt
) -> dict[str, Any]:
    if model_id not in _model_names(settings, models, caller):
        raise APIError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    return _model(model_id, created)
