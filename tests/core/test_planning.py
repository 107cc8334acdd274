"""Planning, one situation per test: what each combination of desired, observed and ledger plans."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core import planning
from reconciler.core.changes import UPSERTS, Action, Change, Reason, TargetPlan, split
from reconciler.core.persons import Desired, Person, PersonType, Photo
from reconciler.core.planning import (
    LedgerEntry,
    Observed,
    ObservedPerson,
    Prune,
    Select,
    TargetSpec,
)
from reconciler.core.records import Invalid, Record
from tests.core.kinds import HASHER, KIND, SPEC, apply_in_memory, projection, render


def person(pid: str, **fields: object) -> Person:
    fields.setdefault("name", f"person {pid}")
    return Person(id=pid, **fields)  # type: ignore[arg-type]


def desired(*persons: Person) -> Desired:
    return Desired(persons={p.id: p for p in sorted(persons, key=lambda p: p.id)})


def converged(*persons: Person) -> tuple[Observed, dict[str, LedgerEntry]]:
    """The target and ledger after these persons were applied."""
    plan = planning.compute(desired(*persons), SPEC, Observed(persons={}), {}, HASHER)
    return apply_in_memory(plan, Observed(persons={}), {})


def photo(digest: str) -> Photo:
    return Photo(path=f"/p/{digest}.jpg", digest=digest, media_type="image/jpeg", size=10)


def test_new_persons_are_created_in_id_order() -> None:
    plan = planning.compute(
        desired(person("2"), person("1")), SPEC, Observed(persons={}), {}, HASHER
    )
    assert [(c.action, c.person_id, c.reason) for c in plan.changes] == [
        (Action.CREATE, "1", Reason.NEW),
        (Action.CREATE, "2", Reason.NEW),
    ]


def test_a_converged_target_plans_nothing() -> None:
    people = (person("1", groups=("a",)), person("2", photo=photo("x")))
    observed, ledger = converged(*people)
    plan = planning.compute(desired(*people), SPEC, observed, ledger, HASHER)
    assert plan.changes == ()
    assert plan.foreign == ()


def test_a_desired_edit_is_an_update_for_intent_with_old_and_new_values() -> None:
    observed, ledger = converged(person("1"))
    plan = planning.compute(desired(person("1", groups=("b",))), SPEC, observed, ledger, HASHER)
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.UPDATE, Reason.INTENT)
    assert [(f.field, f.old, f.new) for f in change.fields] == [("groups", [], ["b"])]


def test_an_edit_on_the_device_is_an_update_for_drift() -> None:
    observed, ledger = converged(person("1"))
    edited = dict(observed.persons["1"].record, name="renamed on the device")
    observed = Observed(persons={"1": ObservedPerson(record=edited)})
    plan = planning.compute(desired(person("1")), SPEC, observed, ledger, HASHER)
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.UPDATE, Reason.DRIFT)
    assert [(f.field, f.old, f.new) for f in change.fields] == [
        ("name", "renamed on the device", "person 1")
    ]


def test_a_person_deleted_on_the_device_is_created_again_for_drift() -> None:
    _observed, ledger = converged(person("1"))
    plan = planning.compute(desired(person("1")), SPEC, Observed(persons={}), ledger, HASHER)
    assert [(c.action, c.reason) for c in plan.changes] == [(Action.CREATE, Reason.DRIFT)]


def test_a_write_only_change_is_found_against_the_ledger_not_the_target() -> None:
    observed, ledger = converged(person("1", photo=photo("old")))
    plan = planning.compute(
        desired(person("1", photo=photo("new"))), SPEC, observed, ledger, HASHER
    )
    (change,) = plan.changes
    assert change.action is Action.UPDATE
    (field,) = change.fields
    assert (field.field, field.new, field.write_only) == ("photo", "new", True)


def test_an_immutable_change_is_a_replace() -> None:
    observed, ledger = converged(person("1"))
    plan = planning.compute(
        desired(person("1", type=PersonType.VISITOR)), SPEC, observed, ledger, HASHER
    )
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.REPLACE, Reason.IMMUTABLE)
    assert [(f.field, f.old, f.new) for f in change.fields] == [("type", "staff", "visitor")]


def test_a_protected_person_is_never_replaced() -> None:
    observed, ledger = converged(person("1", protected=True))
    plan = planning.compute(
        desired(person("1", type=PersonType.VISITOR, protected=True)),
        SPEC,
        observed,
        ledger,
        HASHER,
    )
    assert plan.changes == ()
    (invalid,) = plan.invalid
    assert "protected" in invalid.error


def test_a_removed_person_the_ledger_owns_is_deleted_last() -> None:
    observed, ledger = converged(person("1"), person("2"))
    plan = planning.compute(desired(person("2"), person("3")), SPEC, observed, ledger, HASHER)
    assert [(c.action, c.person_id, c.reason) for c in plan.changes] == [
        (Action.CREATE, "3", Reason.NEW),
        (Action.DELETE, "1", Reason.REMOVED),
    ]


def test_foreign_persons_are_reported_and_never_touched_even_when_desired() -> None:
    record = projection(render(person("9")))  # type: ignore[arg-type]
    observed = Observed(
        persons={
            "9": ObservedPerson(record=dict(record, name="someone else")),
            "8": ObservedPerson(record=record),
        }
    )
    plan = planning.compute(desired(person("9")), SPEC, observed, {}, HASHER)
    assert plan.changes == ()
    assert plan.foreign == ("8", "9")


def test_prune_none_never_deletes() -> None:
    observed, ledger = converged(person("1"))
    spec = dataclasses.replace(SPEC, prune=Prune.NONE)
    plan = planning.compute(desired(), spec, observed, ledger, HASHER)
    assert plan.changes == ()


def test_ledger_rows_gone_from_both_sides_are_forgotten_not_deleted() -> None:
    _, ledger = converged(person("1"))
    plan = planning.compute(desired(), SPEC, Observed(persons={}), ledger, HASHER)
    assert plan.changes == ()
    assert plan.forget == ("1",)


def test_a_pending_ledger_row_after_a_crash_is_owned_and_converges_by_update() -> None:
    # The create was sent, the process died before the confirmation was recorded.
    observed, _ = converged(person("1", photo=photo("p")))
    pending = {"1": LedgerEntry(person_id="1")}
    plan = planning.compute(desired(person("1", photo=photo("p"))), SPEC, observed, pending, HASHER)
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.UPDATE, Reason.INTENT)
    assert plan.foreign == ()


def test_select_scopes_persons_and_out_of_scope_owned_persons_are_deleted() -> None:
    observed, ledger = converged(person("1"), person("2", type=PersonType.VISITOR))
    spec = dataclasses.replace(SPEC, select=Select(types=frozenset({PersonType.STAFF})))
    plan = planning.compute(
        desired(person("1"), person("2", type=PersonType.VISITOR)), spec, observed, ledger, HASHER
    )
    assert [(c.action, c.person_id) for c in plan.changes] == [(Action.DELETE, "2")]


@pytest.mark.parametrize(
    ("select", "admitted"),
    [
        (Select(), {"a", "b", "c"}),
        (Select(groups=frozenset({"g1"})), {"a"}),
        (Select(labels={"building": "B"}), {"b"}),
        (Select(types=frozenset({PersonType.VISITOR}), groups=frozenset({"g2"})), {"c"}),
    ],
)
def test_select(select: Select, admitted: set[str]) -> None:
    people = [
        person("a", groups=("g1",), labels={"building": "A"}),
        person("b", groups=("g2",), labels={"building": "B"}),
        person("c", type=PersonType.VISITOR, groups=("g2",)),
    ]
    assert {p.id for p in people if select.matches(p)} == admitted


def test_a_type_the_kind_lacks_is_invalid_for_that_person_only() -> None:
    plan = planning.compute(
        desired(person("1"), person("2", type=PersonType.VIP)),
        SPEC,
        Observed(persons={}),
        {},
        HASHER,
    )
    assert [c.person_id for c in plan.changes] == ["1"]
    assert [(i.person_id, i.error) for i in plan.invalid] == [
        ("2", "type vip is not supported by toy")
    ]


def test_an_invalid_owned_person_is_not_deleted() -> None:
    observed, ledger = converged(person("2"))
    plan = planning.compute(
        desired(person("2", type=PersonType.VIP)), SPEC, observed, ledger, HASHER
    )
    assert plan.changes == ()


def test_sensitive_values_never_reach_a_change() -> None:
    observed, ledger = converged(person("1", pin="1111"))
    plan = planning.compute(desired(person("1", pin="2222")), SPEC, observed, ledger, HASHER)
    (change,) = plan.changes
    (field,) = change.fields
    assert (field.field, field.old, field.new, field.sensitive) == ("pin", None, None, True)


def test_only_restricts_every_kind_of_change() -> None:
    observed, ledger = converged(person("1"), person("2"))
    plan = planning.compute(
        desired(person("3"), person("4")), SPEC, observed, ledger, HASHER, only={"1", "3"}
    )
    assert [(c.action, c.person_id) for c in plan.changes] == [
        (Action.CREATE, "3"),
        (Action.DELETE, "1"),
    ]


def test_a_kind_that_cannot_list_is_planned_from_the_ledger() -> None:
    spec = dataclasses.replace(SPEC, kind=dataclasses.replace(KIND, can_list=False))
    first = planning.compute(desired(person("1")), spec, None, {}, HASHER)
    (create,) = first.changes
    ledger = {
        "1": LedgerEntry(person_id="1", fingerprint=create.fingerprint, written=create.written)
    }
    assert planning.compute(desired(person("1")), spec, None, ledger, HASHER).changes == ()
    edited = planning.compute(desired(person("1", name="new")), spec, None, ledger, HASHER)
    (update,) = edited.changes
    assert [(f.field, f.write_only) for f in update.fields] == [("name", True)]
    assert (
        planning.compute(desired(), spec, None, ledger, HASHER).changes[0].action is Action.DELETE
    )


def test_in_scope_counts_what_select_admits_whatever_only_says() -> None:
    spec = dataclasses.replace(SPEC, select=Select(types=frozenset({PersonType.STAFF})))
    plan = planning.compute(
        desired(person("1"), person("2"), person("3", type=PersonType.VISITOR)),
        spec,
        Observed(persons={}),
        {},
        HASHER,
        only={"1"},
    )
    assert [c.person_id for c in plan.changes] == ["1"]
    assert plan.in_scope == 2


def test_a_target_already_holding_the_desired_record_only_refreshes_the_ledger() -> None:
    """A write the target applied but whose answer was lost: nothing to send again."""
    old = person("1", groups=("a",))
    observed, ledger = converged(old)
    new = person("1", groups=("b",))
    # The device took the new record; our ledger still holds the old fingerprint.
    observed = Observed(persons={"1": ObservedPerson(record=projection(render(new)))})  # type: ignore[arg-type]
    plan = planning.compute(desired(new), SPEC, observed, ledger, HASHER)
    assert plan.changes == ()
    (refresh,) = plan.refresh
    assert refresh.person_id == "1"
    assert refresh.fingerprint == HASHER.digest(render(new))
    assert refresh.fingerprint != ledger["1"].fingerprint


def test_changes_split_by_action_keep_their_order() -> None:
    def one(pid: str, action: Action) -> Change:
        return Change(action=action, person_id=pid, reason=Reason.INTENT, fingerprint="f")

    mixed = [one("1", Action.CREATE), one("2", Action.DELETE), one("3", Action.UPDATE)]
    upserts, deletes, replaces = split(mixed, UPSERTS, {Action.DELETE}, {Action.REPLACE})
    assert [c.person_id for c in upserts] == ["1", "3"]
    assert [c.person_id for c in deletes] == ["2"]
    assert replaces == []
    creates = [one(str(n), Action.CREATE) for n in range(5)]
    (alike,) = split(creates, UPSERTS)
    assert alike == creates
    alike.append(one("9", Action.CREATE))  # a list of its own, never the caller's
    assert len(creates) == 5
    # The actions known to be present decide without looking: a plan counted them already.
    assert split(mixed, UPSERTS, {Action.DELETE}, present={Action.CREATE, Action.UPDATE}) == [
        mixed,
        [],
    ]


def test_a_target_plan_counts_its_changes_once_for_each_plan() -> None:
    def one(pid: str, action: Action, reason: Reason = Reason.INTENT) -> Change:
        return Change(action=action, person_id=pid, reason=reason, fingerprint="f")

    plan = TargetPlan(
        target="t",
        kind="k",
        changes=(
            one("1", Action.CREATE),
            one("2", Action.UPDATE, Reason.DRIFT),
            one("3", Action.UPDATE),
            one("4", Action.DELETE, Reason.REMOVED),
        ),
    )
    assert plan.planned == {"create": 1, "update": 2, "delete": 1}
    assert plan.actions == {Action.CREATE: 1, Action.UPDATE: 2, Action.DELETE: 1}
    assert plan.drift == 1
    assert plan.actions is plan.actions  # counted once
    # A plan made from another (a guard holding deletes back) counts its own changes.
    kept = dataclasses.replace(plan, changes=plan.changes[:1])
    assert kept.planned == {"create": 1}
    assert kept.drift == 0
    assert kept == dataclasses.replace(plan, changes=plan.changes[:1])  # the count is no part


def test_a_plan_made_under_another_context_is_no_baseline() -> None:
    """A kind whose records depend on what else the target reports (sophon_fog's permission
    ids by name) renders anew when that changed, though desired and observed persons did not."""
    ids = {"hq": "id-1"}

    def by_context(person: Person) -> Record | Invalid:
        rendered = render(person)
        assert isinstance(rendered, dict)
        return {**rendered, "groups": sorted(ids[g] for g in person.groups)}

    spec = TargetSpec(name="t", kind=KIND, render=by_context)
    desired = Desired(persons={"1": Person(id="1", name="one", groups=("hq",))})
    empty = Observed(persons={}, context=dict(ids))
    first = planning.compute(desired, spec, empty, {}, HASHER)
    synced, ledger = apply_in_memory(first, empty, {})
    before = Observed(persons=synced.persons, context=dict(ids))
    last = planning.compute(desired, spec, before, ledger, HASHER)
    assert last.changes == ()  # in sync: a baseline would spare it a look

    ids["hq"] = "id-2"  # the permission group was made anew on the target
    now = Observed(persons=synced.persons, context=dict(ids))
    assert planning.observed_digest(now, HASHER) != planning.observed_digest(before, HASHER)
    baseline = planning.Baseline(desired=desired, observed=before, plan=last)
    spared = planning.compute(desired, spec, now, ledger, HASHER, baseline=baseline)
    assert spared == planning.compute(desired, spec, now, ledger, HASHER)
    (change,) = spared.changes
    assert [(f.field, f.old, f.new) for f in change.fields] == [("groups", ["id-1"], ["id-2"])]
