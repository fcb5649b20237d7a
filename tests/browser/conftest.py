"""Debian's Chromium driven by Playwright, with fake camera and microphone.

Playwright's own browser download is not used: the tests point it at /usr/bin/chromium, which
scripts/test.sh installs with apt. Without that binary the tests skip locally, but fail under CI
(CI=true), where a silently skipped browser suite would hide regressions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",  # auto-accept getUserMedia prompts
    "--use-fake-device-for-media-stream",  # synthetic camera (moving pattern) + beeping mic
    # Several tabs play at once; keep the hidden ones from being throttled or frozen.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing under CI=true; scripts/test.sh installs it")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser tests skipped")


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh persistent Chromium context (new user data dir per test)."""
    _require_chromium()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            context.close()


def launch_chromium() -> Iterator[Browser]:
    """Generator for a fixture: one Chromium, closed when the fixture is torn down."""
    _require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One Chromium for a whole test module; tests open their own contexts and pages in it.

    Launching costs seconds on a 2-core machine, so modules that run many short media cases
    (tests/browser/test_browser_codecs.py) share one browser rather than one per test.
    """
    yield from launch_chromium()
