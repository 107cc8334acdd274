"""Metrics: what one pass adds to each series, vanished targets, dry runs. No I/O."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from reconciler.core.quarantine import Health
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.status import LeadershipView, PassOutcome, TargetPass

NOW = 1_700_000_000.0

LOBBY = TargetPass(
    target="lobby",
    kind="nebula_pass",
    result="partial",
    planned={"create": 3, "update": 2, "delete": 1},
    applied={"create": 3, "update": 1},
    failed={"update": 1},
    drift=2,
    held=4,
    held_reason="delete limit",
    foreign=5,
    invalid=1,
    managed=12,
    error="one update failed",
)
GATE = TargetPass(target="gate", kind="siteserver", result="ok", managed=7, applied={"create": 7})


def outcome(
    *targets: TargetPass,
    result: str = "ok",
    dry_run: bool = False,
    finished_at: float = NOW,
) -> PassOutcome:
    assert result in ("ok", "partial", "failed")
    return PassOutcome(
        number=1,
        started_at=finished_at - 2.5,
        finished_at=finished_at,
        duration=2.5,
        result=result,  # type: ignore[arg-type]
        dry_run=dry_run,
        reasons=("interval",),
        targets={t.target: t for t in targets},
    )


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_metric_is_exposed_with_its_labels_after_a_pass() -> None:
    metrics = Metrics()
    metrics.set_desired(True)
    metrics.record_pass(outcome(LOBBY, GATE, result="partial"))

    body, content_type = metrics.exposition()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for line in (
        'reconciler_passes_total{result="partial"} 1.0',
        'reconciler_passes_total{result="ok"} 0.0',
        "reconciler_pass_duration_seconds_count 1.0",
        'reconciler_pass_duration_seconds_bucket{le="5.0"} 1.0',
        'reconciler_pass_duration_seconds_bucket{le="1800.0"} 1.0',
        'reconciler_changes_total{action="create",result="applied",target="lobby"} 3.0',
        'reconciler_changes_total{action="update",result="applied",target="lobby"} 1.0',
        'reconciler_changes_total{action="update",result="failed",target="lobby"} 1.0',
        'reconciler_persons_managed{target="lobby"} 12.0',
        'reconciler_persons_managed{target="gate"} 7.0',
        'reconciler_drift_found_total{target="lobby"} 2.0',
        'reconciler_drift_found_total{target="gate"} 0.0',
        'reconciler_held_deletes{target="lobby"} 4.0',
        'reconciler_target_errors_total{target="lobby"} 1.0',
        'reconciler_target_errors_total{target="gate"} 0.0',
        'reconciler_foreign_persons{target="lobby"} 5.0',
        'reconciler_invalid_persons{target="lobby"} 1.0',
        f"reconciler_last_pass_timestamp_seconds {NOW!r}",
        "reconciler_desired_valid 1.0",
    ):
        assert line in text.splitlines() or _same_sample(text, line), line
    # A partial pass is no success.
    assert value(metrics, "reconciler_last_success_timestamp_seconds") == 0.0
    # Deletes were planned but none applied: no series invented for them.
    assert value(metrics, "reconciler_changes_total", target="lobby", action="delete") is None


def _same_sample(text: str, line: str) -> bool:
    """Whether `line` is in `text`, comparing numbers as numbers (1.7e+09 vs 1700000000.0)."""
    name_labels, _, number = line.rpartition(" ")
    for sample in text.splitlines():
        head, _, tail = sample.rpartition(" ")
        if head == name_labels:
            return float(tail) == float(number)
    return False


def test_the_exposition_parses_and_names_are_the_contract() -> None:
    metrics = Metrics()
    metrics.set_desired(True)
    metrics.record_pass(outcome(LOBBY))
    text = metrics.exposition()[0].decode()
    # prometheus_client adds a *_created series per counter and histogram; not ours to promise.
    names = {
        family.name
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }
    assert names == {
        "reconciler_passes",
        "reconciler_pass_duration_seconds",
        "reconciler_changes",
        "reconciler_persons_managed",
        "reconciler_drift_found",
        "reconciler_held_deletes",
        "reconciler_deferred_changes",
        "reconciler_target_errors",
        "reconciler_target_failing_passes",
        "reconciler_target_quarantined",
        "reconciler_target_quarantined_until_seconds",
        "reconciler_foreign_persons",
        "reconciler_invalid_persons",
        "reconciler_last_pass_timestamp_seconds",
        "reconciler_last_success_timestamp_seconds",
        "reconciler_desired_valid",
        "reconciler_targets_held",
        "reconciler_replicas",
    }


def test_counters_add_up_and_timestamps_follow_the_passes() -> None:
    metrics = Metrics()
    metrics.record_pass(outcome(LOBBY, result="partial", finished_at=NOW))
    metrics.record_pass(outcome(LOBBY, result="ok", finished_at=NOW + 60))
    metrics.record_pass(outcome(result="failed", finished_at=NOW + 120))

    assert value(metrics, "reconciler_passes_total", result="ok") == 1
    assert value(metrics, "reconciler_passes_total", result="partial") == 1
    assert value(metrics, "reconciler_passes_total", result="failed") == 1
    assert value(metrics, "reconciler_pass_duration_seconds_count") == 3
    assert value(metrics, "reconciler_pass_duration_seconds_sum") == 7.5
    applied = {"target": "lobby", "action": "create", "result": "applied"}
    assert value(metrics, "reconciler_changes_total", **applied) == 6
    assert value(metrics, "reconciler_drift_found_total", target="lobby") == 4
    assert value(metrics, "reconciler_target_errors_total", target="lobby") == 2
    assert value(metrics, "reconciler_last_pass_timestamp_seconds") == NOW + 120
    assert value(metrics, "reconciler_last_success_timestamp_seconds") == NOW + 60


def test_gauges_of_a_vanished_target_are_removed() -> None:
    metrics = Metrics()
    metrics.record_pass(outcome(LOBBY, GATE))
    metrics.record_pass(outcome(GATE))

    gauges = (
        "reconciler_persons_managed",
        "reconciler_held_deletes",
        "reconciler_foreign_persons",
        "reconciler_invalid_persons",
    )
    for name in gauges:
        assert value(metrics, name, target="lobby") is None, name
        assert value(metrics, name, target="gate") is not None, name
    assert 'target="lobby"}' not in _gauge_lines(metrics)
    # Counters keep their history: a rate over the window still sees what happened.
    assert value(metrics, "reconciler_drift_found_total", target="lobby") == 2


def _gauge_lines(metrics: Metrics) -> str:
    text = metrics.exposition()[0].decode()
    return "\n".join(
        line
        for line in text.splitlines()
        if line.startswith(("reconciler_persons_managed", "reconciler_held_deletes"))
    )


def test_a_failed_pass_that_saw_no_target_keeps_their_gauges() -> None:
    metrics = Metrics()
    metrics.record_pass(outcome(LOBBY))
    metrics.record_pass(outcome(result="failed"))
    assert value(metrics, "reconciler_persons_managed", target="lobby") == 12

    # The next pass that runs retires what is gone, including targets seen only before the failure.
    metrics.record_pass(outcome(GATE))
    assert value(metrics, "reconciler_persons_managed", target="lobby") is None
    assert value(metrics, "reconciler_persons_managed", target="gate") == 7


def test_a_dry_run_counts_nothing_as_applied() -> None:
    metrics = Metrics()
    dry = TargetPass(
        target="lobby",
        kind="nebula_pass",
        result="dry-run",
        planned={"create": 3},
        applied={"create": 3},
        drift=1,
        managed=0,
    )
    metrics.record_pass(outcome(dry, dry_run=True))
    text = metrics.exposition()[0].decode()
    assert 'result="applied"' not in text
    assert value(metrics, "reconciler_passes_total", result="ok") == 1
    # What the dry run found is still worth seeing.
    assert value(metrics, "reconciler_drift_found_total", target="lobby") == 1


def test_desired_validity_flips() -> None:
    metrics = Metrics()
    metrics.set_desired(True)
    assert value(metrics, "reconciler_desired_valid") == 1
    metrics.set_desired(False)
    assert value(metrics, "reconciler_desired_valid") == 0


def test_targets_held_and_replicas_follow_the_last_pass() -> None:
    metrics = Metrics()
    metrics.set_leadership(
        LeadershipView(replica="a", replicas=("a", "b", "c"), held=frozenset({"lobby", "gate"}))
    )
    assert value(metrics, "reconciler_targets_held") == 2
    assert value(metrics, "reconciler_replicas") == 3
    metrics.set_leadership(LeadershipView(replica="a", replicas=("a",), held=frozenset()))
    assert value(metrics, "reconciler_targets_held") == 0
    assert value(metrics, "reconciler_replicas") == 1


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.record_pass(outcome(LOBBY))
    assert value(first, "reconciler_persons_managed", target="lobby") == 12
    assert value(second, "reconciler_persons_managed", target="lobby") is None


def test_a_quarantined_target_is_shown_until_it_recovers() -> None:
    metrics = Metrics()
    quarantined = Health(
        failing_passes=3, since=NOW - 180, until=NOW + 300, quarantines=1, error="refused"
    )
    sick = dataclasses.replace(LOBBY, result="quarantined", health=quarantined)
    metrics.record_pass(outcome(sick, finished_at=NOW))
    assert value(metrics, "reconciler_target_quarantined", target="lobby") == 1
    assert value(metrics, "reconciler_target_failing_passes", target="lobby") == 3
    assert value(metrics, "reconciler_target_quarantined_until_seconds", target="lobby") == (
        NOW + 300
    )
    metrics.record_pass(outcome(LOBBY, finished_at=NOW + 400))
    assert value(metrics, "reconciler_target_quarantined", target="lobby") == 0
    assert value(metrics, "reconciler_target_failing_passes", target="lobby") == 0
    assert value(metrics, "reconciler_target_quarantined_until_seconds", target="lobby") == 0
