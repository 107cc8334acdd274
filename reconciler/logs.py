"""Logging, configured once at the entry point: structlog, JSON lines (orjson) unattended,
readable console output on a terminal. Writes stderr.

Also the home of the process's Redactor (core.redaction): every log line passes through it, and
so do the CLI's output, plan files and /status (`redact`). `protect` adds the secrets resolved
from the environment as soon as they are known.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, Literal

import orjson
import structlog

from reconciler.core.redaction import Redactor

LogFormat = Literal["auto", "json", "console"]

_redactor = Redactor()


def protect(secrets: Iterable[str]) -> None:
    """From now on, these values are replaced wherever they would be shown."""
    global _redactor
    _redactor = _redactor.with_secrets(secrets)


def redact(value: Any) -> Any:
    """What may be shown of a JSON-like value or a text: the one redaction path."""
    return _redactor.value(value)


def _redact_event(
    logger: structlog.typing.WrappedLogger, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    redacted: structlog.typing.EventDict = _redactor.value(event)
    return redacted


def configure(fmt: LogFormat = "auto", *, level: int = logging.INFO) -> None:
    """Set up structlog for the whole process; call once, from the CLI."""
    json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are formatted to text first, so that the redactor sees them too.
    if json:
        processors += [
            structlog.processors.format_exc_info,
            _redact_event,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors += [
            structlog.processors.format_exc_info,
            _redact_event,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
