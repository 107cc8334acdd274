"""The change tier's memory: a change that failed after its retries waits before it is tried again.

Exponential, capped back-off per person and target, so one bad person never blocks the others
and is not retried every pass; a changed desired record (a new fingerprint) resets it. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from reconciler.core.changes import Action, Attempt, Change, TargetPlan

#: Seconds before the first retry of a failed change, doubled per further failure.
FIRST_DELAY = 60.0
#: The longest wait between two tries of one change.
MAX_DELAY = 6 * 3600.0


def key(change: Change) -> str:
    return "delete" if change.action is Action.DELETE else change.fingerprint


def next_attempt(change: Change, error: str, previous: Attempt | None, now: float) -> Attempt:
    """The attempt recorded after `change` failed again (or for the first time)."""
    same = previous is not None and previous.fingerprint == key(change)
    failures = previous.failures + 1 if same and previous is not None else 1
    delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (failures - 1))
    return Attempt(
        person_id=change.person_id,
        fingerprint=key(change),
        failures=failures,
        next_try=now + delay,
        error=error,
    )


def defer(plan: TargetPlan, attempts: Mapping[str, Attempt], now: float) -> TargetPlan:
    """Move changes still waiting out their back-off to `deferred`; the rest go ahead.

    An attempt only holds back the very change that failed: once the desired record changes
    (another fingerprint), the change is tried at once.
    """
    if not attempts:
        return plan
    kept: list[Change] = []
    deferred: list[Attempt] = []
    for change in plan.changes:
        attempt = attempts.get(change.person_id)
        if attempt is not None and attempt.fingerprint == key(change) and attempt.next_try > now:
            deferred.append(attempt)
        else:
            kept.append(change)
    if not deferred:
        return plan
    return dataclasses.replace(plan, changes=tuple(kept), deferred=tuple(deferred))
