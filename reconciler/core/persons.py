"""Persons, departments and the desired snapshot: the vocabulary every layer speaks.

Pure: frozen dataclasses only. Sources validate into these types; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class PersonType(StrEnum):
    """The kind of person; each target kind maps it to its own code (or cannot)."""

    #: An employee: the default.
    STAFF = "staff"
    #: A visitor, usually with valid_from / valid_until.
    VISITOR = "visitor"
    #: Someone to be recognised and refused.
    BLACKLIST = "blacklist"
    #: A person given special treatment where a kind supports it.
    VIP = "vip"


#: Person fields that are never printed: plans, logs and errors only say that they change.
SENSITIVE_FIELDS: frozenset[str] = frozenset({"id_number", "pin"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Photo:
    """A face photo on disk; its bytes are read only when a target uploads it."""

    #: Absolute path, resolved against the desired-state file that names it.
    path: str
    #: "sha256:<hex>" of the file's bytes: what fingerprints and the ledger compare.
    digest: str
    #: image/jpeg or image/png, from the file's magic bytes.
    media_type: str
    #: Size in bytes, so adapters can enforce upload limits without reading the file.
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where a person was declared: for error messages that say where to look."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Person:
    """One person as declared in the desired state."""

    #: The stable key: user_id / identity_id / thirdId / userName on the targets.
    id: str
    name: str
    type: PersonType = PersonType.STAFF
    job_number: str = ""
    email: str = ""
    phone: str = ""
    department: str = ""
    groups: tuple[str, ...] = ()
    card: str = ""
    id_number: str = ""
    pin: str = ""
    admin: bool = False
    remark: str = ""
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    photo: Photo | None = None
    #: Free-form labels for select; never mutated after validation.
    labels: Mapping[str, str] = field(default_factory=dict)
    #: True: never deleted or replaced by reconciler.
    protected: bool = False
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Department:
    """A department; synced (parents first) where a kind has departments."""

    id: str
    name: str
    parent: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Desired:
    """The whole desired state: persons by id (sorted) and departments (parents first)."""

    persons: Mapping[str, Person]
    departments: tuple[Department, ...] = ()
    #: Keyed digest of the canonical persons and departments (see records.Hasher).
    digest: str = ""
