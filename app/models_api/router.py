"""/v1/models: the models this server is configured to route to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.errors import APIError

router = APIRouter(prefix="/models", tags=["models"])


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "opengrove"}


def _model_names(request: Request) -> list[str]:
    """Configured names first, then aliases from the model config file."""
    names = list(request.app.state.settings.models)
    names += [n for n in request.app.state.model_router.names() if n not in names]
    return names


@router.get("")
async def list_models(request: Request) -> dict[str, Any]:
    created = request.app.state.started_at
    return {"object": "list", "data": [_model(m, created) for m in _model_names(request)]}


@router.get("/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    if model_id not in _model_names(request):
        raise APIError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    return _model(model_id, request.app.state.started_at)
