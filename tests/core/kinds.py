"""A small kind for core tests: observable fields, one write-only field, one immutable one."""

from __future__ import annotations

from typing import Any

from reconciler.core.changes import Action, TargetPlan
from reconciler.core.persons import Person, PersonType
from reconciler.core.planning import LedgerEntry, Observed, ObservedPerson, TargetSpec
from reconciler.core.records import Hasher, Invalid, KindSpec, Record

KIND = KindSpec(
    name="toy",
    fields=("name", "type", "groups", "pin", "photo"),
    observable=frozenset({"name", "type", "groups", "pin"}),
    immutable=frozenset({"type"}),
    sensitive=frozenset({"pin"}),
)
HASHER = Hasher(b"k" * 32)


def render(person: Person) -> Record | Invalid:
    if person.type is PersonType.VIP:
        return Invalid(person_id=person.id, error="type vip is not supported by toy")
    return {
        "name": person.name,
        "type": person.type.value,
        "groups": sorted(person.groups),
        "pin": person.pin,
        "photo": person.photo.digest if person.photo else "",
    }


SPEC = TargetSpec(name="t", kind=KIND, render=render)


def projection(record: Record) -> dict[str, Any]:
    return {k: record[k] for k in KIND.fields if k in KIND.observable}


def apply_in_memory(
    plan: TargetPlan, observed: Observed, ledger: dict[str, LedgerEntry]
) -> tuple[Observed, dict[str, LedgerEntry]]:
    """What a perfect target and executor would leave behind after applying the plan."""
    persons = dict(observed.persons)
    entries = dict(ledger)
    for pid in plan.forget:
        entries.pop(pid, None)
    for change in plan.changes:
        if change.action is Action.DELETE:
            persons.pop(change.person_id, None)
            entries.pop(change.person_id, None)
            continue
        assert change.record is not None
        persons[change.person_id] = ObservedPerson(record=projection(change.record))
        entries[change.person_id] = LedgerEntry(
            person_id=change.person_id, fingerprint=change.fingerprint, written=change.written
        )
    return Observed(persons=persons), entries
