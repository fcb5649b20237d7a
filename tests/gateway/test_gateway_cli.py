"""The command line: every invalid setting exits 2 with one line; --help lists every variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import SETTINGS
from testkit.processes import REPO, child_env, run_gateway_cli

ENV_NAMES = [s.env for s in SETTINGS]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ([], {"MAX_SUBS_PER_ROOM": "abc"}, "MAX_SUBS_PER_ROOM"),
        (["--max-subs-per-room", "-1"], {}, "--max-subs-per-room"),
        ([], {"UDP_PORTS": "5-2"}, "UDP_PORTS"),
        (["--udp-ports", "40000"], {}, "--udp-ports"),
        (["--workers", "4", "--udp-ports", "40000-40006"], {}, "UDP_PORTS"),
        ([], {"TLS_CERT_FILE": "/etc/hostname"}, "TLS_KEY_FILE"),
        ([], {"TLS_KEY_FILE": "/etc/hostname"}, "TLS_CERT_FILE"),
        ([], {"TLS_CERT_FILE": "/nope.pem", "TLS_KEY_FILE": "/nope.key"}, "TLS_CERT_FILE"),
        ([], {"HTTP_ADDR": "8080"}, "HTTP_ADDR"),
        ([], {"HTTP_ADDR": ":99999"}, "HTTP_ADDR"),
        ([], {"STUN_URLS": "http://stun.example"}, "STUN_URLS"),
        ([], {"TURN_URLS": "stun:x.example:3478"}, "TURN_URLS"),
        (["--workers", "many"], {}, "--workers"),
        ([], {"WORKER_LISTEN": "0.0.0.0:7700"}, "WORKER_LISTEN"),
        ([], {"MAX_BODY_BYTES": "1e9"}, "MAX_BODY_BYTES"),
        ([], {"BIND_ADDRESSES": "10.0.0.1,nope"}, "BIND_ADDRESSES"),
        ([], {"PUBLIC_IP": "999.1.1.1"}, "PUBLIC_IP"),
        ([], {"SESSION_CONNECT_TIMEOUT": "0"}, "SESSION_CONNECT_TIMEOUT"),
        ([], {"HEARTBEAT_INTERVAL": "-1"}, "HEARTBEAT_INTERVAL"),
        ([], {"WORKER_TIMEOUT": "nan"}, "WORKER_TIMEOUT"),
        ([], {"WORKER_TIMEOUT": "0.1"}, "WORKER_TIMEOUT"),
        ([], {"IPC_TIMEOUT": "x"}, "IPC_TIMEOUT"),
        ([], {"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ([], {"IPC_DIR": "/" + "x" * 200}, "IPC_DIR"),
        (["--no-such-flag"], {}, "--no-such-flag"),
    ],
)
def test_invalid_setting_exits_2_with_one_line(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = run_gateway_cli("--workers", "0", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_every_environment_variable() -> None:
    result = run_gateway_cli("--help")
    assert result.returncode == 0
    for name in ENV_NAMES:
        assert f"[{name}]" in result.stdout, name
    for name in ("HTTP_ADDR", "STUN_URLS", "TURN_URLS", "MAX_SUBS_PER_ROOM", "TLS_CERT_FILE"):
        assert name in result.stdout
    assert "stun:stun.l.google.com:19302" in result.stdout


def test_environment_variables_are_used(tmp_path: Path) -> None:
    # An empty environment value counts as unset, as in live-webrtc-go.
    result = run_gateway_cli("--workers", "0", env={"HTTP_ADDR": "bad", "MAX_SUBS_PER_ROOM": ""})
    assert result.returncode == 2 and "HTTP_ADDR" in result.stderr


def test_gateway_never_imports_media_packages() -> None:
    code = (
        "import sys, gateway, gateway.__main__, gateway.http.app, gateway.placement.registry, "
        "gateway.placement.supervisor\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiortc', 'av', 'sfu'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
