"""Debian's Chromium driven by Playwright, with fake camera and microphone.

Playwright's own browser download is not used: the tests point it at /usr/bin/chromium, which
scripts/test.sh installs with apt. Without that binary the tests skip locally, but fail under CI
(CI=true), where a silently skipped browser suite would hide regressions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, sync_playwright

from tests.support.clients import skip_or_fail

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


def require_chromium() -> None:
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing", "scripts/test.sh apt-get installs chromium")


def persistent_context(profile_dir: Path) -> Iterator[BrowserContext]:
    """Generator for a fixture: a fresh persistent Chromium context in `profile_dir`."""
    require_chromium()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(profile_dir),
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
    require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
