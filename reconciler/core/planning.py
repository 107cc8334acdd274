"""Planning: desired + observed + ledger -> the changes that make one target match.

O(persons): both sides are indexed by id; a person costs one render, one fingerprint and one
record comparison, and deepdiff runs only on the records that differ. Observable fields are
compared with what the target reports; write-only fields with the ledger's hashes of what we last
applied (the way kubectl keeps last-applied configuration). Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.core import diffs
from reconciler.core.changes import Action, Change, FieldChange, Reason, TargetPlan
from reconciler.core.persons import Desired, Person, PersonType
from reconciler.core.records import Hasher, Invalid, KindSpec, Record, Render


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedPerson:
    """One person as a target reports it: observable fields only, in canonical form."""

    record: Record
    #: The target's own id for this person, when it has one (siteserver's integer id).
    remote_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """Everything one target reports, keyed by our person id."""

    persons: Mapping[str, ObservedPerson]


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """What we applied to one person on one target, and therefore own."""

    person_id: str
    remote_id: str | None = None
    #: Keyed fingerprint of the record last confirmed; "" while a write is unconfirmed.
    fingerprint: str = ""
    #: Keyed hash per write-only field last confirmed.
    written: Mapping[str, str] = field(default_factory=dict)
    applied_at: float = 0.0

    @property
    def pending(self) -> bool:
        """A write was sent but never confirmed (a crash in between): owned, content unknown."""
        return not self.fingerprint


def observed_digest(observed: Observed, hasher: Hasher) -> str:
    """Keyed digest of a target's observed persons: any change on the target changes it."""
    return hasher.digest(
        [
            [pid, observed.persons[pid].remote_id, observed.persons[pid].record]
            for pid in sorted(observed.persons)
        ]
    )


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
) -> TargetPlan:
    """The plan for one target. `observed` is None for a kind that cannot list.

    Never deletes what the ledger does not own; never touches a person the ledger does not own
    (foreign), even when its id matches a desired person (adoption is an explicit act).
    """
    kind = spec.kind
    scoped = [pid for pid, person in desired.persons.items() if spec.select.matches(person)]
    wanted = {pid: desired.persons[pid] for pid in scoped if only is None or pid in only}
    upserts: list[Change] = []
    invalid: list[Invalid] = []
    foreign: set[str] = set()

    # Sorted here, not trusted from the caller: the plan's order is part of its identity.
    for pid in sorted(wanted):
        person = wanted[pid]
        rendered = spec.render(person)
        if isinstance(rendered, Invalid):
            invalid.append(rendered)
            continue
        record = rendered
        fp = hasher.digest(record)
        entry = ledger.get(pid)
        seen = None if observed is None else observed.persons.get(pid)

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
        if entry.fingerprint == fp and (seen is None or _projection(record, kind) == seen.record):
            continue  # the common case: one fingerprint compare, one record compare

        fields = _field_changes(record, seen, entry, kind, hasher)
        if not fields:
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
        upserts.append(dataclasses.replace(change, fields=fields))

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
        deletes.append(
            Change(
                action=Action.DELETE,
                person_id=pid,
                reason=Reason.REMOVED,
                remote_id=entry.remote_id,
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
        observed_digest=None if observed is None else observed_digest(observed, hasher),
        suspended=spec.suspended,
        managed=len(ledger),
        in_scope=len(scoped),
    )


def _projection(record: Record, kind: KindSpec) -> dict[str, object]:
    return {name: record[name] for name in kind.fields if name in kind.observable}


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
        if projection != seen.record:
            for change in diffs.field_changes(projection, seen.record, sensitive=kind.sensitive):
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
    written_fields = kind.write_only if kind.can_list else frozenset(kind.fields)
    return Change(
        action=action,
        person_id=person.id,
        reason=reason,
        fields=fields,
        record=record,
        person=person,
        remote_id=entry.remote_id if entry is not None else None,
        fingerprint=fp,
        written=written_hashes(record, written_fields, hasher),
    )
