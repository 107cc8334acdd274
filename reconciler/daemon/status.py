"""What the daemon knows about itself: the desired state in use, the last pass, per target.

Owned and updated by the worker, read by the HTTP endpoints and the metrics. No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.core.changes import health_document
from reconciler.core.quarantine import HEALTHY, Health
from reconciler.store.base import Holding

#: A target's result in one pass.
TargetResult = Literal[
    "ok", "partial", "failed", "unobservable", "suspended", "quarantined", "dry-run"
]
#: A pass's result: ok (every change applied), partial (some failed or a target was not
#: observed), failed (the pass itself could not run).
PassResult = Literal["ok", "partial", "failed"]

#: Failures kept per target for /status: enough to act on, not a dump.
FAILURES_SHOWN = 20
#: Foreign person ids listed per target in /status (the count is always complete).
FOREIGN_SHOWN = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureView:
    person: str
    action: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetPass:
    """What one pass did to one target."""

    target: str
    kind: str
    result: TargetResult
    #: Changes planned, applied and failed, by action (create, update, replace, delete).
    planned: Mapping[str, int] = field(default_factory=dict)
    applied: Mapping[str, int] = field(default_factory=dict)
    failed: Mapping[str, int] = field(default_factory=dict)
    #: Planned changes whose reason was drift (the target changed, not the desired state).
    drift: int = 0
    held: int = 0
    held_reason: str = ""
    #: Changes that failed before and wait out their back-off.
    deferred: int = 0
    foreign: int = 0
    #: The first FOREIGN_SHOWN of them, by id: enough to decide whether to adopt.
    foreign_persons: tuple[str, ...] = ()
    invalid: int = 0
    #: Ledger entries for this target after the pass.
    managed: int = 0
    error: str | None = None
    failures: tuple[FailureView, ...] = ()
    #: The target's record of failing passes after this pass (core.quarantine).
    health: Health = HEALTHY


@dataclass(frozen=True, slots=True, kw_only=True)
class PassOutcome:
    """One finished pass."""

    number: int
    #: Wall-clock seconds since the epoch.
    started_at: float
    finished_at: float
    duration: float
    result: PassResult
    dry_run: bool
    #: Why the pass ran: interval, desired-changed, sighup, webhook, startup.
    reasons: tuple[str, ...] = ()
    targets: Mapping[str, TargetPass] = field(default_factory=dict)
    plan_fingerprint: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredView:
    """The desired state the daemon reconciles towards, and the last edit it refused."""

    files: tuple[str, ...] = ()
    digest: str = ""
    persons: int = 0
    #: Wall-clock time the state in use was loaded; 0 before the first good load.
    loaded_at: float = 0.0
    #: The last refused edit: a one-line summary and each problem (file:line:column: message).
    error: str | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LeadershipView:
    """This replica, the live ones, and who holds each target (as of the last pass)."""

    replica: str = ""
    replicas: tuple[str, ...] = ()
    holders: Mapping[str, Holding] = field(default_factory=dict)
    #: Targets this replica held in its last pass (owned, and not written by anyone else).
    held: frozenset[str] = frozenset()


@dataclass(kw_only=True)
class Status:
    """The daemon's state, as the endpoints report it."""

    interval: float
    dry_run: bool
    started_at: float = field(default_factory=time.time)
    desired: DesiredView = field(default_factory=DesiredView)
    last_pass: PassOutcome | None = None
    in_pass: bool = False
    passes: int = 0
    leadership: LeadershipView = field(default_factory=LeadershipView)
    #: Seconds a pass may finish no step before the process counts as hung; 0: never.
    stall_timeout: float = 0.0
    #: Steps finished (reconciler.progress) when last looked at, and since when (monotonic).
    _steps: int = field(default=-1, repr=False)
    _moved_at: float = field(default=0.0, repr=False)

    def pass_began(self, steps: int, now: float) -> None:
        """A pass is running from `now` (monotonic), `steps` finished so far: it has until
        now + stall_timeout to finish another."""
        self.in_pass = True
        self._steps, self._moved_at = steps, now

    def liveness(self, steps: int, now: float) -> tuple[bool, str]:
        """Alive unless a pass has finished no step (`steps`, the count so far: requests,
        lock polls, reads) for stall_timeout seconds by the monotonic clock `now`: each of them
        is bounded, so a pass that stands still that long is stuck, and the process is to be
        restarted (systemd's watchdog, a liveness probe). Between passes nothing need move."""
        if steps != self._steps or not self.in_pass:
            self._steps, self._moved_at = steps, now
            return True, "alive"
        quiet = now - self._moved_at
        if self.stall_timeout and quiet > self.stall_timeout:
            return False, (
                f"pass {self.passes + 1} has finished no step for {quiet:.0f}s "
                f"(stall_timeout {self.stall_timeout:g}s)"
            )
        return True, "alive"

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        """Ready: the last pass finished, is younger than 3 intervals, and the desired state is
        valid. The reason says what is wrong, for operators reading /readyz."""
        now = time.time() if now is None else now
        if self.desired.error is not None:
            return (
                False,
                f"desired state refused, running on the last good one: {self.desired.error}",
            )
        if self.last_pass is None:
            return False, "no pass has finished yet"
        age = now - self.last_pass.finished_at
        if age > 3 * self.interval:
            return False, f"the last pass finished {age:.0f}s ago (more than 3 intervals)"
        if self.last_pass.result == "failed":
            return False, f"the last pass failed: {self.last_pass.error}"
        return True, f"last pass {self.last_pass.result}, {age:.0f}s ago"

    def document(self) -> dict[str, Any]:
        """The /status JSON: the process, the desired state, the last pass, each target, and
        which replica holds which target."""
        last = self.last_pass
        lead = self.leadership
        return {
            "replica": lead.replica,
            "replicas": list(lead.replicas),
            "holders": {
                target: {"owner": holding.owner, "writer": holding.writer}
                for target, holding in sorted(lead.holders.items())
            },
            "started_at": _iso(self.started_at),
            "dry_run": self.dry_run,
            "interval": self.interval,
            "passes": self.passes,
            "in_pass": self.in_pass,
            "ready": self.readiness()[0],
            "desired": {
                "files": list(self.desired.files),
                "digest": self.desired.digest,
                "persons": self.desired.persons,
                "loaded_at": _iso(self.desired.loaded_at) if self.desired.loaded_at else None,
                "error": self.desired.error,
                "problems": list(self.desired.problems),
            },
            "last_pass": None
            if last is None
            else {
                "number": last.number,
                "started_at": _iso(last.started_at),
                "finished_at": _iso(last.finished_at),
                "duration_seconds": round(last.duration, 3),
                "result": last.result,
                "dry_run": last.dry_run,
                "reasons": list(last.reasons),
                "plan_fingerprint": last.plan_fingerprint,
                "error": last.error,
            },
            "targets": {
                name: {
                    "kind": t.kind,
                    "result": t.result,
                    "last_pass": _iso(last.finished_at) if last else None,
                    "managed": t.managed,
                    "planned": dict(t.planned),
                    "applied": dict(t.applied),
                    "failed": dict(t.failed),
                    "drift": t.drift,
                    "held": {"deletes": t.held, "reason": t.held_reason} if t.held else None,
                    "deferred": t.deferred,
                    "foreign": t.foreign,
                    "foreign_persons": list(t.foreign_persons),
                    "invalid": t.invalid,
                    "error": t.error,
                    "health": _health(t.health, time.time()),
                    "failures": [
                        {"person": f.person, "action": f.action, "error": f.error}
                        for f in t.failures
                    ],
                }
                for name, t in (last.targets.items() if last else ())
            },
        }


def _health(health: Health, now: float) -> dict[str, Any] | None:
    if health.healthy:
        return None
    return {
        **health_document(health, quarantined=health.quarantined(now)),
        "failing_since": _iso(health.since) if health.since else None,
        "quarantined_until": _iso(health.until) if health.until else None,
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
