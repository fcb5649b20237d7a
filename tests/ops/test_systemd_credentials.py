"""Secrets from files: every `secret=True` setting also takes `<ENV>_FILE` (what systemd's
LoadCredential= provides under $CREDENTIALS_DIRECTORY, the units point at it)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from common import worker_settings
from common.settings import load
from common.worker_settings import load_worker_settings
from gateway import settings as gateway_settings
from gateway.config import load_config
from gateway.placement import supervisor
from testkit.processes import REPO, GatewayProcess, child_env, run_gateway_cli

SECRET = "s3cr3t-VALUE-never-shown"
SECRET_ENVS = sorted(
    {s.env for s in gateway_settings.SETTINGS + worker_settings.SETTINGS if s.secret}
)


def _secret_file(tmp_path: Path, content: str | bytes, name: str = "secret") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_every_secret_is_listed_with_its_file_variable() -> None:
    # The tables mark these secret; each must take a _FILE (and --help must say so).
    assert {"AUTH_TOKEN", "JWT_SECRET", "ADMIN_TOKEN", "S3_SECRET_KEY", "TURN_SECRET"} <= set(
        SECRET_ENVS
    )
    assert "WORKER_TOKEN" in SECRET_ENVS
    result = run_gateway_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for env in SECRET_ENVS:
        assert f"[{env}] or [{env}_FILE]" in text, env
    assert "[HTTP_ADDR_FILE]" not in text  # only secrets are read from files


def test_file_value_is_used_without_its_trailing_newline(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, SECRET + "\n")
    rooms = _secret_file(tmp_path, "room1:tok1;room2:tok2\r\n", "rooms")
    config = load_config(
        ["--workers", "0"],
        {"AUTH_TOKEN_FILE": str(path), "ROOM_TOKENS_FILE": str(rooms), "JWT_SECRET": "plain"},
    )
    assert config.auth.auth_token == SECRET
    assert config.auth.room_tokens == {"room1": "tok1", "room2": "tok2"}
    assert config.auth.jwt_secret == "plain"  # the variable itself still works
    # An empty file (systemd's SetCredential= fallback: a bare newline) leaves it unset.
    empty = _secret_file(tmp_path, "\n", "empty")
    assert load_config(["--workers", "0"], {"ADMIN_TOKEN_FILE": str(empty)}).auth.admin_token == ""
    # A flag still beats the environment.
    flagged = load_config(
        ["--workers", "0", "--auth-token", "flag"], {"AUTH_TOKEN_FILE": str(path)}
    )
    assert flagged.auth.auth_token == "flag"
    worker = load_worker_settings(
        ["--connect", "tcp://127.0.0.1:7700"], {"WORKER_TOKEN_FILE": str(path)}
    )
    assert worker.worker_token == SECRET


def test_gateway_process_uses_the_file(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    path = _secret_file(tmp_path, SECRET + "\n")
    gateway = gateway_factory(workers=0, wait="/healthz", env={"ADMIN_TOKEN_FILE": str(path)})

    def admin_status(token: str) -> int:
        request = urllib.request.Request(
            gateway.url + "/api/admin/workers", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert admin_status(SECRET) == 200
    assert admin_status(SECRET[:-1]) in (401, 403)
    assert admin_status("wrong") in (401, 403)
    assert SECRET not in gateway.log()


def _assert_one_line_exit_2(result_stderr: str, returncode: int, *named: str) -> str:
    assert returncode == 2, result_stderr
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    for name in named:
        assert name in lines[0], result_stderr
    assert "Traceback" not in result_stderr
    return lines[0]


def test_an_empty_file_leaves_the_variable_in_force(tmp_path: Path) -> None:
    """The units' fallback credential is empty: a secret kept in the EnvironmentFile wins."""
    empty = _secret_file(tmp_path, "\n")
    environ = {"ADMIN_TOKEN": "from-env", "ADMIN_TOKEN_FILE": str(empty)}
    values = load(gateway_settings.PROG, "", gateway_settings.SETTINGS, [], environ)
    assert values[gateway_settings.ADMIN_TOKEN] == "from-env"
    full = _secret_file(tmp_path, "from-file\n", "full")
    values = load(
        gateway_settings.PROG, "", gateway_settings.SETTINGS, [], {"ADMIN_TOKEN_FILE": str(full)}
    )
    assert values[gateway_settings.ADMIN_TOKEN] == "from-file"


def test_both_variable_and_file_is_an_error(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, SECRET)
    result = run_gateway_cli(
        "--workers", "0", env={"JWT_SECRET": "other-value", "JWT_SECRET_FILE": str(path)}
    )
    line = _assert_one_line_exit_2(result.stderr, result.returncode, "JWT_SECRET_FILE")
    assert SECRET not in result.stderr + result.stdout and "other-value" not in line


@pytest.mark.parametrize("kind", ["missing", "directory", "not_utf8", "too_big"])
def test_unreadable_file_exits_2_naming_the_variable(tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        path = tmp_path / "nope"
    elif kind == "directory":
        path = tmp_path
    elif kind == "not_utf8":
        path = _secret_file(tmp_path, b"\xff\xfe" + SECRET.encode())
    else:
        path = _secret_file(tmp_path, SECRET * 5000)
    result = run_gateway_cli("--workers", "0", env={"TURN_SECRET_FILE": str(path)})
    _assert_one_line_exit_2(result.stderr, result.returncode, "TURN_SECRET_FILE")
    assert SECRET not in result.stderr + result.stdout


def test_unreadable_for_lack_of_permission(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a 0000 file anyway")
    path = _secret_file(tmp_path, SECRET)
    path.chmod(0)
    result = run_gateway_cli("--workers", "0", env={"S3_SECRET_KEY_FILE": str(path)})
    _assert_one_line_exit_2(result.stderr, result.returncode, "S3_SECRET_KEY_FILE")
    assert SECRET not in result.stderr


def test_invalid_content_is_reported_without_it(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, f"no-colon-{SECRET}\n")
    result = run_gateway_cli("--workers", "0", env={"ROOM_TOKENS_FILE": str(path)})
    line = _assert_one_line_exit_2(result.stderr, result.returncode, "ROOM_TOKENS_FILE")
    assert "(value hidden)" in line
    assert SECRET not in result.stderr + result.stdout


def test_worker_cli_unreadable_token_file_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "--connect", "tcp://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env({"WORKER_TOKEN_FILE": str(tmp_path / "nope")}),
        cwd=REPO,
    )
    _assert_one_line_exit_2(result.stderr, result.returncode, "WORKER_TOKEN_FILE")


def test_local_workers_inherit_no_secret_file_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in SECRET_ENVS:
        monkeypatch.setenv(env + "_FILE", "/run/credentials/x")
    monkeypatch.setenv("UNRELATED_FILE", "/kept")
    inherited = supervisor.worker_environment()
    assert not {env + "_FILE" for env in SECRET_ENVS} & set(inherited)
    assert inherited["UNRELATED_FILE"] == "/kept"
