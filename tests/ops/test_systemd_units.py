"""systemd/*.service: what `systemd-analyze` says of them, and what they must contain.

Runs without systemd as PID 1: `verify` (syntax, directives, specifiers, executables) and
`security --offline=true` (the exposure score) work on the unit files alone. What needs a
running manager (starting the units, LoadCredential= and the sandbox in action) is not
tested here; tests/ops/test_systemd_notify.py runs the programs' side of the protocol.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from common import worker_settings
from gateway import settings as gateway_settings
from testkit.processes import REPO

UNITS = REPO / "systemd"
GATEWAY_UNIT = UNITS / "sfu-gateway.service"
WORKER_UNIT = UNITS / "sfu-worker@.service"
MAX_EXPOSURE = 2.5
INSTALL_PREFIX = "/opt/live-sfu"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is missing: apt-get install systemd (Debian 12: systemd 252)",
)


def _directives(unit: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def _values(unit: Path, key: str) -> list[str]:
    return [value for k, value in _directives(unit) if k == key]


def _installed_copy(unit: Path, tmp_path: Path, name: str | None = None) -> Path:
    """The unit as an installed copy would be, its /opt/live-sfu programs stubs in tmp_path
    (verify checks that ExecStart= is executable); nothing else changes."""
    prefix = tmp_path / "opt" / "live-sfu"
    (prefix / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    for program in ("sfu-gateway", "sfu-worker"):
        stub = prefix / ".venv" / "bin" / program
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    copy = tmp_path / (name or unit.name)
    copy.write_text(unit.read_text().replace(INSTALL_PREFIX, str(prefix)))
    return copy


@needs_analyze
@pytest.mark.parametrize(
    ("unit", "name"),
    [
        (GATEWAY_UNIT, None),
        (WORKER_UNIT, None),
        (WORKER_UNIT, "sfu-worker@3.service"),
    ],
)
def test_systemd_analyze_verify(unit: Path, name: str | None, tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = _installed_copy(unit, tmp_path, name)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on some warnings (an unknown key, a bad value that is ignored): no output.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", [GATEWAY_UNIT, WORKER_UNIT])
def test_systemd_analyze_security_exposure(unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", [GATEWAY_UNIT, WORKER_UNIT])
def test_unit_speaks_notify_with_a_watchdog(unit: Path) -> None:
    assert _values(unit, "Type") == ["notify"]  # notify-reload needs systemd >= 253
    assert _values(unit, "NotifyAccess") == ["main"]
    (watchdog,) = _values(unit, "WatchdogSec")
    assert watchdog.endswith("s") and float(watchdog[:-1]) >= 10
    # The shared-memory plane: abstract AF_UNIX sockets and memfds must stay allowed.
    (families,) = _values(unit, "RestrictAddressFamilies")
    assert "AF_UNIX" in families.split() and not families.startswith("~")
    filters = " ".join(_values(unit, "SystemCallFilter"))
    assert "memfd_create" not in filters and "@ipc" not in filters


def test_gateway_reload_is_sighup() -> None:
    assert _values(GATEWAY_UNIT, "ExecReload") == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.parametrize(
    ("unit", "settings"),
    [(GATEWAY_UNIT, gateway_settings.SETTINGS), (WORKER_UNIT, worker_settings.SETTINGS)],
)
def test_every_secret_is_an_optional_credential(unit: Path, settings: tuple[object, ...]) -> None:
    secrets = [s for s in gateway_settings.SETTINGS + worker_settings.SETTINGS if s.secret]
    envs = {s.env for s in secrets if s in settings}
    assert envs, "no secret setting in the table"
    load = dict(value.split(":", 1) for value in _values(unit, "LoadCredential"))
    fallback = dict(value.split(":", 1) for value in _values(unit, "SetCredential"))
    environment = dict(value.split("=", 1) for value in _values(unit, "Environment"))
    for env in envs:
        name = env.lower()
        assert load.get(name) == f"/etc/live-sfu/credentials/{name}", env
        # A missing file must not fail the start: SetCredential= is LoadCredential='s default.
        assert name in fallback, env
        assert environment.get(f"{env}_FILE") == f"%d/{name}", env
