"""structlog setup: JSON lines when stderr is not a terminal (journald, Kubernetes), readable otherwise.

Exceptions are rendered as one line (type and message), never as a traceback: what a user sees is
a sentence, and `GPUMON_DEBUG=1` is there for developers who want the stack.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _one_line_exception(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    exc = event.pop("exc_info", None)
    if exc and not os.environ.get("GPUMON_DEBUG"):
        if exc is True:
            exc = sys.exc_info()[1]
        elif isinstance(exc, tuple):
            exc = exc[1]
        if exc is not None:
            event["error"] = f"{type(exc).__name__}: {exc}"
    elif exc:
        event["exc_info"] = exc
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _one_line_exception,
    ]
    if json_lines:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
