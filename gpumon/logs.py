"""structlog setup: JSON lines when stderr is not a terminal (journald, Kubernetes), readable otherwise.

Exceptions are rendered as one line (type and message), never as a traceback: what a user sees is
a sentence, and `GPUMON_DEBUG=1` is there for developers who want the stack. Libraries that log
through the standard `logging` module (aiohttp's "Error handling request", asyncio's "Task exception
was never retrieved") go through the same pipeline, one line each.

A message repeated in a burst (1,100 connections refused in a second, an XID storm) is written at
most `BURST` times per `WINDOW_S`; the next line that passes says how many were left out, and
`gpumon_log_messages_suppressed_total` counts them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
BURST = 10
WINDOW_S = 10.0


class RateLimit:
    """A structlog processor: at most BURST lines per (level, event) per WINDOW_S."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S) -> None:
        self.burst, self.window_s = burst, window_s
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}  # key -> (start, passed, dropped)
        self.suppressed = 0

    def reset(self) -> None:
        self._windows.clear()
        self.suppressed = 0

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        key = (method, str(event.get("event", "")))
        now = time.monotonic()
        start, passed, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, passed = now, 0
        if passed >= self.burst:
            self._windows[key] = (start, passed, dropped + 1)
            self.suppressed += 1
            raise structlog.DropEvent
        if dropped:
            event["suppressed_repeats"] = dropped
        self._windows[key] = (start, passed + 1, 0)
        if len(self._windows) > 4096:  # many distinct messages: forget the oldest windows
            for old in sorted(self._windows, key=lambda k: self._windows[k][0])[:2048]:
                del self._windows[old]
        return event


RATE_LIMIT = RateLimit()


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (a test harness swaps it; a bound file object
    would outlive it, closed)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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


class _ToStructlog(logging.Handler):
    """Standard-library log records (aiohttp, asyncio, ...) as one structlog line each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                fields["exc_info"] = record.exc_info
            level = record.levelname.lower() if record.levelname.lower() in LEVELS else "error"
            getattr(structlog.get_logger(record.name), level)(record.getMessage(), **fields)
        except Exception:  # logging must never take the daemon down
            self.handleError(record)


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's unhandled errors (a failed accept(), a callback that raised) as one log line."""
    exc = context.get("exception")
    fields: dict[str, Any] = {}
    if exc is not None:
        fields["error"] = f"{type(exc).__name__}: {exc}"
    structlog.get_logger("asyncio").error(str(context.get("message", "unhandled error in the event loop")), **fields)


def configure(level: str = "info", fmt: str = "auto") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        RATE_LIMIT,
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
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(max(LEVELS[level], logging.INFO))  # libraries' debug chatter stays out
