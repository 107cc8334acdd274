"""Changes and plans: what one pass intends to do, per target, and its plan document.

A plan's fingerprint covers everything that decides what would be sent (desired digest, observed
digest, each change's record fingerprint), so a saved plan can be checked for staleness without
ever writing a person's values into the plan file. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter, countOf
from typing import Any

from reconciler.core.persons import Person
from reconciler.core.quarantine import HEALTHY, Health
from reconciler.core.records import Hasher, Invalid, Record

FORMAT_VERSION = 1


class Action(StrEnum):
    """What a change does to one person on one target."""

    CREATE = "create"
    UPDATE = "update"
    #: Delete, then create: an immutable field changed.
    REPLACE = "replace"
    DELETE = "delete"


class Reason(StrEnum):
    """Why a change is planned."""

    #: The person is not on the target yet.
    NEW = "new"
    #: The desired record changed since we last applied it.
    INTENT = "intent"
    #: The target no longer matches what we applied (edited or removed on the device).
    DRIFT = "drift"
    #: The person left the desired state (or this target's scope) and the ledger owns it.
    REMOVED = "removed"
    #: A field the kind cannot change was changed: the person is replaced.
    IMMUTABLE = "immutable"


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldChange:
    """One field of one change. Sensitive values are kept out of every rendering."""

    field: str
    #: The target's current value; None when unknown (write-only fields) or absent.
    old: Any = None
    new: Any = None
    sensitive: bool = False
    #: The target never reports this field: the change was found against the ledger's hash.
    write_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A create / update / replace / delete of one person on one target."""

    action: Action
    person_id: str
    reason: Reason
    fields: tuple[FieldChange, ...] = ()
    #: The record to send (create, update, replace); None for delete.
    record: Record | None = None
    #: The declared person behind the record: adapters read photo bytes through it.
    person: Person | None = None
    #: The target's own id for this person, when it has one and the ledger knows it.
    remote_id: str | None = None
    #: Keyed fingerprint of `record`: what the ledger stores once the target confirms.
    fingerprint: str = ""
    #: Keyed hash per write-only field of `record`, for the ledger.
    written: Mapping[str, str] = field(default_factory=dict)
    #: The target's other references the ledger holds for this person (a platform photoId).
    refs: Mapping[str, str] = field(default_factory=dict)
    #: A periodic re-push of a target that cannot be read (sophon_sight): no known difference.
    resync: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentChange:
    """A create / update / delete of one department, on kinds that have departments."""

    action: Action
    department_id: str
    reason: Reason
    #: Empty for a delete.
    name: str = ""
    parent: str | None = None
    #: Keyed fingerprint of (name, parent): what the department ledger stores once confirmed.
    fingerprint: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refresh:
    """A ledger row to bring up to date without any call: the target already holds the record
    (a write whose answer was lost, say), so only what we know about it is stale."""

    person_id: str
    fingerprint: str
    written: Mapping[str, str] = field(default_factory=dict)
    remote_id: str | None = None
    refs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """A change that failed after its retries: when it may be tried again, and why it failed."""

    person_id: str
    #: What failed: the record fingerprint for upserts, "delete" for a delete.
    fingerprint: str
    failures: int
    next_try: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetPlan:
    """The plan for one target."""

    target: str
    kind: str
    #: Changes to apply, in order: creates, updates and replaces by person id, then deletes.
    changes: tuple[Change, ...] = ()
    #: Deletes held back by a safety guard, with the guard's explanation.
    held: tuple[Change, ...] = ()
    held_reason: str = ""
    #: Desired persons this target cannot take as declared.
    invalid: tuple[Invalid, ...] = ()
    #: Persons on the target the ledger does not own: reported, never touched.
    foreign: tuple[str, ...] = ()
    #: Ledger entries whose persons are gone from both the target and the desired state.
    forget: tuple[str, ...] = ()
    #: Ledger entries whose target already matches the desired record: updated, nothing sent.
    refresh: tuple[Refresh, ...] = ()
    #: Keyed digest of what observe() returned; None for a kind that cannot list.
    observed_digest: str | None = None
    #: Why this target could not be planned (it could not be observed); no changes then.
    error: str | None = None
    #: Observed and planned, never applied.
    suspended: bool = False
    #: How many persons the ledger owns on this target (the base of percentage guards).
    managed: int = 0
    #: Desired persons this target's select admits, whatever --only says (the empty-source guard).
    in_scope: int = 0
    #: Department changes (kinds with departments): upserts parents first, then deletes
    #: children first. Upserts are applied before the persons, deletes after them.
    departments: tuple[DepartmentChange, ...] = ()
    #: Department deletes held with the person deletes.
    held_departments: tuple[DepartmentChange, ...] = ()
    #: The kind cannot be read: this plan comes from the ledger alone.
    write_only: bool = False
    #: Changes that failed before and wait out their back-off (see core.attempts).
    deferred: tuple[Attempt, ...] = ()
    #: The target's record of failing passes when it was planned (see core.quarantine).
    health: Health = HEALTHY
    #: Quarantined: this pass neither reads nor writes the target.
    quarantined: bool = False

    #: Changes by action and the drift, counted once: a pass asks for them when it logs the
    #: plan, when it applies it and when it records it (4 ms a count at 100 000 changes).
    _tally: tuple[Mapping[Action, int], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def actions(self) -> Mapping[Action, int]:
        """Changes by action, only the actions present."""
        return self._counted()[0]

    @property
    def planned(self) -> dict[str, int]:
        """Changes by action, only the actions present (create, update, replace, delete)."""
        return {action.value: count for action, count in self.actions.items()}

    @property
    def drift(self) -> int:
        """Changes found because the target changed, not the desired state."""
        return self._counted()[1]

    def _counted(self) -> tuple[Mapping[Action, int], int]:
        if self._tally is None:
            # Counted in C: a first sync's 100 000 changes are counted before the first call.
            counts = Counter(map(attrgetter("action"), self.changes))
            drift = countOf(map(attrgetter("reason"), self.changes), Reason.DRIFT)
            object.__setattr__(self, "_tally", (counts, drift))
        assert self._tally is not None
        return self._tally


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The plan of one pass over every selected target."""

    desired_digest: str
    targets: Mapping[str, TargetPlan]
    fingerprint: str
    created_at: str

    def summary(self) -> dict[str, int]:
        totals = {action.value: 0 for action in Action}
        for target_plan in self.targets.values():
            for action, count in target_plan.planned.items():
                totals[action] += count
        return totals

    @property
    def has_upkeep(self) -> bool:
        """Ledger rows to refresh or forget: bookkeeping that sends nothing to a target."""
        return any(t.refresh or t.forget for t in self.targets.values())

    @property
    def has_changes(self) -> bool:
        return any(t.changes or t.departments for t in self.targets.values())

    @property
    def has_held(self) -> bool:
        return any(t.held or t.held_departments for t in self.targets.values())

    @property
    def has_errors(self) -> bool:
        return any(t.error for t in self.targets.values())


def fingerprint(desired_digest: str, targets: Iterable[TargetPlan], hasher: Hasher) -> str:
    """A digest of everything that decides what a plan would send; no values, only their hashes."""

    def essence(changes: Iterable[Change]) -> list[list[Any]]:
        return [
            [c.action.value, c.person_id, c.reason.value, c.fingerprint, c.remote_id]
            for c in changes
        ]

    def departments(changes: Iterable[DepartmentChange]) -> list[list[Any]]:
        return [[c.action.value, c.department_id, c.fingerprint] for c in changes]

    body = [
        desired_digest,
        [
            [
                t.target,
                t.kind,
                t.observed_digest,
                t.error,
                essence(t.changes),
                essence(t.held),
                [[i.person_id, i.error] for i in t.invalid],
                list(t.forget),
                [[r.person_id, r.fingerprint] for r in t.refresh],
                departments(t.departments),
                departments(t.held_departments),
            ]
            for t in sorted(targets, key=lambda t: t.target)
        ],
    ]
    return "b2:" + hasher.digest(body)


UPSERTS = frozenset({Action.CREATE, Action.UPDATE, Action.REPLACE})


def split(
    changes: Sequence[Change],
    *groups: Collection[Action],
    present: Collection[Action] | None = None,
) -> list[list[Change]]:
    """For each group of actions, the changes whose action is in it, in their order.

    Every apply splits its changes by action before the first call. At 100 000 changes of one
    action (a first sync) that is one pass in C for all the groups and a copy each, not a Python
    loop; `present`, the actions known to be there (TargetPlan.actions), spares even the pass.
    """
    found = frozenset(map(attrgetter("action"), changes) if present is None else present)
    split_up: list[list[Change]] = []
    for group in groups:
        if found.issubset(group):
            split_up.append(list(changes))
        elif found.isdisjoint(group):
            split_up.append([])
        else:
            split_up.append([c for c in changes if c.action in group])
    return split_up


def change_document(change: Change) -> dict[str, Any]:
    """One change as the plan document (and the daemon's log lines) show it. Each field shows
    its values, except a sensitive one: only that it changes.

    A first sync logs one of these per person: the fields are written out here rather than by
    a function each (a quarter of the time).
    """
    doc: dict[str, Any] = {
        "action": change.action.value,
        "person": change.person_id,
        "reason": change.reason.value,
    }
    if change.fields:
        doc["fields"] = {
            f.field: {"sensitive": True}
            if f.sensitive
            else {"to": f.new, "write_only": True}
            if f.write_only
            else {"from": f.old, "to": f.new}
            for f in change.fields
        }
    if change.resync:
        doc["resync"] = True
    return doc


def document_objects(document: Mapping[str, Any]) -> int:
    """The JSON objects a change document opens when no field's value is one: itself, its
    fields and each field's entry. Every field shows as an object, and no other key of the
    document holds a secret, so the redactor's key rule applies to none of its own keys
    (core.redaction.Redactor.lines)."""
    fields = document.get("fields")
    return 2 + len(fields) if fields else 1


def department_document(change: DepartmentChange) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "action": change.action.value,
        "department": change.department_id,
        "reason": change.reason.value,
    }
    if change.action is not Action.DELETE:
        doc["name"] = change.name
        doc["parent"] = change.parent
    return doc


def health_document(health: Health, *, quarantined: bool) -> dict[str, Any]:
    """A failing or quarantined target's record, as plans and /status show it."""
    return {
        "failing_passes": health.failing_passes,
        "failing_since": health.since,
        "quarantined": quarantined,
        "quarantined_until": health.until,
        "quarantines": health.quarantines,
        "error": health.error,
    }


def document(plan: Plan) -> dict[str, Any]:
    """The plan document of DESIGN A5: JSON-compatible, free of secrets and sensitive values."""
    targets: dict[str, Any] = {}
    for name, t in plan.targets.items():
        entry: dict[str, Any] = {
            "kind": t.kind,
            "observed_digest": t.observed_digest,
            "changes": [change_document(c) for c in t.changes],
            "held": [change_document(c) for c in t.held],
            "invalid": [{"person": i.person_id, "error": i.error} for i in t.invalid],
            "foreign": list(t.foreign),
        }
        if t.held_reason:
            entry["held_reason"] = t.held_reason
        if t.error is not None:
            entry["error"] = t.error
        if t.suspended:
            entry["suspended"] = True
        if t.deferred:
            entry["deferred"] = [
                {
                    "person": a.person_id,
                    "failures": a.failures,
                    "next_try": a.next_try,
                    "error": a.error,
                }
                for a in t.deferred
            ]
        if not t.health.healthy:
            entry["health"] = health_document(t.health, quarantined=t.quarantined)
        if t.write_only:
            # Nothing was read: every change below comes from the ledger alone.
            entry["write_only"] = True
        if t.departments or t.held_departments:
            entry["departments"] = [department_document(c) for c in t.departments]
            entry["held_departments"] = [department_document(c) for c in t.held_departments]
        targets[name] = entry
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "created_at": plan.created_at,
        "desired_digest": plan.desired_digest,
        "targets": targets,
        "summary": plan.summary(),
    }


def settled_document(plan: TargetPlan) -> dict[str, Any] | None:
    """What a settled plan (as planning computed it: nothing to send, nothing to bookkeep)
    holds, as JSON; None for any other plan, which is never kept. No values, only ids."""
    if (
        plan.changes
        or plan.held
        or plan.forget
        or plan.refresh
        or plan.departments
        or plan.held_departments
        or plan.deferred
        or plan.error is not None
        or plan.write_only
        or plan.quarantined
        or plan.observed_digest is None
    ):
        return None
    return {
        "target": plan.target,
        "kind": plan.kind,
        "observed_digest": plan.observed_digest,
        "managed": plan.managed,
        "in_scope": plan.in_scope,
        "suspended": plan.suspended,
        "invalid": [[i.person_id, i.error] for i in plan.invalid],
        "foreign": list(plan.foreign),
    }


def settled_plan(document: Mapping[str, Any]) -> TargetPlan | None:
    """The settled plan a settled_document() describes; None when it does not describe one."""
    texts = ("target", "kind", "observed_digest")
    counts = ("managed", "in_scope")
    invalid, foreign = document.get("invalid"), document.get("foreign")
    if (
        not all(isinstance(document.get(key), str) for key in texts)
        or not all(type(document.get(key)) is int for key in counts)
        or type(document.get("suspended")) is not bool
        or not isinstance(invalid, list)
        or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(t, str) for t in i)
            for i in invalid
        )
        or not isinstance(foreign, list)
        or not all(isinstance(pid, str) for pid in foreign)
    ):
        return None
    return TargetPlan(
        target=document["target"],
        kind=document["kind"],
        observed_digest=document["observed_digest"],
        managed=document["managed"],
        in_scope=document["in_scope"],
        suspended=document["suspended"],
        invalid=tuple(Invalid(person_id=pid, error=error) for pid, error in invalid),
        foreign=tuple(foreign),
    )
