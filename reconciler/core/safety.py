"""Safety guards: hold a target's deletes when they look like a mistake rather than intent.

One mistaken commit must never empty a building's access list: deletes above `max_deletes`, or
any delete while no desired person is in scope, are held (creates and updates still go ahead)
until an operator releases them. Pure.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from reconciler.core.changes import Action, TargetPlan

#: Below this many managed persons a percentage would round to nothing useful.
MIN_DELETE_LIMIT = 5
DEFAULT_PERCENT = 10.0

_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteLimit:
    """max_deletes: a fixed count, or a percentage of the target's managed persons."""

    count: int | None = None
    percent: float = DEFAULT_PERCENT

    @classmethod
    def parse(cls, text: str | int) -> DeleteLimit:
        """ "25" or 25 is a count; "10%" a percentage. Raises ValueError on anything else."""
        if isinstance(text, int) and not isinstance(text, bool):
            if text < 0:
                raise ValueError("max_deletes must not be negative")
            return cls(count=text)
        match = _LIMIT.match(str(text))
        if match is None:
            raise ValueError(
                f"max_deletes must be a count like 10 or a percentage like 10%, not {text!r}"
            )
        number, percent = match.groups()
        if percent:
            value = float(number)
            if value > 100:
                raise ValueError("max_deletes percentage must be at most 100%")
            return cls(percent=value)
        if "." in number:
            raise ValueError("max_deletes count must be a whole number")
        return cls(count=int(number))

    def allowed(self, managed: int) -> int:
        if self.count is not None:
            return self.count
        return max(MIN_DELETE_LIMIT, math.floor(managed * self.percent / 100))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def check(
    plan: TargetPlan, limit: DeleteLimit, *, in_scope: int, allow_mass_delete: bool = False
) -> TargetPlan:
    """Move the plan's deletes to `held` when a guard trips; otherwise return it unchanged."""
    deletes = tuple(c for c in plan.changes if c.action is Action.DELETE)
    department_deletes = tuple(d for d in plan.departments if d.action is Action.DELETE)
    if (not deletes and not department_deletes) or allow_mass_delete:
        return plan
    if not deletes:
        if in_scope > 0:
            return plan
        # An emptied source must not tear down the departments either.
        reason = (
            f"no desired person is in scope for this target, so {len(department_deletes)} "
            "department deletes are held; release with --allow-mass-delete"
        )
    elif in_scope == 0:
        reason = (
            f"no desired person is in scope for this target, so all {len(deletes)} deletes "
            "are held (an empty source looks like a mistake); release with --allow-mass-delete"
        )
    elif len(deletes) > (allowed := limit.allowed(plan.managed)):
        reason = (
            f"{len(deletes)} deletes exceed max_deletes {limit} (at most {allowed} of "
            f"{plan.managed} managed persons); release with --allow-mass-delete"
        )
    else:
        return plan
    kept = tuple(c for c in plan.changes if c.action is not Action.DELETE)
    # Departments of held persons are still in use: their deletes wait with them.
    return dataclasses.replace(
        plan,
        changes=kept,
        held=deletes,
        held_reason=reason,
        departments=tuple(d for d in plan.departments if d.action is not Action.DELETE),
        held_departments=department_deletes,
    )
