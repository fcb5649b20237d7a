"""Log records that a client cannot forge: the one formatter of every live-sfu process.

Client text (paths, user agents, room names, offers, exception messages) reaches log lines.
A CR or LF in it would start what looks like a record of its own, and other control
characters can rewrite a terminal; both are written as \\xNN escapes instead. Traceback
lines are indented under their record, so no line of one can pass for a record either.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACEBACK_INDENT = "  | "
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROLS}
_ESCAPES_KEEP_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}


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


def configure(level: int | str, fmt: str = FORMAT) -> None:
    """Root logging to stderr through SafeFormatter (replaces logging.basicConfig)."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
