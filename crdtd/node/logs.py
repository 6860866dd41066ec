"""Structured daemon logs: one line per event, `key=value` text or one JSON object per line.

`log = get_logger("crdtd.node")`; `event(log, "push.accepted", entry=eid, size=n)`. The line
is `TIME LEVEL EVENT key=value ...` in text format, or `{"ts":..., "level":..., "event":...,
...}` with `--log-format json`. Values are rendered with `str` (bytes as hex).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

_FIELDS = "crdtd_fields"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _text(value: Any) -> str:
    v = _plain(value)
    s = json.dumps(v) if isinstance(v, list) else str(v)
    return json.dumps(s) if (not s or any(c in s for c in ' ="\n')) else s


class EventFormatter(logging.Formatter):
    """Render a record and its structured fields as one text or JSON line."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
        fields: dict[str, Any] = dict(getattr(record, _FIELDS, {}))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info).replace("\n", " | ")
        level = record.levelname.lower()
        if self.json:
            doc = {"ts": stamp, "level": level, "event": record.getMessage(), "logger": record.name}
            doc.update({k: _plain(v) for k, v in fields.items()})
            return json.dumps(doc, sort_keys=False, separators=(",", ":"))
        tail = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return f"{stamp} {level.upper():<7} {record.getMessage()}" + (f" {tail}" if tail else "")


def setup_logging(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Route the `crdtd` loggers to `stream` (stderr) in the given format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EventFormatter(fmt))
    root = logging.getLogger("crdtd")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(name: str = "crdtd.node") -> logging.Logger:
    """A logger under `crdtd` (configured by `setup_logging`)."""
    return logging.getLogger(name)


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={_FIELDS: fields})
