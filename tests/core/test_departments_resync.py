"""Planning for kinds that cannot be read and have departments (sophon_sight's shape):
departments first and parents first, periodic re-push, refs and remote ids carried to changes."""

from __future__ import annotations

import dataclasses

from reconciler.core import planning, safety
from reconciler.core.changes import Action, Reason, TargetPlan
from reconciler.core.persons import Department, Desired, Person
from reconciler.core.planning import DepartmentEntry, LedgerEntry, Observed, ObservedPerson
from reconciler.core.records import Invalid, KindSpec, Record
from reconciler.core.safety import DeleteLimit
from tests.core.kinds import HASHER, SPEC

PUSH_ONLY = KindSpec(
    name="push",
    fields=("name", "dept"),
    observable=frozenset(),
    can_list=False,
    department_field="dept",
)


def render(person: Person) -> Record | Invalid:
    return {"name": person.name, "dept": person.department or "HQ"}


PUSH = dataclasses.replace(SPEC, kind=PUSH_ONLY, render=render, resync_every=3600.0)
DEPARTMENTS = (
    Department(id="HQ", name="Headquarters"),
    Department(id="D02", name="Sales", parent="HQ"),
    Department(id="D01", name="R&D", parent="D02"),
)


def desired(*persons: Person, departments: tuple[Department, ...] = DEPARTMENTS) -> Desired:
    return Desired(persons={p.id: p for p in persons}, departments=departments)


def applied(
    plan: TargetPlan, at: float
) -> tuple[dict[str, LedgerEntry], dict[str, DepartmentEntry]]:
    ledger = {
        c.person_id: LedgerEntry(
            person_id=c.person_id, fingerprint=c.fingerprint, written=c.written, applied_at=at
        )
        for c in plan.changes
    }
    departments = {
        d.department_id: DepartmentEntry(
            department_id=d.department_id, parent=d.parent, fingerprint=d.fingerprint, applied_at=at
        )
        for d in plan.departments
    }
    return ledger, departments


def test_departments_are_planned_parents_first_whatever_the_declaration_order() -> None:
    plan = planning.compute(desired(), PUSH, None, {}, HASHER, departments={}, now=0.0)
    assert [(d.action, d.department_id, d.parent) for d in plan.departments] == [
        (Action.CREATE, "HQ", None),
        (Action.CREATE, "D02", "HQ"),
        (Action.CREATE, "D01", "D02"),
    ]
    assert plan.write_only


def test_a_person_in_an_undeclared_department_is_invalid_not_sent() -> None:
    plan = planning.compute(
        desired(Person(id="1", name="a", department="NOPE")), PUSH, None, {}, HASHER, now=0.0
    )
    assert plan.changes == ()
    assert plan.invalid == (
        Invalid(
            person_id="1",
            error="department NOPE is not declared under departments:, and push needs it to "
            "exist first",
        ),
    )


def test_a_converged_push_only_target_plans_nothing_until_resync_is_due() -> None:
    wanted = desired(Person(id="1", name="a", department="D01"))
    first = planning.compute(wanted, PUSH, None, {}, HASHER, departments={}, now=1000.0)
    ledger, departments = applied(first, 1000.0)

    calm = planning.compute(wanted, PUSH, None, ledger, HASHER, departments=departments, now=4000.0)
    assert calm.changes == ()
    assert calm.departments == ()

    due = planning.compute(wanted, PUSH, None, ledger, HASHER, departments=departments, now=4600.0)
    assert [(c.action, c.reason, c.resync) for c in due.changes] == [
        (Action.UPDATE, Reason.DRIFT, True)
    ]
    assert {d.department_id for d in due.departments} == {"HQ", "D01", "D02"}
    assert all(d.action is Action.UPDATE for d in due.departments)


def test_without_resync_every_a_push_only_target_is_never_re_pushed() -> None:
    spec = dataclasses.replace(PUSH, resync_every=None)
    wanted = desired(Person(id="1", name="a"))
    first = planning.compute(wanted, spec, None, {}, HASHER, departments={}, now=0.0)
    ledger, departments = applied(first, 0.0)
    later = planning.compute(wanted, spec, None, ledger, HASHER, departments=departments, now=1e9)
    assert later.changes == ()
    assert later.departments == ()


def test_departments_we_created_and_no_longer_declare_are_deleted_children_first() -> None:
    first = planning.compute(desired(), PUSH, None, {}, HASHER, departments={}, now=0.0)
    _, departments = applied(first, 0.0)
    plan = planning.compute(
        desired(departments=()), PUSH, None, {}, HASHER, departments=departments, now=1.0
    )
    assert [(d.action, d.department_id) for d in plan.departments] == [
        (Action.DELETE, "D01"),
        (Action.DELETE, "D02"),
        (Action.DELETE, "HQ"),
    ]
    # Nobody in scope: an emptied source holds the department deletes as well.
    held = safety.check(plan, DeleteLimit.parse("10%"), in_scope=0)
    assert held.departments == ()
    assert len(held.held_departments) == 3


def test_a_renamed_department_is_an_update_and_prune_none_keeps_old_ones() -> None:
    first = planning.compute(desired(), PUSH, None, {}, HASHER, departments={}, now=0.0)
    _, departments = applied(first, 0.0)
    renamed = (Department(id="HQ", name="Head office"),)
    spec = dataclasses.replace(PUSH, prune=planning.Prune.NONE)
    plan = planning.compute(
        desired(departments=renamed), spec, None, {}, HASHER, departments=departments, now=1.0
    )
    assert [(d.action, d.department_id, d.name) for d in plan.departments] == [
        (Action.UPDATE, "HQ", "Head office")
    ]


def test_refs_travel_from_the_ledger_to_updates_and_deletes() -> None:
    wanted = desired(Person(id="1", name="a"), Person(id="2", name="b"))
    first = planning.compute(wanted, PUSH, None, {}, HASHER, departments={}, now=0.0)
    ledger, departments = applied(first, 0.0)
    ledger = {
        pid: dataclasses.replace(entry, refs={"photoId": f"p{pid}"})
        for pid, entry in ledger.items()
    }
    edited = desired(Person(id="1", name="renamed"))
    plan = planning.compute(edited, PUSH, None, ledger, HASHER, departments=departments, now=1.0)
    by_id = {c.person_id: c for c in plan.changes}
    assert by_id["1"].action is Action.UPDATE
    assert by_id["1"].refs == {"photoId": "p1"}
    assert by_id["2"].action is Action.DELETE
    assert by_id["2"].refs == {"photoId": "p2"}


def test_the_listing_s_remote_id_wins_over_a_stale_or_missing_ledger_one() -> None:
    wanted = desired(Person(id="1", name="new name"))
    observed = Observed(
        persons={
            "1": ObservedPerson(
                record={"name": "old", "type": "staff", "groups": [], "pin": ""}, remote_id="17"
            ),
            "2": ObservedPerson(
                record={"name": "x", "type": "staff", "groups": [], "pin": ""}, remote_id="18"
            ),
        }
    )
    ledger = {
        "1": LedgerEntry(person_id="1", fingerprint="f", remote_id=None),
        "2": LedgerEntry(person_id="2", fingerprint="f", remote_id="99"),
    }
    plan = planning.compute(wanted, SPEC, observed, ledger, HASHER)
    assert {c.person_id: (c.action, c.remote_id) for c in plan.changes} == {
        "1": (Action.UPDATE, "17"),
        "2": (Action.DELETE, "18"),
    }
