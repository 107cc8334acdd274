"""Records, kinds and fingerprints: how a person looks to one target, and how we hash it.

A record is the canonical, JSON-compatible form of a person in a kind's own field names.
Fingerprints are keyed BLAKE2b digests: a plain hash of a four-digit pin would be the pin.
Pure: orjson serialises, hashlib hashes; no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from reconciler.core.persons import Department, Person

#: A canonical record: JSON-compatible values (str, int, bool, None, lists of str) by field name.
Record = Mapping[str, Any]

#: Shared key tuples and lists of compact records; bounded, as a cache only saves memory.
_SHARED_LIMIT = 4096
_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
_LISTS: dict[tuple[str, ...], list[str]] = {}
_MISSING = object()


class Compact(Mapping[str, Any]):
    """A read-only record kept small: one key tuple shared by every record of its shape and a
    tuple of values. A daemon keeps what each target reported, person by person and target by
    target (a million pairs on a campus), where a dict per record costs twice as much; adapters
    also share equal values across targets (`shared`).
    """

    __slots__ = ("_keys", "_values")

    def __init__(self, record: Record) -> None:
        keys = tuple(record)
        shared = _KEYS.get(keys)
        if shared is None:
            if len(_KEYS) >= _SHARED_LIMIT:
                _KEYS.clear()
            shared = _KEYS[keys] = keys
        self._keys = shared
        self._values = tuple(record.values())

    @classmethod
    def shaped(cls, keys: tuple[str, ...], values: tuple[Any, ...]) -> Compact:
        """A record from its values in the order of `keys` (a tuple the caller keeps and
        reuses for every record of this shape), without building a dict first."""
        if len(keys) != len(values):
            raise ValueError(f"{len(values)} values for {len(keys)} keys")
        made = cls.__new__(cls)
        made._keys = keys
        made._values = values
        return made

    @property
    def keys_tuple(self) -> tuple[str, ...]:
        """The keys in their order, the same object for every record of this shape."""
        return self._keys

    @property
    def values_tuple(self) -> tuple[Any, ...]:
        return self._values

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._keys, self._values, strict=True))

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[self._keys.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Compact):
            if other._keys is self._keys:
                return other._values == self._values
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return len(other) == len(self._keys) and all(
                other.get(key, _MISSING) == value
                for key, value in zip(self._keys, self._values, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.as_dict())


def shared(value: list[str]) -> list[str]:
    """An equal list already kept, if any (group lists repeat across persons and targets):
    for read-only records only."""
    try:
        key = tuple(value)
        found = _LISTS.get(key)
    except TypeError:  # unhashable items: kept as they are
        return value
    if found is None:
        if len(_LISTS) >= _SHARED_LIMIT:
            _LISTS.clear()
        found = _LISTS[key] = value
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Invalid:
    """A desired person a target cannot take as declared (e.g. a type the kind lacks)."""

    person_id: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KindSpec:
    """What a kind accepts, reports back, and cannot change: its capabilities for planning."""

    #: The kind's name in the desired-state file: nebula_pass, sophon_fog, ...
    name: str
    #: Every record field the kind receives, in display order.
    fields: tuple[str, ...]
    #: Fields observe() reports back; the others are write-only, compared against the ledger.
    observable: frozenset[str]
    #: Fields that cannot change once created: a change means replace (delete, then create).
    immutable: frozenset[str] = frozenset()
    #: Record fields never printed (their values are sensitive person data).
    sensitive: frozenset[str] = frozenset()
    #: False for push-only APIs: planned from the ledger alone.
    can_list: bool = True
    #: The record field naming the person's department, for kinds that sync departments
    #: (which are then planned too, parents first); None: the kind has no departments.
    department_field: str | None = None

    @property
    def departments(self) -> bool:
        return self.department_field is not None

    @property
    def write_only(self) -> frozenset[str]:
        return frozenset(self.fields) - self.observable


#: A kind's pure field mapping for one target: Person -> record, or why it cannot be sent.
Render = Callable[[Person], "Record | Invalid"]


def canonical(value: Any) -> bytes:
    """Deterministic bytes of a JSON-compatible value: sorted keys, no whitespace."""
    return orjson.dumps(
        value, default=_plain, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Compact):
        return value.as_dict()
    raise TypeError(f"{type(value).__name__} is not JSON-compatible")


@dataclass(frozen=True, slots=True)
class Hasher:
    """Keyed digests: stable for one installation, meaningless (and not reversible) elsewhere.

    The key lives in the state directory; losing it costs one re-push of write-only fields.
    """

    key: bytes = field(repr=False)
    #: The keyed state before any data: copying it is cheaper than keying anew per digest.
    _keyed: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keyed", hashlib.blake2b(key=self.key, digest_size=16))

    def digest(self, value: Any) -> str:
        return self.digest_bytes(canonical(value))

    def digest_bytes(self, data: bytes) -> str:
        state = self._keyed.copy()
        state.update(data)
        digest: str = state.hexdigest()
        return digest


def person_document(person: Person) -> dict[str, Any]:
    """A person's declared values as plain JSON: where it was declared and the photo's path
    are left out, so moving a person between files or renaming a photo changes nothing."""
    return {
        "id": person.id,
        "name": person.name,
        "type": person.type.value,
        "job_number": person.job_number,
        "email": person.email,
        "phone": person.phone,
        "department": person.department,
        "groups": list(person.groups),
        "card": person.card,
        "id_number": person.id_number,
        "pin": person.pin,
        "admin": person.admin,
        "remark": person.remark,
        "valid_from": person.valid_from.isoformat() if person.valid_from else None,
        "valid_until": person.valid_until.isoformat() if person.valid_until else None,
        "photo": person.photo.digest if person.photo else None,
        "labels": dict(person.labels),
        "protected": person.protected,
    }


def desired_digest(
    persons: Mapping[str, Person], departments: tuple[Department, ...], hasher: Hasher
) -> str:
    """Keyed digest of a whole desired state, independent of file layout and declaration order."""
    body = {
        "persons": [person_document(persons[pid]) for pid in sorted(persons)],
        "departments": [[d.id, d.name, d.parent] for d in departments],
    }
    return hasher.digest(body)
