"""systemd's sd_notify(3) protocol, for Type=notify units: one datagram per state change.

The service manager passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace),
and with WatchdogSec= also `WATCHDOG_USEC` and `WATCHDOG_PID`. `configure()` reads them once
and removes them from the environment, so that processes this one starts (the gateway's
local workers) neither inherit nor answer for them. Without `NOTIFY_SOCKET` every function
here does nothing; none of them ever raises into its caller: a service manager that went
away must not take the service with it.

Hand-written rather than a dependency: the protocol is one sendto() of `KEY=value` lines,
and python-systemd needs libsystemd and a C build (no wheels), sdnotify is unmaintained.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True)
class Target:
    """Where notifications go (None: nowhere) and how often the watchdog wants a ping."""

    address: str | None  # a path, or "\0name" in the abstract namespace
    watchdog_usec: int | None  # None: no watchdog for this process

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3) asks."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6


_target: Target | None = None


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock: and other transports are not for us


def configure(environ: MutableMapping[str, str] | None = None) -> Target:
    """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and remove them from `environ`;
    call it before starting any child process."""
    global _target
    env = os.environ if environ is None else environ
    raw_socket, raw_usec, raw_pid = (env.pop(name, "") for name in ENVIRONMENT)
    address = _address(raw_socket) if raw_socket else None
    if raw_socket and address is None:
        log.warning("NOTIFY_SOCKET=%r is not a path or @name: not notifying", raw_socket)
    usec: int | None = None
    if raw_usec and (not raw_pid or raw_pid == str(os.getpid())):
        try:
            usec = int(raw_usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not a number: no watchdog pings", raw_usec)
        else:
            usec = usec if usec > 0 else None
    _target = Target(address, usec)
    return _target


def target() -> Target:
    """The target `configure()` found (it runs on first use when nobody called it)."""
    return _target if _target is not None else configure()


def enabled() -> bool:
    return target().address is not None


def send(*fields: str) -> bool:
    """Send `fields` as one notification; False when there is nowhere to send or it failed."""
    address = target().address
    if address is None:
        return False
    message = "\n".join(fields).encode("utf-8", errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", fields, exc)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ready(status_text: str | None = None) -> bool:
    fields = ["READY=1"]
    if status_text is not None:
        fields.append("STATUS=" + _one_line(status_text))
    return send(*fields)


def status(text: str) -> bool:
    return send("STATUS=" + _one_line(text))


def stopping(status_text: str | None = None) -> bool:
    fields = ["STOPPING=1"]
    if status_text is not None:
        fields.append("STATUS=" + _one_line(status_text))
    return send(*fields)


def reloading() -> bool:
    """A reload starts; send ready() when it is done. MONOTONIC_USEC= is what Type=notify-reload
    (systemd >= 253) requires; older managers ignore it."""
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")


def watchdog() -> bool:
    return send("WATCHDOG=1")


async def watchdog_loop(healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping the watchdog from this event loop at half of WATCHDOG_USEC while `healthy()`; a
    loop that hangs stops pinging, and systemd then kills and restarts the service. Returns at
    once when no watchdog was asked for."""
    interval = target().watchdog_interval
    if interval is None or not enabled():
        return
    while True:
        if healthy():
            watchdog()
        await asyncio.sleep(interval)


def start_watchdog(healthy: Callable[[], bool] = lambda: True) -> asyncio.Task[None] | None:
    """watchdog_loop() as a task of the running loop (keep the reference), or None."""
    if target().watchdog_interval is None or not enabled():
        return None
    return asyncio.get_running_loop().create_task(watchdog_loop(healthy), name="sd-watchdog")
