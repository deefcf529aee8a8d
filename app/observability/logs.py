"""Log setup: one handler on the root logger, text or JSON, for our loggers and uvicorn's.

Every record gets the request id, project id and run id in force when it was made (from
`app.observability.context`), and passes a filter that masks anything shaped like a key
(`Bearer …`, `sk-…`): a safety net, since no code should log one in the first place.

The setup is a `logging.config.dictConfig` dictionary so uvicorn can apply it as its
`log_config`: with `serve --processes N` uvicorn starts each worker process afresh and
configures logging there from that dictionary, so every process logs alike.
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from app.config import Settings
from app.observability import context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("request_id", "project_id", "run_id")
# Chatty at INFO (or DEBUG) about every call they make: only their warnings are worth a line.
NOISY_LOGGERS = (
    "litellm",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "httpx",
    "httpcore",
    "openai",
    "aiosqlite",
    "asyncio",
    "multipart",
    "python_multipart",
)

# `Bearer <token>` and OpenAI-style keys (`sk-…`, `sk-proj-…`, `sk-ant-…`).
_SECRET = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+|\bsk-[A-Za-z0-9_-]{6,}")


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or "sk-") + "***", text)


class RedactSecrets(logging.Filter):
    """Masks key-shaped strings in the message and in the exception text of every record."""

    _exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken format string: the handler reports it as logging does
        # Formatted once: the formatter finds the final message, with no arguments left.
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatted once here (formatters reuse `exc_text`): a provider's error can quote
            # the key it was sent.
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            record.exc_info = None  # the JSON formatter would format it again, unmasked
        return True


class AddContext(logging.Filter):
    """Puts the ids in force (request, project, run) on the record, those that are set."""

    _vars = tuple((name, getattr(context, name)) for name in CONTEXT_FIELDS)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in self._vars:
            value = var.get()
            if value is not None:
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <message> [request_id=… project_id=… run_id=…]`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = [
            f"{name}={value}" for name in CONTEXT_FIELDS if (value := getattr(record, name, None))
        ]
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, the known ids, extras."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            # uvicorn adds a copy of some messages with terminal colour codes.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )


def logging_config(settings: Settings) -> dict[str, Any]:
    """The dictConfig for `settings` (also handed to uvicorn as its `log_config`)."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    quiet = max(level, logging.WARNING)
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": f"{__name__}.AddContext"},
            "redact": {"()": f"{__name__}.RedactSecrets"},
        },
        "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                # On the handler, not a logger: handler filters see propagated records too.
                "filters": ["context", "redact"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {
            # uvicorn's loggers lose their own handlers and write through ours.
            **{
                name: {"level": level, "handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            **{name: {"level": quiet, "handlers": [], "propagate": True} for name in NOISY_LOGGERS},
        },
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings))
