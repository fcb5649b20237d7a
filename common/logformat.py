"""Log records that a client cannot forge: the one formatter of every live-sfu process.

Client text (paths, user agents, room names, offers, exception messages) reaches log lines.
A CR or LF in it would start what looks like a record of its own, and other control
characters can rewrite a terminal; both are written as \\xNN escapes instead. Traceback
lines are indented under their record, so no line of one can pass for a record either.

Two formats (LOG_FORMAT): `text`, the line above, and `json`, one JSON object per line with
time, level, logger and message, plus room, session, worker and trace_id when the record
knows them (logging's `extra=` keys, the `log_context` context variable, or fields fixed for
the whole process such as a worker's id). The message is escaped the same way in both, so
the text of a message does not depend on the format; json.dumps escapes what is left.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Mapping

from common import tracing

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACEBACK_INDENT = "  | "
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROLS}
_ESCAPES_KEEP_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}
LOG_FORMATS = ("text", "json")
# The optional fields of a JSON record, in this order; each from the record's `extra=`
# attribute of that name, else from `log_context`, else from the process's fixed fields.
CONTEXT_KEYS = ("room", "session", "worker", "trace_id")
# Fields that the code running now knows (e.g. the room of a request being served).
log_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "log_context", default=None
)


def escape_controls(text: str) -> str:
    """`text` with every control character (CR and LF included) as a visible escape."""
    return text.translate(_ESCAPES)


class SafeFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802 (stdlib's name)
        text = super().formatException(ei).translate(_ESCAPES_KEEP_NEWLINE)
        return "\n".join(TRACEBACK_INDENT + line for line in text.split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (stdlib's name)
        text = stack_info.translate(_ESCAPES_KEEP_NEWLINE)
        return "\n".join(TRACEBACK_INDENT + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601 with milliseconds), level,
    logger, message, then room, session, worker and trace_id when known, and `exception` /
    `stack` (their text, newlines included) when the record has them."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": escape_controls(record.message),
        }
        context = log_context.get() or {}
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is None:
                value = context.get(key, self.fields.get(key))
            if value is not None:
                entry[key] = escape_controls(str(value))
        if "trace_id" not in entry:
            trace_id = tracing.current_trace_id()
            if trace_id is not None:
                entry["trace_id"] = trace_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text.translate(_ESCAPES_KEEP_NEWLINE)
        if record.stack_info:
            entry["stack"] = record.stack_info.translate(_ESCAPES_KEEP_NEWLINE)
        # ensure_ascii: C1 controls, U+2028 and U+2029 come out as \uXXXX escapes too.
        return json.dumps(entry, ensure_ascii=True)


def parse_log_format(raw: str) -> str:
    """The LOG_FORMAT setting's parser: text or json."""
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value


def configure(
    level: int | str,
    fmt: str = FORMAT,
    log_format: str = "text",
    fields: Mapping[str, str] | None = None,
) -> None:
    """Root logging to stderr (replaces logging.basicConfig): SafeFormatter with `fmt` for
    log_format "text", JsonFormatter with the process's fixed `fields` for "json"."""
    handler = logging.StreamHandler()
    formatter: logging.Formatter
    formatter = JsonFormatter(fields) if log_format == "json" else SafeFormatter(fmt)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # JSON: Python's warnings become records too, so that every line parses.
    logging.captureWarnings(log_format == "json")
    set_level(level)


def set_level(level: int | str) -> None:
    """The root logger's level (a reload changes it live)."""
    logging.getLogger().setLevel(level.upper() if isinstance(level, str) else level)
