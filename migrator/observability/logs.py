"""Structured logs: one JSON object per line, with the move's id, organization, step and cell.

``log_context(move_id=..., organization=..., step=..., cell=...)`` sets those fields for every line
logged inside it (contextvars, so concurrent threads keep theirs). ``JsonFormatter`` writes them;
credentials are masked like everywhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging

from migrator.dsn import redact

_FIELDS = ("move_id", "organization", "step", "cell", "unit")
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("migrator_log_context", default=None)


@contextlib.contextmanager
def log_context(**fields):
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.process,
        }
        data.update(_context.get() or {})
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Switch every handler of ``logger`` (root by default) to JSON lines."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        handler.setFormatter(JsonFormatter())
