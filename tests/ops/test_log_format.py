"""LOG_FORMAT=json: every line of the gateway's and its workers' output is one JSON object with
time, level, logger and message (plus room, session, worker when known); client text cannot
forge a record in either format."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from common import logformat
from common.worker_settings import load_worker_settings, to_argv
from testkit.processes import GatewayProcess, run_gateway_cli
from tests.support.clients import PeerProcess

FORGED = 'room\r\n{"time": "2000-01-01T00:00:00.000Z", "level": "ERROR"}\u2028\x1b[2J\x7f'


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_record_fields_and_escaping() -> None:
    formatter = logformat.JsonFormatter({"worker": "local-3"})
    line = formatter.format(_record("client said %s", FORGED, room="r1", session="abcd1234"))
    assert "\n" not in line and "\r" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "gateway.test"
    assert entry["time"].endswith("Z") and entry["time"][:4].isdigit()
    assert (entry["room"], entry["session"], entry["worker"]) == ("r1", "abcd1234", "local-3")
    assert "trace_id" not in entry
    # The same escaping as the text format: the message text does not depend on the format.
    assert entry["message"] == "client said " + logformat.escape_controls(FORGED)
    assert "\\x0d\\x0a" in entry["message"] and "\\u2028" in entry["message"]

    token = logformat.log_context.set({"trace_id": "0af7651916cd43dd8448eb211c80319c"})
    try:
        entry = json.loads(formatter.format(_record("x", room="r2")))
    finally:
        logformat.log_context.reset(token)
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and entry["room"] == "r2"


def test_json_exception_stays_in_its_record() -> None:
    formatter = logformat.JsonFormatter()
    try:
        raise ValueError("bad\nline")
    except ValueError:
        record = logging.LogRecord("g", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = formatter.format(record)
    assert line.count("\n") == 0
    entry = json.loads(line)
    assert entry["message"] == "failed"
    assert "Traceback" in entry["exception"] and "ValueError: bad" in entry["exception"]


def test_log_format_setting() -> None:
    settings = load_worker_settings(["--connect", "ipc:///x", "--log-format", "JSON"], {})
    assert settings.log_format == "json"
    assert "--log-format" in to_argv(settings)  # what the supervisor hands a local worker
    with pytest.raises(ValueError):
        logformat.parse_log_format("yaml")
    result = run_gateway_cli("--workers", "0", env={"LOG_FORMAT": "xml"})
    assert result.returncode == 2 and "LOG_FORMAT" in result.stderr


def _parse_all(text: str) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{text}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def test_every_line_of_gateway_and_worker_is_json(
    gateway_factory: Callable[..., GatewayProcess], peers: Callable[..., PeerProcess]
) -> None:
    gateway = gateway_factory(workers=1, env={"LOG_FORMAT": "json", "LOG_LEVEL": "debug"})
    published = peers("publish", gateway.url, "json-room", "--seconds", "3").result(timeout=30)
    assert published["ok"], published
    # Client text in a log line: a request path with control characters (percent-encoded).
    try:
        urllib.request.urlopen(gateway.url + "/api/whip/publish/%0d%0aforged%1b", timeout=5)
    except urllib.error.HTTPError:
        pass
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(30)
    time.sleep(0.2)
    entries = _parse_all(gateway.log())
    loggers = {entry["logger"] for entry in entries}
    assert any(name.startswith("sfu") for name in loggers), loggers  # the worker's records
    assert any(name.startswith("gateway") for name in loggers), loggers
    from_worker = [e for e in entries if e["logger"].startswith("sfu")]
    assert all(e.get("worker") == "local-0" for e in from_worker), from_worker
    created = [e for e in entries if e["message"].startswith("publisher ")]
    assert created and created[0]["room"] == "json-room" and created[0]["worker"] == "local-0"
    assert len(created[0]["session"]) == 8  # the short id, never the capability URL's id
    assert "stopped" in [e["message"] for e in entries]
