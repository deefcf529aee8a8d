"""Pydantic types shared by several domains: metadata, tools, tool resources, response formats.

Request models forbid unknown fields, as OpenAI rejects them ("Unrecognized request argument").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import to_json


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_key_value_object(
    name: str, value: dict[str, Any], check_item: Callable[[str, Any], None]
) -> None:
    """OpenAI's limits on `metadata` / `attributes`: at most 16 keys of at most 64 characters;
    `check_item(key, item)` raises ValueError for a value it refuses."""
    if len(value) > 16:
        raise ValueError(
            f"Invalid '{name}': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(value)} properties instead."
        )
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(
                f"Invalid '{name}': key too long. Expected a key with maximum length 64, "
                f"but got a key with length {len(key)} instead."
            )
        check_item(key, item)


def _check_metadata_item(key: str, item: str) -> None:
    if len(item) > 512:
        raise ValueError(
            f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
            f"length 512, but got a string with length {len(item)} instead."
        )


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is not None:
        check_key_value_object("metadata", value, _check_metadata_item)
    return value


Metadata = Annotated[dict[str, str] | None, AfterValidator(_check_metadata)]

FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", max_length=64)]


def _check_json_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        # Imported here: only requests carrying a schema pay for jsonschema's import.
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"Invalid schema for function parameters: {exc.message}") from exc
    return value


JSONSchemaObject = Annotated[dict[str, Any] | None, AfterValidator(_check_json_schema)]


class FunctionDefinition(RequestModel):
    name: FunctionName
    description: str | None = None
    parameters: JSONSchemaObject = None
    strict: bool | None = False


class FunctionTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class CodeInterpreterTool(RequestModel):
    type: Literal["code_interpreter"]


class FileSearchRankingOptions(RequestModel):
    ranker: Literal["auto", "default_2024_08_21"] = "auto"
    score_threshold: float = Field(ge=0, le=1)


class FileSearchSettings(RequestModel):
    max_num_results: int | None = Field(default=None, ge=1, le=50)
    ranking_options: FileSearchRankingOptions | None = None


class FileSearchTool(RequestModel):
    type: Literal["file_search"]
    file_search: FileSearchSettings | None = None


Tool = Annotated[CodeInterpreterTool | FileSearchTool | FunctionTool, Field(discriminator="type")]
ToolList = Annotated[list[Tool], Field(max_length=128)]


class CodeInterpreterResources(RequestModel):
    file_ids: list[str] = Field(default_factory=list, max_length=20)


class StaticChunking(RequestModel):
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap_at_most_half(self) -> StaticChunking:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError(
                "Invalid 'chunk_overlap_tokens': must not exceed half of max_chunk_size_tokens."
            )
        return self


class AutoChunkingStrategy(RequestModel):
    type: Literal["auto"]


class StaticChunkingStrategy(RequestModel):
    type: Literal["static"]
    static: StaticChunking


ChunkingStrategy = Annotated[
    AutoChunkingStrategy | StaticChunkingStrategy, Field(discriminator="type")
]


class VectorStoreHelper(RequestModel):
    file_ids: list[str] = Field(default_factory=list, max_length=10000)
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata = None


class FileSearchResources(RequestModel):
    vector_store_ids: list[str] | None = Field(default=None, max_length=1)
    vector_stores: list[VectorStoreHelper] | None = Field(default=None, max_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> FileSearchResources:
        if self.vector_store_ids is not None and self.vector_stores is not None:
            raise ValueError(
                "Invalid 'tool_resources.file_search': provide either 'vector_store_ids' or "
                "'vector_stores', not both."
            )
        return self


class ToolResources(RequestModel):
    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResources | None = None


class JSONSchemaFormat(RequestModel):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: JSONSchemaObject = Field(default=None, alias="schema")
    strict: bool | None = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextFormat(RequestModel):
    type: Literal["text"]


class JSONObjectFormat(RequestModel):
    type: Literal["json_object"]


class JSONSchemaResponseFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = (
    Literal["auto"]
    | Annotated[
        TextFormat | JSONObjectFormat | JSONSchemaResponseFormat, Field(discriminator="type")
    ]
)

Temperature = Annotated[float | None, Field(ge=0, le=2)]
TopP = Annotated[float | None, Field(ge=0, le=1)]
ReasoningEffort = Literal["minimal", "low", "medium", "high"] | None


def dump_tools(tools: list[Any] | None) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True, by_alias=True) for t in tools or []]


def dump_optional(value: Any) -> Any:
    """A request sub-object as stored JSON (None stays None, literals stay literals)."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True, by_alias=True)
    return value


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = True


class ObjectResponse(JSONResponse):
    """A response object (a schema's `from_row`, or a list of them) serialised once, to JSON
    bytes in pydantic-core. Routes returning it name their schema in `response_model=` for
    the OpenAPI document; FastAPI then neither re-validates nor re-encodes what they return.
    """

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            return to_json(content)
        # Plain objects (lists of rendered rows): orjson, 4x faster than pydantic-core on a
        # page of 20 messages; a model inside one is dumped as to_json would write it.
        return orjson.dumps(content, default=_dump_model)


def _dump_model(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)  # as to_json writes it
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
