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
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ModelRoute:
    name: str
    litellm_model: str
    api_base: str | None = None
    api_key: str | None = None


class ModelRouter:
    def __init__(self, aliases: dict[str, ModelRoute] | None = None) -> None:
        self.aliases = aliases or {}

    @classmethod
    def from_file(cls, path: Path | None) -> ModelRouter:
        if path is None:
            return cls()
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
        return cls(aliases)

    def route(self, model: str) -> ModelRoute:
        return self.aliases.get(model) or ModelRoute(name=model, litellm_model=model)

    def names(self) -> list[str]:
        return list(self.aliases)
