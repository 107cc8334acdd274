"""Logging, configured once at the entry point: structlog, JSON lines (orjson) unattended,
readable console output on a terminal. Log lines carry person ids and field names, never a
secret or a sensitive value (the plan document they reuse is already redacted). Writes stderr.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog

LogFormat = Literal["auto", "json", "console"]


def configure(fmt: LogFormat = "auto", *, level: int = logging.INFO) -> None:
    """Set up structlog for the whole process; call once, from the CLI."""
    json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
