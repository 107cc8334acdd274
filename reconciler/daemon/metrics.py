"""Prometheus metrics of the daemon, kept in a private registry and rendered for GET /metrics.

Fed by the worker after each pass (`record_pass`) and each desired-state load (`set_desired`).
No I/O: `exposition()` only renders text. The names below are a stable contract.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from reconciler.daemon.status import LeadershipView, PassOutcome, PassResult

#: From a quick pass against an idle target to a first sync of thousands of persons with photos.
DURATION_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
)

_PASS_RESULTS: tuple[PassResult, ...] = ("ok", "partial", "failed")


class Metrics:
    """The daemon's metrics; one instance per daemon, each with its own registry.

    Metric names and labels (stable; dashboards and alerts depend on them):

    - ``reconciler_passes_total{result}`` counter: finished passes; result is ok, partial, failed.
    - ``reconciler_pass_duration_seconds`` histogram: wall time of each pass.
    - ``reconciler_changes_total{target,action,result}`` counter: changes per target; action is
      create, update, replace, delete; result is applied or failed. Dry-run passes apply nothing.
    - ``reconciler_persons_managed{target}`` gauge: ledger entries of the target after the pass.
    - ``reconciler_drift_found_total{target}`` counter: planned changes whose reason was drift.
    - ``reconciler_held_deletes{target}`` gauge: deletes held back by the safety limits.
    - ``reconciler_deferred_changes{target}`` gauge: failed changes waiting out their back-off.
    - ``reconciler_target_errors_total{target}`` counter: passes in which the target had an error.
    - ``reconciler_target_failing_passes{target}`` gauge: failing passes in a row (0: healthy).
    - ``reconciler_target_quarantined{target}`` gauge: 1 while the target is quarantined (left
      alone, backing off as a whole), else 0.
    - ``reconciler_target_quarantined_until_seconds{target}`` gauge: when the current quarantine
      ends (epoch), 0 when not quarantined.
    - ``reconciler_foreign_persons{target}`` gauge: persons on the target we do not own.
    - ``reconciler_invalid_persons{target}`` gauge: desired persons the target cannot take.
    - ``reconciler_last_pass_timestamp_seconds`` gauge: when the last pass finished (epoch).
    - ``reconciler_last_success_timestamp_seconds`` gauge: when the last pass with result ok
      finished (epoch); alert on its age.
    - ``reconciler_desired_valid`` gauge: 1 while the desired state last read was valid, else 0.
    - ``reconciler_targets_held`` gauge: targets this replica held (owned and wrote) in its
      last pass; summed over replicas, every target once.
    - ``reconciler_replicas`` gauge: live daemon replicas sharing the store, as this one sees
      them (1 with the SQLite store).

    Per-target gauges of a target that left the desired state are removed, so stale series do
    not linger; its counters stay, as counters do.
    """

    def __init__(self) -> None:
        # A private registry: tests and several daemons in one process must not share series.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._passes = Counter(
            "reconciler_passes", "Finished passes, by result.", ["result"], registry=r
        )
        self._duration = Histogram(
            "reconciler_pass_duration_seconds",
            "Wall time of each pass.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._changes = Counter(
            "reconciler_changes",
            "Changes per target, by action and result (applied or failed).",
            ["target", "action", "result"],
            registry=r,
        )
        self._managed = Gauge(
            "reconciler_persons_managed",
            "Ledger entries (persons we own) per target after the last pass.",
            ["target"],
            registry=r,
        )
        self._drift = Counter(
            "reconciler_drift_found",
            "Planned changes caused by drift (the target changed, not the desired state).",
            ["target"],
            registry=r,
        )
        self._held = Gauge(
            "reconciler_held_deletes",
            "Deletes held back by the safety limits in the last pass.",
            ["target"],
            registry=r,
        )
        self._deferred = Gauge(
            "reconciler_deferred_changes",
            "Changes that failed after their retries and wait out their back-off.",
            ["target"],
            registry=r,
        )
        self._errors = Counter(
            "reconciler_target_errors",
            "Passes in which the target could not be observed or written.",
            ["target"],
            registry=r,
        )
        self._failing = Gauge(
            "reconciler_target_failing_passes",
            "Failing passes in a row per target; 0 when healthy.",
            ["target"],
            registry=r,
        )
        self._quarantined = Gauge(
            "reconciler_target_quarantined",
            "1 while the target is quarantined (backing off as a whole), else 0.",
            ["target"],
            registry=r,
        )
        self._quarantined_until = Gauge(
            "reconciler_target_quarantined_until_seconds",
            "When the target's quarantine ends, seconds since the epoch; 0 when not quarantined.",
            ["target"],
            registry=r,
        )
        self._foreign = Gauge(
            "reconciler_foreign_persons",
            "Persons on the target that we do not own, in the last pass.",
            ["target"],
            registry=r,
        )
        self._invalid = Gauge(
            "reconciler_invalid_persons",
            "Desired persons the target cannot take, in the last pass.",
            ["target"],
            registry=r,
        )
        self._last_pass = Gauge(
            "reconciler_last_pass_timestamp_seconds",
            "When the last pass finished, seconds since the epoch.",
            registry=r,
        )
        self._last_success = Gauge(
            "reconciler_last_success_timestamp_seconds",
            "When the last pass with result ok finished, seconds since the epoch.",
            registry=r,
        )
        self._desired_valid = Gauge(
            "reconciler_desired_valid",
            "1 while the desired state last read was valid, else 0.",
            registry=r,
        )
        self._held_targets = Gauge(
            "reconciler_targets_held",
            "Targets this replica held (owned and wrote) in its last pass.",
            registry=r,
        )
        self._replicas = Gauge(
            "reconciler_replicas",
            "Live daemon replicas sharing the store, as this replica sees them.",
            registry=r,
        )
        # Series at zero from the start, so rate() and absent() work before the first failure.
        for result in _PASS_RESULTS:
            self._passes.labels(result=result)
        self._targets: set[str] = set()

    def record_pass(self, outcome: PassOutcome) -> None:
        """Account for one finished pass."""
        self._passes.labels(result=outcome.result).inc()
        self._duration.observe(max(outcome.duration, 0.0))
        self._last_pass.set(outcome.finished_at)
        if outcome.result == "ok":
            self._last_success.set(outcome.finished_at)
        for name, target in outcome.targets.items():
            # A dry run applies nothing, whatever the target reports as applied.
            if not outcome.dry_run and target.result != "dry-run":
                self._count_changes(name, "applied", target.applied.items())
            self._count_changes(name, "failed", target.failed.items())
            self._drift.labels(target=name).inc(max(target.drift, 0))
            errors = self._errors.labels(target=name)
            if target.error is not None:
                errors.inc()
            self._managed.labels(target=name).set(target.managed)
            self._held.labels(target=name).set(target.held)
            self._deferred.labels(target=name).set(target.deferred)
            self._foreign.labels(target=name).set(target.foreign)
            self._invalid.labels(target=name).set(target.invalid)
            quarantined = target.health.quarantined(outcome.finished_at)
            self._failing.labels(target=name).set(target.health.failing_passes)
            self._quarantined.labels(target=name).set(1 if quarantined else 0)
            until = target.health.until if quarantined and target.health.until else 0.0
            self._quarantined_until.labels(target=name).set(until)
        present = set(outcome.targets)
        # A failed pass may not have reached the targets at all: an empty list then says nothing
        # about which targets exist, so only a pass that ran may retire a target's series.
        if outcome.result != "failed":
            for gone in self._targets - present:
                for gauge in (
                    self._managed,
                    self._held,
                    self._deferred,
                    self._foreign,
                    self._invalid,
                    self._failing,
                    self._quarantined,
                    self._quarantined_until,
                ):
                    gauge.remove(gone)
            self._targets = present
        else:
            self._targets |= present

    def set_leadership(self, view: LeadershipView) -> None:
        """Which targets this replica holds, among how many replicas (after each pass)."""
        self._held_targets.set(len(view.held))
        self._replicas.set(len(view.replicas))

    def set_desired(self, valid: bool) -> None:
        """Whether the desired state last read was valid (a refused edit sets 0)."""
        self._desired_valid.set(1 if valid else 0)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _count_changes(self, target: str, result: str, counts: Iterable[tuple[str, int]]) -> None:
        for action, count in counts:
            if count > 0:
                self._changes.labels(target=target, action=action, result=result).inc(count)
