"""Planning: desired + observed + ledger -> the changes that make one target match.

O(persons): both sides are indexed by id; a person costs one render, one fingerprint and one
record comparison, and deepdiff runs only on the records that differ. Observable fields are
compared with what the target reports; write-only fields with the ledger's hashes of what we last
applied (the way kubectl keeps last-applied configuration). Pure.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.core import diffs
from reconciler.core.changes import (
    Action,
    Change,
    DepartmentChange,
    FieldChange,
    Reason,
    Refresh,
    TargetPlan,
)
from reconciler.core.persons import Department, Desired, Person, PersonType
from reconciler.core.records import Compact, Hasher, Invalid, KindSpec, Record, Render


class Prune(StrEnum):
    """What may be deleted from a target."""

    #: Delete only what the ledger owns (the default).
    MANAGED = "managed"
    #: Never delete.
    NONE = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class Select:
    """Which desired persons a target takes; None means no restriction on that axis."""

    types: frozenset[PersonType] | None = None
    #: Any one of these groups admits a person.
    groups: frozenset[str] | None = None
    #: Every one of these labels must match.
    labels: Mapping[str, str] | None = None

    @property
    def everyone(self) -> bool:
        return self.types is None and self.groups is None and self.labels is None

    def matches(self, person: Person) -> bool:
        if self.types is not None and person.type not in self.types:
            return False
        if self.groups is not None and self.groups.isdisjoint(person.groups):
            return False
        return self.labels is None or all(
            person.labels.get(key) == value for key, value in self.labels.items()
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSpec:
    """What planning needs to know about one configured target."""

    name: str
    kind: KindSpec
    #: The kind's field mapping, bound to this target's settings (group_map and the like).
    render: Render
    select: Select = field(default_factory=Select)
    prune: Prune = Prune.MANAGED
    suspended: bool = False
    #: Seconds after which a kind that cannot be read re-pushes what it applied, to repair
    #: drift nobody can see; None: never.
    resync_every: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedPerson:
    """One person as a target reports it: observable fields only, in canonical form.

    The record is kept as a records.Compact (read-only, a fraction of a dict's size).
    """

    record: Record
    #: The target's own id for this person, when it has one (siteserver's integer id).
    remote_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.record, Compact):
            object.__setattr__(self, "record", Compact(self.record))


@dataclass(frozen=True, slots=True, kw_only=True, weakref_slot=True)
class Observed:
    """Everything one target reports, keyed by our person id."""

    persons: Mapping[str, ObservedPerson]
    #: What else the target reported that rendering its records depends on (sophon_fog: its
    #: permission groups' ids by name); a plan made under another context is not reused.
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """What we applied to one person on one target, and therefore own."""

    person_id: str
    remote_id: str | None = None
    #: Keyed fingerprint of the record last confirmed; "" while a write is unconfirmed.
    fingerprint: str = ""
    #: Keyed hash per write-only field last confirmed.
    written: Mapping[str, str] = field(default_factory=dict)
    #: The target's other references for this person (a platform photoId).
    refs: Mapping[str, str] = field(default_factory=dict)
    applied_at: float = 0.0

    @property
    def pending(self) -> bool:
        """A write was sent but never confirmed (a crash in between): owned, content unknown."""
        return not self.fingerprint


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentEntry:
    """A department we created on one target, and therefore own."""

    department_id: str
    parent: str | None = None
    fingerprint: str = ""
    applied_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """The last plan of a target, with the desired state and snapshot it was computed from.

    Valid for a compute() with the same spec, hasher, `only` and an unchanged ledger (the caller
    vouches for those): a person the plan left alone, declared alike and observed as the very
    same object as then, is still in sync and needs no look.
    """

    desired: Desired
    observed: Observed
    plan: TargetPlan

    def settled(self) -> frozenset[str]:
        """Persons the plan did not leave alone: everyone else was in sync."""
        plan = self.plan
        return frozenset(
            [c.person_id for c in plan.changes]
            + [i.person_id for i in plan.invalid]
            + [r.person_id for r in plan.refresh]
            + list(plan.foreign)
            + list(plan.forget)
        )


def observed_digest(observed: Observed, hasher: Hasher) -> str:
    """Keyed digest of a target's observed persons: any change on the target changes it."""
    persons = observed.persons
    body: list[Any] = [
        [pid, persons[pid].remote_id, persons[pid].record] for pid in sorted(persons)
    ]
    if observed.context:
        body.append(sorted(observed.context.items()))
    return hasher.digest(body)


def written_hashes(record: Record, write_only: Collection[str], hasher: Hasher) -> dict[str, str]:
    return {name: hasher.digest(record.get(name)) for name in sorted(write_only)}


def compute(
    desired: Desired,
    spec: TargetSpec,
    observed: Observed | None,
    ledger: Mapping[str, LedgerEntry],
    hasher: Hasher,
    *,
    only: Collection[str] | None = None,
    departments: Mapping[str, DepartmentEntry] | None = None,
    now: float | None = None,
    baseline: Baseline | None = None,
) -> TargetPlan:
    """The plan for one target. `observed` is None for a kind that cannot list.

    Never deletes what the ledger does not own; never touches a person the ledger does not own
    (foreign), even when its id matches a desired person (adoption is an explicit act).
    `departments` is the department ledger of a kind with departments; `now` (epoch seconds)
    decides which entries of a kind that cannot be read are due for their periodic re-push.
    `baseline`, the last plan under the same ledger, spares a look at whoever it settled: the
    plan is the same as without it, only cheaper.
    """
    kind = spec.kind
    persons = desired.persons
    if spec.select.everyone:
        scoped: Collection[str] = persons
    else:
        scoped = [pid for pid, person in persons.items() if spec.select.matches(person)]
    wanted = (
        persons
        if only is None and scoped is persons
        else {pid: persons[pid] for pid in scoped if only is None or pid in only}
    )
    upserts: list[Change] = []
    invalid: list[Invalid] = []
    foreign: set[str] = set()
    refresh: list[Refresh] = []
    declared = {d.id for d in desired.departments}
    resync_before = (
        now - spec.resync_every
        if observed is None and now is not None and spec.resync_every is not None
        else None
    )
    seen_now = observed.persons if observed is not None else {}
    # What the baseline settles: the persons it left alone, as declared and seen then.
    if (
        baseline is not None
        and observed is not None
        and baseline.desired.departments == desired.departments
        and baseline.observed.context == observed.context
    ):
        before, seen_before = baseline.desired.persons, baseline.observed.persons
        unsettled = baseline.settled()
    else:
        before, seen_before, unsettled = {}, {}, frozenset()
    matches = _matcher(kind)

    # Sorted here, not trusted from the caller: the plan's order is part of its identity.
    for pid in sorted(wanted):
        person = wanted[pid]
        seen = seen_now.get(pid)
        was = before.get(pid)
        if (
            was is not None
            and (was is person or was == person)
            and seen is not None
            and seen_before.get(pid) is seen
            and pid not in unsettled
        ):
            continue  # in sync then, and nothing it depends on changed since
        rendered = spec.render(person)
        if isinstance(rendered, Invalid):
            invalid.append(rendered)
            continue
        record = rendered
        if kind.department_field is not None:
            department = record.get(kind.department_field)
            if department not in declared:
                invalid.append(
                    Invalid(
                        person_id=pid,
                        error=f"department {department} is not declared under departments:, "
                        f"and {kind.name} needs it to exist first",
                    )
                )
                continue
        fp = hasher.digest(record)
        entry = ledger.get(pid)

        if observed is not None and seen is None:
            reason = Reason.DRIFT if entry is not None and not entry.pending else Reason.NEW
            upserts.append(_upsert(Action.CREATE, reason, person, record, fp, entry, kind, hasher))
            continue
        if entry is None:
            if seen is None:  # a kind that cannot list: the ledger is all we know
                upserts.append(
                    _upsert(Action.CREATE, Reason.NEW, person, record, fp, None, kind, hasher)
                )
            else:
                foreign.add(pid)
            continue
        if entry.fingerprint == fp and (seen is None or matches(record, seen.record)):
            if resync_before is not None and entry.applied_at <= resync_before:
                change = _upsert(
                    Action.UPDATE, Reason.DRIFT, person, record, fp, entry, kind, hasher
                )
                upserts.append(dataclasses.replace(change, resync=True))
            continue  # the common case: one fingerprint compare, one record compare

        fields = _field_changes(record, seen, entry, kind, hasher)
        if not fields:
            # The target holds the desired record already (a confirmation was lost): the
            # ledger catches up without a call.
            refresh.append(
                Refresh(
                    person_id=pid,
                    fingerprint=fp,
                    written=written_hashes(record, _ledger_fields(kind), hasher),
                    remote_id=seen.remote_id if seen is not None else None,
                    refs=entry.refs,
                )
            )
            continue
        reason = Reason.DRIFT if entry.fingerprint == fp else Reason.INTENT
        immutable = [f.field for f in fields if f.field in kind.immutable and not f.write_only]
        if immutable:
            if person.protected:
                invalid.append(
                    Invalid(
                        person_id=pid,
                        error=f"{', '.join(immutable)} cannot change on {kind.name} without "
                        "replacing the person, and the person is protected",
                    )
                )
                continue
            change = _upsert(
                Action.REPLACE, Reason.IMMUTABLE, person, record, fp, entry, kind, hasher
            )
        else:
            change = _upsert(Action.UPDATE, reason, person, record, fp, entry, kind, hasher)
        remote_id = seen.remote_id if seen is not None and seen.remote_id else change.remote_id
        upserts.append(dataclasses.replace(change, fields=fields, remote_id=remote_id))

    deletes: list[Change] = []
    forget: list[str] = []
    for pid in sorted(ledger):
        if pid in wanted or (only is not None and pid not in only):
            continue
        entry = ledger[pid]
        if observed is not None and pid not in observed.persons:
            forget.append(pid)  # gone from both sides: only the ledger row is left to drop
            continue
        if spec.prune is Prune.NONE:
            continue
        still_declared = desired.persons.get(pid)
        if still_declared is not None and still_declared.protected:
            invalid.append(
                Invalid(person_id=pid, error="out of this target's scope, but protected: kept")
            )
            continue
        seen = None if observed is None else observed.persons.get(pid)
        deletes.append(
            Change(
                action=Action.DELETE,
                person_id=pid,
                reason=Reason.REMOVED,
                # The listing is the truth about the target's id; the ledger's may be stale.
                remote_id=seen.remote_id
                if seen is not None and seen.remote_id
                else entry.remote_id,
                refs=entry.refs,
            )
        )

    if observed is not None:
        foreign.update(
            pid for pid in observed.persons if pid not in ledger and (only is None or pid in only)
        )

    return TargetPlan(
        target=spec.name,
        kind=kind.name,
        changes=tuple(upserts) + tuple(deletes),
        invalid=tuple(sorted(invalid, key=lambda i: i.person_id)),
        foreign=tuple(sorted(foreign)),
        forget=tuple(forget),
        refresh=tuple(refresh),
        observed_digest=None
        if observed is None
        else baseline.plan.observed_digest
        if baseline is not None and baseline.observed is observed
        else observed_digest(observed, hasher),
        suspended=spec.suspended,
        managed=len(ledger),
        in_scope=len(scoped),
        departments=(
            plan_departments(desired.departments, departments or {}, hasher, spec, resync_before)
            if kind.departments and only is None
            else ()
        ),
        write_only=observed is None,
    )


def plan_departments(
    declared: tuple[Department, ...],
    ledger: Mapping[str, DepartmentEntry],
    hasher: Hasher,
    spec: TargetSpec,
    resync_before: float | None = None,
) -> tuple[DepartmentChange, ...]:
    """Every declared department, parents first; then the ones we created and no longer
    declare, children first. Kinds with departments cannot list them: the ledger decides."""
    upserts: list[DepartmentChange] = []
    for department in _parents_first(declared):
        parent = department.parent or None
        fp = hasher.digest([department.name, parent])
        entry = ledger.get(department.id)
        due = resync_before is not None and entry is not None and entry.applied_at <= resync_before
        if entry is not None and entry.fingerprint == fp and not due:
            continue
        upserts.append(
            DepartmentChange(
                action=Action.CREATE if entry is None else Action.UPDATE,
                department_id=department.id,
                reason=Reason.NEW if entry is None else Reason.INTENT,
                name=department.name,
                parent=parent,
                fingerprint=fp,
            )
        )
    if spec.prune is Prune.NONE:
        return tuple(upserts)
    ids = {d.id for d in declared}
    gone = {did: entry for did, entry in ledger.items() if did not in ids}
    deletes = [
        DepartmentChange(action=Action.DELETE, department_id=did, reason=Reason.REMOVED)
        for did in sorted(gone, key=lambda did: (-_depth(did, gone), did))
    ]
    return tuple(upserts) + tuple(deletes)


def _parents_first(declared: tuple[Department, ...]) -> list[Department]:
    by_id = {d.id: d for d in declared}
    order: dict[str, Department] = {}

    def visit(department: Department, path: frozenset[str]) -> None:
        if department.id in order or department.id in path:
            return  # a cycle is refused by the loader; never loop on one here
        parent = by_id.get(department.parent)
        if parent is not None:
            visit(parent, path | {department.id})
        order[department.id] = department

    for department in sorted(declared, key=lambda d: d.id):
        visit(department, frozenset())
    return list(order.values())


def _depth(did: str, entries: Mapping[str, DepartmentEntry]) -> int:
    depth, seen = 0, {did}
    parent = entries[did].parent
    while parent is not None and parent in entries and parent not in seen:
        seen.add(parent)
        depth += 1
        parent = entries[parent].parent
    return depth


def _ledger_fields(kind: KindSpec) -> frozenset[str]:
    """Fields the ledger keeps hashes of: what the target never reports back."""
    return kind.write_only if kind.can_list else frozenset(kind.fields)


def _projection(record: Record, kind: KindSpec) -> dict[str, object]:
    return {name: record[name] for name in kind.fields if name in kind.observable}


def _matcher(kind: KindSpec) -> Callable[[Record, Record], bool]:
    """`_projection(record, kind) == seen`, without building the projection: the seen record
    has exactly the observable fields, with equal values."""
    names = frozenset(name for name in kind.fields if name in kind.observable)
    count = len(names)
    if count == 0:
        return lambda record, seen: not seen
    # Per shape of compact record (its key tuple): what picks the same fields from a record
    # in the same order; None for a shape that is not the observable fields.
    picks: dict[tuple[str, ...], Callable[[Record], Any] | None] = {}
    pick_all = _picker(tuple(names))

    def matches(record: Record, seen: Record) -> bool:
        if len(seen) != count:
            return False
        try:
            if isinstance(seen, Compact):
                shape = seen.keys_tuple
                pick = picks.get(shape, _UNSEEN)
                if pick is _UNSEEN:
                    pick = picks[shape] = _picker(shape) if set(shape) == names else None
                return pick is not None and bool(pick(record) == seen.values_tuple)
            return bool(pick_all(record) == pick_all(seen))
        except KeyError:
            return False

    return matches


_UNSEEN: Any = object()


def _picker(names: tuple[str, ...]) -> Callable[[Record], tuple[Any, ...]]:
    """Values of these fields as a tuple, in this order (itemgetter, always a tuple)."""
    if len(names) == 1:
        only = names[0]
        return lambda record: (record[only],)
    return operator.itemgetter(*names)


def _field_changes(
    record: Record,
    seen: ObservedPerson | None,
    entry: LedgerEntry,
    kind: KindSpec,
    hasher: Hasher,
) -> tuple[FieldChange, ...]:
    """Observable fields against the target, write-only fields against the ledger's hashes."""
    found: dict[str, FieldChange] = {}
    if seen is not None:
        projection = _projection(record, kind)
        observed = seen.record
        if projection != observed:
            # DeepDiff is thorough and slow. A field equal in value and in type, all the way
            # down, cannot differ, and a plain one of the same type with another value plainly
            # does: DeepDiff gets only what is left (other types, containers, missing fields).
            suspect: list[str] = []
            for name, value in projection.items():
                if name not in observed:
                    suspect.append(name)
                    continue
                old = observed[name]
                if _same(value, old):
                    continue
                if type(value) is not type(old) or isinstance(value, list | dict | tuple):
                    suspect.append(name)
                else:
                    sensitive = name in kind.sensitive
                    found[name] = FieldChange(
                        field=name,
                        old=None if sensitive else old,
                        new=None if sensitive else value,
                        sensitive=sensitive,
                    )
            if suspect:
                for change in diffs.field_changes(
                    {name: projection[name] for name in suspect},
                    {name: observed[name] for name in suspect if name in observed},
                    sensitive=kind.sensitive,
                ):
                    found[change.field] = change
    checked = kind.write_only if seen is not None else frozenset(kind.fields)
    for name in checked:
        if entry.written.get(name) != hasher.digest(record.get(name)):
            sensitive = name in kind.sensitive
            found[name] = FieldChange(
                field=name,
                new=None if sensitive else record.get(name),
                sensitive=sensitive,
                write_only=True,
            )
    return tuple(found[name] for name in kind.fields if name in found)


def _same(one: object, other: object) -> bool:
    """Equal in value and in type, items of lists and dicts included (1 == True, but DeepDiff
    tells them apart)."""
    if type(one) is not type(other):
        return False
    if isinstance(one, list | tuple):
        assert isinstance(other, list | tuple)
        return len(one) == len(other) and all(map(_same, one, other))
    if isinstance(one, dict):
        assert isinstance(other, dict)
        return one.keys() == other.keys() and all(_same(one[k], other[k]) for k in one)
    return one == other


def _upsert(
    action: Action,
    reason: Reason,
    person: Person,
    record: Record,
    fp: str,
    entry: LedgerEntry | None,
    kind: KindSpec,
    hasher: Hasher,
) -> Change:
    fields: tuple[FieldChange, ...] = ()
    if action is Action.CREATE:
        fields = tuple(
            FieldChange(
                field=name,
                new=None if name in kind.sensitive else record.get(name),
                sensitive=name in kind.sensitive,
                write_only=name not in kind.observable,
            )
            for name in kind.fields
            if record.get(name) not in (None, "", [], False)
        )
    return Change(
        action=action,
        person_id=person.id,
        reason=reason,
        fields=fields,
        record=record,
        person=person,
        remote_id=entry.remote_id if entry is not None else None,
        fingerprint=fp,
        written=written_hashes(record, _ledger_fields(kind), hasher),
        refs=entry.refs if entry is not None else {},
    )
