"""Model routing: plain names go to litellm as given; an optional YAML file adds aliases.

    # OPENGROVE_MODEL_CONFIG=models.yaml
    models:
      - name: local-llama            # what clients send as `model`
        model: openai/llama3.1       # the litellm model string
        api_base: http://127.0.0.1:8080/v1
        api_key_env: LLAMA_API_KEY   # optional: read the key from this variable

Plain names use litellm's own environment (OPENAI_API_KEY, OPENAI_API_BASE, ANTHROPIC_API_KEY, …).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.errors import InvalidRequest


@dataclass(frozen=True)
class ModelRoute:
    name: str
    litellm_model: str
    api_base: str | None = None
    api_key: str | None = None


def unknown_model_message(name: str) -> str:
    return (
        f"The model '{name}' does not exist or you do not have access to it: use one of the "
        "models GET /v1/models lists (OPENGROVE_MODELS and the aliases of "
        "OPENGROVE_MODEL_CONFIG, or the project's own list)."
    )


class ModelRouter:
    def __init__(
        self, aliases: dict[str, ModelRoute] | None = None, listed: Iterable[str] = ()
    ) -> None:
        self.aliases = aliases or {}
        self.listed = frozenset(listed)  # OPENGROVE_MODELS: known without asking litellm

    async def require_known(self, name: str, allowed: Collection[str] | None = None) -> None:
        """400 `model_not_found` for a model outside `allowed` (a project's allowlist; by
        default the configured models and aliases), or one litellm cannot route. Checked
        before anything reaches litellm: a name like `bedrock/…` or `ollama/…` would use the
        host's ambient credentials or services."""
        if allowed is None:
            if name in self.aliases or name in self.listed:
                return
            raise InvalidRequest(unknown_model_message(name), param="model", code="model_not_found")
        if name not in allowed:
            raise InvalidRequest(unknown_model_message(name), param="model", code="model_not_found")
        if name in self.aliases or name in self.listed:
            return
        from app.llm import adapter  # litellm loads on first need (in a thread)

        if adapter.provider_of(await adapter.load(), self.route(name)) is None:
            raise InvalidRequest(unknown_model_message(name), param="model", code="model_not_found")

    @classmethod
    def from_file(cls, path: Path | None, listed: Iterable[str] = ()) -> ModelRouter:
        if path is None:
            return cls(listed=listed)
        data = yaml.safe_load(Path(path).read_text()) or {}
        aliases: dict[str, ModelRoute] = {}
        for entry in data.get("models", []):
            key_env = entry.get("api_key_env")
            aliases[entry["name"]] = ModelRoute(
                name=entry["name"],
                litellm_model=entry["model"],
                api_base=entry.get("api_base"),
                api_key=os.environ.get(key_env) if key_env else entry.get("api_key"),
            )
        return cls(aliases, listed)

    def route(self, model: str) -> ModelRoute:
        return self.aliases.get(model) or ModelRoute(name=model, litellm_model=model)

    def names(self) -> list[str]:
        return list(self.aliases)
