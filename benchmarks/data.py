"""Generated desired states for the benchmarks: the same persons as YAML (for the CLI) and in
memory (for the in-process measurements), deterministic for a size and a version.

Version 0 is the base; version 1 changes the name of every hundredth person (1 % of persons).
Writes files only in `write_yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.app import Validated, target_settings
from reconciler.core.persons import Department, Desired, Origin, Person, PersonType
from reconciler.core.records import Hasher, desired_digest
from reconciler.sources.yamlfile import Loaded, RawTarget

#: Persons whose index modulo this is CHANGED_AT are changed in version 1 (1 %).
CHANGE_EVERY = 100
CHANGED_AT = 7
DEPARTMENTS = (
    Department(id="HQ", name="Headquarters"),
    *(Department(id=f"D{n:02d}", name=f"Department {n}", parent="HQ") for n in range(1, 21)),
)
_VISIT_START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def person_id(index: int) -> str:
    return f"{100000 + index}"


def changed(index: int) -> bool:
    return index % CHANGE_EVERY == CHANGED_AT


def changed_count(size: int) -> int:
    return sum(1 for index in range(size) if changed(index))


def person_fields(index: int, version: int) -> dict[str, Any]:
    """One person as the YAML file declares it (strings quoted where YAML needs it)."""
    name = f"员工 {index}"
    if version and changed(index):
        name += f" v{version}"
    fields: dict[str, Any] = {
        "id": person_id(index),
        "name": name,
        "job_number": f"J{index:07d}",
        "email": f"p{index}@example.com",
        "phone": f"138{index:08d}",
        "department": f"D{index % 20 + 1:02d}",
        "groups": ["hq"] if index % 3 else ["hq", "lab"],
        "card": f"{index:010d}",
        "id_number": f"1101011990{index:08d}",
        "pin": f"{index % 10000:04d}",
    }
    if index % 50 == 3:
        fields["type"] = "visitor"
        fields["valid_from"] = _VISIT_START + timedelta(days=index % 30)
        fields["valid_until"] = _VISIT_START + timedelta(days=index % 30 + 1)
    return fields


def persons(size: int, version: int, source: str = "desired.yaml") -> dict[str, Person]:
    """The persons of `write_yaml(size, version)`, as the loader builds them (id order)."""
    built: dict[str, Person] = {}
    for index in range(size):
        fields = person_fields(index, version)
        built[fields["id"]] = Person(
            id=fields["id"],
            name=fields["name"],
            type=PersonType(fields.get("type", "staff")),
            job_number=fields["job_number"],
            email=fields["email"],
            phone=fields["phone"],
            department=fields["department"],
            groups=tuple(fields["groups"]),
            card=fields["card"],
            id_number=fields["id_number"],
            pin=fields["pin"],
            valid_from=fields.get("valid_from"),
            valid_until=fields.get("valid_until"),
            origin=Origin(source=source),
        )
    return dict(sorted(built.items()))


def desired(size: int, version: int, hasher: Hasher) -> Desired:
    found = persons(size, version)
    return Desired(
        persons=found,
        departments=DEPARTMENTS,
        digest=desired_digest(found, DEPARTMENTS, hasher),
    )


def validated(
    size: int, version: int, targets: Mapping[str, Mapping[str, Any]], hasher: Hasher
) -> Validated:
    """What `app.validate` returns for the YAML file, built without parsing it."""
    raw = {
        name: RawTarget(
            name=name,
            kind=str(values["kind"]),
            settings={k: v for k, v in values.items() if k != "kind"},
            source="desired.yaml",
            line=0,
        )
        for name, values in targets.items()
    }
    loaded = Loaded(desired=desired(size, version, hasher), targets=raw, files=("desired.yaml",))
    return Validated(
        loaded=loaded, targets={name: target_settings(entry) for name, entry in raw.items()}
    )


def _scalar(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def yaml_text(size: int, version: int, targets: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["version: 1", "targets:"]
    for name, values in targets.items():
        lines.append(f"  {name}:")
        lines += [f"    {key}: {_value(value)}" for key, value in values.items()]
    lines.append("departments:")
    for department in DEPARTMENTS:
        parent = f", parent: {department.parent}" if department.parent else ""
        lines.append(f"  - {{id: {department.id}, name: {department.name}{parent}}}")
    lines.append("persons:")
    for index in range(size):
        fields = person_fields(index, version)
        first = True
        for key, value in fields.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {_value(value)}")
            first = False
    return "\n".join(lines) + "\n"


def write_yaml(
    path: Path, size: int, version: int, targets: Mapping[str, Mapping[str, Any]]
) -> None:
    path.write_text(yaml_text(size, version, targets), encoding="utf-8")
