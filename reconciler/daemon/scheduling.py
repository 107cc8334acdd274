"""The interval schedule: the only home of apscheduler. Each tick only requests a pass.

Jitter spreads the passes of many replicas or hosts so they do not hit shared targets in step;
the trigger coalesces, so a tick during a long pass costs nothing. Timer only, no I/O.
"""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from reconciler.daemon.trigger import Trigger

#: Fraction of the interval a tick may move by.
JITTER = 0.1


class Schedule:
    """Requests a pass every `interval` seconds (± jitter) while started."""

    def __init__(self, trigger: Trigger, interval: float) -> None:
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(
            trigger.request,
            IntervalTrigger(seconds=interval, jitter=max(interval * JITTER, 0.0)),
            args=("interval",),
            id="reconcile",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )

    def start(self) -> None:
        """Start ticking; needs the running event loop."""
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
