"""Compact records: what a daemon keeps of every target's listing behaves as the dict it was."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.planning import Observed, ObservedPerson, observed_digest
from reconciler.core.records import Compact, Hasher, canonical, shared

HASHER = Hasher(b"r" * 32)
RECORD = {"name": "张三", "type": 1, "groups": ["hq", "lab"], "valid": None, "admin": False}


def test_a_compact_record_reads_and_compares_as_its_dict() -> None:
    compact = Compact(RECORD)
    assert compact == RECORD
    assert RECORD == compact  # noqa: SIM300 (the dict on the left: its __eq__ defers to ours)
    assert compact == Compact(dict(reversed(list(RECORD.items()))))
    assert compact != {**RECORD, "type": 2}
    assert compact != {**RECORD, "extra": 1}
    assert compact != {k: v for k, v in RECORD.items() if k != "admin"}
    assert (compact["name"], compact.get("missing"), "type" in compact) == ("张三", None, True)
    with pytest.raises(KeyError):
        compact["missing"]
    assert list(compact) == list(RECORD)
    assert dict(compact) == compact.as_dict() == RECORD
    assert repr(compact) == repr(RECORD)
    assert canonical(compact) == canonical(RECORD)
    with pytest.raises(TypeError):
        hash(compact)


def test_records_of_one_shape_share_their_keys() -> None:
    one, other = Compact(RECORD), Compact({**RECORD, "name": "李四"})
    assert one.keys_tuple is other.keys_tuple


def test_an_observed_person_keeps_its_record_compact_and_equal() -> None:
    person = ObservedPerson(record=dict(RECORD), remote_id="7")
    assert isinstance(person.record, Compact)
    assert person == ObservedPerson(record=RECORD, remote_id="7")
    assert person != ObservedPerson(record={**RECORD, "name": "x"}, remote_id="7")
    # The observed digest is the one of the plain records: saved plans stay comparable.
    observed = Observed(persons={"1": person})
    assert observed_digest(observed, HASHER) == HASHER.digest([["1", "7", RECORD]])


def test_equal_lists_are_shared_and_others_are_not() -> None:
    first = shared(["hq", "lab"])
    assert shared(["hq", "lab"]) is first
    assert shared(["lab"]) is not first
    unhashable: list[Any] = [["nested"]]
    assert shared(unhashable) is unhashable


def test_a_record_built_from_its_values_is_the_same_record() -> None:
    keys = tuple(RECORD)
    built = Compact.shaped(keys, tuple(RECORD.values()))
    assert built == Compact(RECORD) == RECORD
    assert built.keys_tuple is keys
    with pytest.raises(ValueError, match="2 values for 5 keys"):
        Compact.shaped(keys, ("a", "b"))
