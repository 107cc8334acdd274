"""Safety guards: mass deletes and empty sources hold deletes; creates and updates go ahead."""

from __future__ import annotations

import pytest

from reconciler.core import safety
from reconciler.core.changes import Action, Change, Reason, TargetPlan
from reconciler.core.safety import DeleteLimit


def plan(deletes: int, creates: int = 1, managed: int = 100) -> TargetPlan:
    changes = [
        Change(action=Action.CREATE, person_id=f"c{i}", reason=Reason.NEW) for i in range(creates)
    ] + [
        Change(action=Action.DELETE, person_id=f"d{i}", reason=Reason.REMOVED)
        for i in range(deletes)
    ]
    return TargetPlan(target="t", kind="toy", changes=tuple(changes), managed=managed)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("10%", DeleteLimit(percent=10)),
        ("25", DeleteLimit(count=25)),
        (7, DeleteLimit(count=7)),
        (" 2.5 % ", DeleteLimit(percent=2.5)),
    ],
)
def test_parse(text: str | int, limit: DeleteLimit) -> None:
    assert DeleteLimit.parse(text) == limit


@pytest.mark.parametrize("text", ["ten", "-1", "101%", "2.5", "", "%"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="max_deletes"):
        DeleteLimit.parse(text)


def test_percentage_never_allows_fewer_than_five() -> None:
    assert DeleteLimit(percent=10).allowed(managed=20) == 5
    assert DeleteLimit(percent=10).allowed(managed=1000) == 100


def test_deletes_within_the_limit_go_ahead() -> None:
    planned = plan(deletes=10)
    assert safety.check(planned, DeleteLimit(percent=10), in_scope=90) is planned


def test_deletes_above_the_limit_are_all_held_and_the_rest_goes_ahead() -> None:
    checked = safety.check(plan(deletes=11), DeleteLimit(percent=10), in_scope=89)
    assert [c.action for c in checked.changes] == [Action.CREATE]
    assert len(checked.held) == 11
    assert "11 deletes exceed max_deletes 10%" in checked.held_reason
    assert "--allow-mass-delete" in checked.held_reason


def test_an_empty_source_holds_every_delete_whatever_the_limit() -> None:
    checked = safety.check(plan(deletes=1, creates=0), DeleteLimit(count=1000), in_scope=0)
    assert checked.changes == ()
    assert "no desired person is in scope" in checked.held_reason


def test_allow_mass_delete_releases() -> None:
    planned = plan(deletes=50)
    assert safety.check(planned, DeleteLimit(), in_scope=0, allow_mass_delete=True) is planned
