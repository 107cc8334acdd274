"""The target tier: when a target is quarantined, for how long, and how it recovers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.quarantine import (
    FIRST_DELAY,
    HEALTHY,
    MAX_DELAY,
    QUARANTINE_AFTER,
    Health,
    Verdict,
    after_pass,
    judge,
)


def test_an_unobservable_target_fails_its_pass() -> None:
    assert judge(unobservable="refused", target_error=None, attempted=0, failed=0) == (
        Verdict.FAILING,
        "refused",
    )


def test_a_target_that_stopped_answering_fails_its_pass() -> None:
    verdict, error = judge(unobservable=None, target_error="timed out", attempted=1, failed=1)
    assert (verdict, error) == (Verdict.FAILING, "timed out")


def test_most_changes_failing_fails_the_pass() -> None:
    verdict, error = judge(unobservable=None, target_error=None, attempted=5, failed=3)
    assert verdict is Verdict.FAILING
    assert error == "3 of 5 changes failed"


def test_one_refused_person_is_that_persons_problem_not_the_targets() -> None:
    assert judge(unobservable=None, target_error=None, attempted=1, failed=1)[0] is (
        Verdict.HEALTHY
    )
    assert judge(unobservable=None, target_error=None, attempted=6, failed=3)[0] is (
        Verdict.HEALTHY
    )


def test_a_pass_that_asked_nothing_learns_nothing() -> None:
    assert judge(unobservable=None, target_error=None, attempted=0, failed=0)[0] is (
        Verdict.UNKNOWN
    )


def fail(health: Health, now: float) -> Health:
    return after_pass(health, Verdict.FAILING, "refused", now)


def test_quarantine_after_failing_passes_in_a_row_then_recovery() -> None:
    health = HEALTHY
    for n in range(1, QUARANTINE_AFTER):
        health = fail(health, now=float(n))
        assert health.failing_passes == n
        assert not health.quarantined(float(n))
    health = fail(health, now=100.0)
    assert health.quarantined(100.0)
    assert health.until == 100.0 + FIRST_DELAY
    assert health.since == 1.0
    assert health.error == "refused"
    # A failed probe doubles the wait; a healthy one ends it.
    probe = fail(health, now=health.until)
    assert probe.until == health.until + 2 * FIRST_DELAY
    assert after_pass(probe, Verdict.HEALTHY, "", now=probe.until) == HEALTHY


def test_a_pass_that_learns_nothing_keeps_the_record() -> None:
    health = fail(HEALTHY, now=1.0)
    assert after_pass(health, Verdict.UNKNOWN, "", now=2.0) == health


@given(st.lists(st.sampled_from(list(Verdict)), max_size=40))
def test_laws(verdicts: list[Verdict]) -> None:
    """Never quarantined before enough failing passes in a row, never for longer than the cap,
    and a healthy pass always ends everything."""
    health = HEALTHY
    run = 0
    for now, verdict in enumerate(verdicts):
        previous = health
        health = after_pass(health, verdict, "x", float(now))
        if verdict is Verdict.HEALTHY:
            assert health == HEALTHY
            run = 0
        elif verdict is Verdict.FAILING:
            run += 1
            assert health.failing_passes == previous.failing_passes + 1
        if health.until is not None:
            assert health.failing_passes >= QUARANTINE_AFTER
            assert health.until - now <= MAX_DELAY
        if run < QUARANTINE_AFTER and previous.until is None:
            assert not health.quarantined(float(now))
