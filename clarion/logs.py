"""Clarion's logs, configured in one place (`configure`, called by each `clarion` command):
lines a person reads by default, one JSON object a line with CLARION_LOG_FORMAT=json for a log
pipeline (decision 0044).

Each line carries the fields of the unit of work it was logged in: a request's id (set by
clarion.http.RequestIds), then what the code learns as it goes (`annotate`: the app's id once
its key is known, a send's token). A line never carries a key: `Redact` takes out what sits
where keys go (the app key in Batch's and the SDK's paths, X-Authorization and `api_key`
values) from every message and traceback, whichever logger wrote it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from clarion.config import Settings

# The fields of the current unit of work. A mutable dict, so that what a route's dependency
# adds (the app's id) is seen by the access line its middleware writes once the route returns.
_fields: ContextVar[dict[str, Any] | None] = ContextVar("clarion_log_fields", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """A unit of work (a request, a job) whose lines carry `fields`, with its parent's."""
    token = _fields.set({**(_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def annotate(**fields: Any) -> None:
    """Adds `fields` to the current unit of work's lines from now on (nothing outside one)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


# Batch's server APIs and the SDK API take the app's key as the first path segment after the
# version (/1.1/{api_key}/..., /sdk/v1/{api_key}/...): 30 or 32 characters that authenticate.
_KEY_IN_PATH = re.compile(r"(/1\.[01]/|/sdk/v1/)[^/\s?#\"']+")
# A REST key in a header, or a key in a dict or query string logged as it is.
_KEY_VALUE = re.compile(
    r"((?:x-authorization|api[_-]?key|rest[_-]?key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+",
    re.IGNORECASE,
)
REDACTED = "***"


def redact(text: str) -> str:
    """`text` with what sits where keys go replaced by ***."""
    return _KEY_VALUE.sub(r"\1" + REDACTED, _KEY_IN_PATH.sub(r"\1" + REDACTED, text))


class Redact(logging.Filter):
    """On the handler, so that every logger's lines go through it (uvicorn's, libraries')."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self._tracebacks.formatException(record.exc_info))
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ms), level, logger, message, the unit of work's
    fields, the `fields` a call passes in `extra`, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields.get() or {})
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextLines(logging.Formatter):
    """time level logger: message [field=value ...], then the traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = {**(_fields.get() or {}), **(getattr(record, "fields", None) or {})}
        if fields:
            line += " [" + " ".join(f"{name}={value}" for name, value in fields.items()) + "]"
        return line


def log_handler(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Lines in `settings`' format, keys taken out, on `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLines() if settings.log_format == "json" else TextLines())
    handler.addFilter(Redact())
    return handler


def configure(settings: Settings) -> None:
    """The process's logging: one handler on stderr for every logger, Clarion's and uvicorn's
    at `CLARION_LOG_LEVEL`, libraries' at WARNING (httpx alone logs every request at INFO)."""
    handler = log_handler(settings)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("clarion", "uvicorn"):
        logging.getLogger(name).setLevel(settings.log_level)
