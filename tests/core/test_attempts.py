"""The change tier's back-off: growing, capped, per change, reset by a new desired record."""

from __future__ import annotations

from reconciler.core import attempts
from reconciler.core.changes import Action, Change, Reason, TargetPlan


def change(pid: str, fingerprint: str = "f1", action: Action = Action.UPDATE) -> Change:
    return Change(action=action, person_id=pid, reason=Reason.INTENT, fingerprint=fingerprint)


def test_the_wait_doubles_per_failure_and_is_capped() -> None:
    first = attempts.next_attempt(change("1"), "no face", None, now=1000.0)
    assert (first.failures, first.next_try) == (1, 1000.0 + attempts.FIRST_DELAY)
    second = attempts.next_attempt(change("1"), "no face", first, now=2000.0)
    assert (second.failures, second.next_try) == (2, 2000.0 + 2 * attempts.FIRST_DELAY)
    many = first
    for _ in range(30):
        many = attempts.next_attempt(change("1"), "no face", many, now=0.0)
    assert many.next_try == attempts.MAX_DELAY


def test_a_new_desired_record_starts_counting_again() -> None:
    first = attempts.next_attempt(change("1", "f1"), "no face", None, now=0.0)
    again = attempts.next_attempt(change("1", "f2"), "no face", first, now=0.0)
    assert again.failures == 1


def test_only_the_same_change_still_waiting_is_deferred() -> None:
    waiting = attempts.next_attempt(change("1"), "no face", None, now=0.0)
    due = attempts.next_attempt(change("2"), "timeout", None, now=-1000.0)
    other = attempts.next_attempt(change("3", "old"), "no face", None, now=0.0)
    gone = attempts.next_attempt(change("4", action=Action.DELETE), "refused", None, now=0.0)
    plan = TargetPlan(
        target="t",
        kind="k",
        changes=(change("1"), change("2"), change("3", "new"), change("4", action=Action.DELETE)),
    )
    deferred = attempts.defer(plan, {a.person_id: a for a in (waiting, due, other, gone)}, 10.0)
    assert [c.person_id for c in deferred.changes] == ["2", "3"]
    assert [a.person_id for a in deferred.deferred] == ["1", "4"]
    assert attempts.defer(plan, {}, 10.0) is plan
