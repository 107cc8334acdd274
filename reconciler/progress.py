"""Steps this process has finished: a request answered or failed, a lock polled, a source or the
desired state read. What shows a daemon pass moving: one that finishes none for long is hung
(daemon.status.Status.liveness). No I/O: a counter, bumped by whoever finishes a step.
"""

from __future__ import annotations


class _Steps:
    count = 0


def step() -> None:
    """One more step finished."""
    _Steps.count += 1


def steps() -> int:
    """How many steps this process has finished so far."""
    return _Steps.count
