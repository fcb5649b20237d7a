"""scripts/install.sh, without root side effects: --dry-run, and --prefix into a temp dir."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from testkit.processes import REPO

SCRIPT = REPO / "scripts" / "install.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prefix_install_twice_keeps_the_operators_settings(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = _install("--prefix", str(root), "--skip-venv")
    assert first.returncode == 0, first.stderr
    etc = root / "etc" / "live-sfu"
    units = root / "etc" / "systemd" / "system"
    for unit in ("sfu-gateway.service", "sfu-worker@.service"):
        assert (units / unit).read_text() == (REPO / "systemd" / unit).read_text()
        assert _mode(units / unit) == 0o644
    assert _mode(etc / "credentials") == 0o700
    assert _mode(etc / "env") == 0o640 and _mode(etc / "worker.env") == 0o640
    assert (root / "opt" / "live-sfu").is_dir()
    # Templates carry no active setting and no secret.
    active = [line for line in (etc / "env").read_text().splitlines() if line and line[0] != "#"]
    assert active == []
    (etc / "env").write_text("HTTP_ADDR=:9999\n")
    (units / "sfu-gateway.service").write_text("stale\n")
    second = _install("--prefix", str(root), "--skip-venv")
    assert second.returncode == 0, second.stderr
    assert (etc / "env").read_text() == "HTTP_ADDR=:9999\n"  # kept
    assert "env exists: kept" in second.stderr
    # The units are the project's: an upgrade replaces them.
    assert (units / "sfu-gateway.service").read_text() == (
        REPO / "systemd" / "sfu-gateway.service"
    ).read_text()
    assert "systemctl" not in second.stdout  # nothing system-wide under --prefix


def test_dry_run_changes_nothing_and_shows_the_plan(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _install("--dry-run", "--prefix", str(root))
    assert result.returncode == 0, result.stderr
    assert "python3 -m venv" in result.stdout or "-m venv" in result.stdout
    assert "pip install" in result.stdout
    assert list(root.iterdir()) == []  # planned, not done
    if shutil.which("getent") and shutil.which("dpkg-query"):
        system = _install("--dry-run")
        assert system.returncode == 0, system.stderr
        assert "systemctl enable sfu-gateway.service" in system.stdout
        assert "/etc/live-sfu/credentials" in system.stdout


def test_unknown_option_is_refused() -> None:
    result = _install("--no-such-option")
    assert result.returncode == 2
    assert "--no-such-option" in result.stderr
