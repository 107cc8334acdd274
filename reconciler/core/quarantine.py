"""The target tier's memory: a target whose calls mostly fail backs off as a whole.

Each applied pass gives a verdict on the target (failing, healthy, or nothing learned). After
`QUARANTINE_AFTER` failing passes in a row the target is quarantined: the daemon neither reads
nor writes it until a growing back-off has passed, then probes it with one ordinary pass. A
healthy pass ends the quarantine by itself. Pure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

#: Failing passes in a row before the target is quarantined (one blip is the request tier's job).
QUARANTINE_AFTER = 3
#: The first quarantine's length, doubled by every failed probe.
FIRST_DELAY = 300.0
#: The longest quarantine: a dead target is still probed a few times a day.
MAX_DELAY = 6 * 3600.0
#: Retryable failures a pass needs, beyond "most", before it counts as failing: a target that
#: refuses one person while serving everyone else is that person's problem (core.attempts).
MIN_FAILURES = 3


class Verdict(StrEnum):
    FAILING = "failing"
    HEALTHY = "healthy"
    #: Nothing was asked of the target (a push-only target with nothing to push).
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """A target's recent record; the default is a healthy target."""

    #: Failing passes in a row.
    failing_passes: int = 0
    #: When the current run of failing passes began.
    since: float | None = None
    #: Quarantined until this time; None when not quarantined.
    until: float | None = None
    #: Quarantines in a row: each failed probe doubles the next one.
    quarantines: int = 0
    #: The last failure that counted, as the target said it (never a secret).
    error: str = ""

    @property
    def healthy(self) -> bool:
        return self.failing_passes == 0

    def quarantined(self, now: float) -> bool:
        return self.until is not None and now < self.until


HEALTHY = Health()


def judge(
    *, unobservable: str | None, target_error: str | None, attempted: int, failed: int
) -> tuple[Verdict, str]:
    """One pass's verdict on a target, and the error that decided it.

    `failed` counts only retryable failures: a person the target rejects for its content was
    answered by a working target. `target_error` is a failure of the target as a whole (it
    stopped answering part-way through).
    """
    if unobservable is not None:
        return Verdict.FAILING, unobservable
    if target_error is not None:
        return Verdict.FAILING, target_error
    if failed >= MIN_FAILURES and failed * 2 > attempted:
        return Verdict.FAILING, f"{failed} of {attempted} changes failed"
    return (Verdict.HEALTHY, "") if attempted else (Verdict.UNKNOWN, "")


def after_pass(health: Health, verdict: Verdict, error: str, now: float) -> Health:
    """The target's health once a pass with this verdict has finished."""
    if verdict is Verdict.HEALTHY:
        return HEALTHY
    if verdict is Verdict.UNKNOWN:
        # Nothing failed: a quarantine that has run out stays over until something fails again.
        return health
    failing = health.failing_passes + 1
    since = health.since if health.since is not None else now
    if failing < QUARANTINE_AFTER:
        return dataclasses.replace(health, failing_passes=failing, since=since, error=error)
    quarantines = health.quarantines + 1
    return Health(
        failing_passes=failing,
        since=since,
        until=now + min(MAX_DELAY, FIRST_DELAY * 2 ** (quarantines - 1)),
        quarantines=quarantines,
        error=error,
    )
