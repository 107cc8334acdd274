"""The coalescing trigger: any number of requests for a pass become at most one pending pass.

The scheduler, the file watcher, SIGHUP and the webhook only call `request()`; the single worker
waits on `wait()`. Requests that arrive during a pass collapse into one follow-up pass. No I/O.
"""

from __future__ import annotations

import asyncio


class Trigger:
    """A pending-pass flag with the reasons it was raised for."""

    def __init__(self) -> None:
        self._reasons: list[str] = []
        self._event = asyncio.Event()
        self._closed = False

    def request(self, reason: str) -> None:
        """Ask for a pass; never blocks, never queues more than one."""
        if self._closed:
            return
        if reason not in self._reasons:
            self._reasons.append(reason)
        self._event.set()

    @property
    def pending(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> tuple[str, ...]:
        """Wait for a request; return (and clear) every reason gathered since the last wait.

        Returns () once closed, so the worker ends.
        """
        await self._event.wait()
        reasons = tuple(self._reasons)
        self._reasons.clear()
        self._event.clear()
        return () if self._closed else reasons

    def close(self) -> None:
        """No more passes: wakes the worker so it can end."""
        self._closed = True
        self._event.set()
