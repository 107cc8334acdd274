"""Plan and apply one adapter like the executor does, with both ledgers kept in memory: the
per-kind adapter tests drive their target through this, without a store."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

from reconciler.core import planning
from reconciler.core.changes import Action, DepartmentChange, TargetPlan
from reconciler.core.persons import Department, Desired, Person
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.core.records import Hasher
from reconciler.targets.base import DepartmentOutcome, DepartmentTarget, Outcome, Target

HASHER = Hasher(b"t" * 32)

_Made = TypeVar("_Made", bound=Target)


def desired(*persons: Person, departments: tuple[Department, ...] = ()) -> Desired:
    """A desired state of these persons, in id order as the loader makes it."""
    return Desired(
        persons={p.id: p for p in sorted(persons, key=lambda p: p.id)}, departments=departments
    )


@contextlib.asynccontextmanager
async def made_targets(
    build: Callable[[dict[str, Any]], _Made], **defaults: Any
) -> AsyncIterator[Callable[..., _Made]]:
    """A factory of targets from settings (these defaults, then a test's overrides); every
    target it made is closed at the end."""
    made: list[_Made] = []

    def make(**overrides: Any) -> _Made:
        target = build({**defaults, **overrides})
        made.append(target)
        return target

    try:
        yield make
    finally:
        for target in made:
            await target.aclose()


class Sync:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.ledger: dict[str, LedgerEntry] = {}
        self.departments: dict[str, DepartmentEntry] = {}
        self.department_outcomes: list[DepartmentOutcome] = []

    async def plan(self, wanted: Desired, *, now: float | None = None) -> TargetPlan:
        spec = self.target.spec
        observed = await self.target.observe() if spec.kind.can_list else None
        return planning.compute(
            wanted,
            spec,
            observed,
            self.ledger,
            HASHER,
            departments=self.departments,
            now=time.time() if now is None else now,
        )

    async def apply(self, plan: TargetPlan, target: Target | None = None) -> list[Outcome]:
        """Apply (through `target`, another instance of the same target, when given); the
        outcomes come back sorted, deletes last, since concurrency completes them in any order."""
        target = target or self.target
        await self._departments(
            target, [d for d in plan.departments if d.action is not Action.DELETE]
        )
        outcomes: list[Outcome] = []
        for change in plan.changes:
            if change.action is Action.CREATE:
                self.ledger.setdefault(change.person_id, LedgerEntry(person_id=change.person_id))
        async for batch in target.apply(plan.changes):
            for outcome in batch:
                outcomes.append(outcome)
                change = outcome.change
                if not outcome.ok:
                    continue
                if change.action is Action.DELETE:
                    self.ledger.pop(change.person_id, None)
                else:
                    self.ledger[change.person_id] = LedgerEntry(
                        person_id=change.person_id,
                        remote_id=outcome.remote_id or change.remote_id,
                        fingerprint=change.fingerprint,
                        written=change.written,
                        refs=outcome.refs if outcome.refs is not None else change.refs,
                        applied_at=time.time(),
                    )
        await self._departments(target, [d for d in plan.departments if d.action is Action.DELETE])
        return sorted(
            outcomes, key=lambda o: (o.change.action is Action.DELETE, o.change.person_id)
        )

    async def converge(self, wanted: Desired) -> list[Outcome]:
        return await self.apply(await self.plan(wanted))

    async def _departments(self, target: Target, changes: list[DepartmentChange]) -> None:
        if not changes:
            return
        outcomes = await cast(DepartmentTarget, target).apply_departments(changes)
        assert [o.change for o in outcomes] == changes
        self.department_outcomes.extend(outcomes)
        for outcome in outcomes:
            change = outcome.change
            if not outcome.ok:
                continue
            if change.action is Action.DELETE:
                self.departments.pop(change.department_id, None)
            else:
                self.departments[change.department_id] = DepartmentEntry(
                    department_id=change.department_id,
                    parent=change.parent,
                    fingerprint=change.fingerprint,
                    applied_at=time.time(),
                )
