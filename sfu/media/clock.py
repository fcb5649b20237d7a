"""Time and timers as the stages see them: injected, so that tests drive them by hand.

A stage never calls time.time() or asyncio itself: it is given `now`, or a Clock, and a
Scheduler whose timers it may cancel. Production code passes the defaults below (the wall
clock, the monotonic clock and the running event loop); tests pass a ManualClock, which is
all three and runs due timers when advanced.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

Clock = Callable[[], float]  # seconds


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Runs `callback` once, `delay` seconds from now (asyncio's loop.call_later)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer: ...


class RunningLoop:
    """The Scheduler of production code: the event loop running when a timer is set."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


RUNNING_LOOP = RunningLoop()


class ManualClock:
    """A clock and a scheduler for tests: time moves only when `advance` is called."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        timer = _ManualTimer(callback)
        heapq.heappush(self._timers, (self.now + max(delay, 0.0), next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float = 0.0) -> None:
        """Move time on by `seconds`, running every timer that falls due, in order."""
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback()
        self.now = end


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
