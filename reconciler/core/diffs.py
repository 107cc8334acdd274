"""Field-level differences between a desired and an observed record: the only deepdiff user.

Called only for records whose cheap comparison already found a difference. Pure.
"""

from __future__ import annotations

from collections.abc import Collection

from deepdiff import DeepDiff

from reconciler.core.changes import FieldChange
from reconciler.core.records import Record


def field_changes(
    desired: Record, observed: Record, *, sensitive: Collection[str] = ()
) -> tuple[FieldChange, ...]:
    """The top-level fields that differ, in the desired record's field order."""
    diff = DeepDiff(dict(observed), dict(desired), view="tree", verbose_level=0)
    changed: set[str] = set()
    for items in diff.values():
        for item in items:
            path = item.path(output_format="list")
            if path:
                changed.add(str(path[0]))
    return tuple(
        FieldChange(
            field=name,
            old=None if name in sensitive else observed.get(name),
            new=None if name in sensitive else desired.get(name),
            sensitive=name in sensitive,
        )
        for name in desired
        if name in changed
    )
