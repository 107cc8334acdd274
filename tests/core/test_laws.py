"""The planner's laws, for any desired, observed and ledger hypothesis can think of.

Convergence: applying a plan yields the desired state. Idempotence: a converged state plans
nothing. Ownership: nothing outside the ledger is ever deleted or touched. Determinism: the same
inputs give the same plan and fingerprint, whatever order they came in.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core import changes, diffs, planning
from reconciler.core.changes import Action
from reconciler.core.persons import Desired, Person, PersonType, Photo
from reconciler.core.planning import LedgerEntry, Observed, ObservedPerson, TargetSpec
from reconciler.core.records import Invalid, KindSpec, Record
from tests.core.kinds import HASHER, SPEC, apply_in_memory, projection, render

IDS = st.sampled_from([f"{n:03d}" for n in range(12)])
TEXT = st.sampled_from(["", "a", "b", "张三"])


@st.composite
def people(draw: st.DrawFn) -> Person:
    digest = draw(st.sampled_from([None, "d1", "d2"]))
    return Person(
        id=draw(IDS),
        name=draw(st.sampled_from(["a", "b", "张三"])),
        type=draw(st.sampled_from(list(PersonType))),
        groups=tuple(draw(st.lists(st.sampled_from(["g1", "g2", "g3"]), max_size=2, unique=True))),
        pin=draw(TEXT),
        photo=None
        if digest is None
        else Photo(path="/x", digest=digest, media_type="image/jpeg", size=1),
        protected=draw(st.booleans()),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[Desired, Observed, dict[str, LedgerEntry]]:
    persons = {p.id: p for p in draw(st.lists(people(), max_size=8))}
    desired = Desired(persons=dict(sorted(persons.items())))
    observed: dict[str, ObservedPerson] = {}
    for pid in draw(st.lists(IDS, max_size=8, unique=True)):
        base = draw(people())
        record = render(
            Person(id=pid, name=base.name, type=base.type, groups=base.groups, pin=base.pin)
        )
        if isinstance(record, Invalid):
            record = render(Person(id=pid, name=base.name))
        assert not isinstance(record, Invalid)
        observed[pid] = ObservedPerson(record=projection(record))
    ledger: dict[str, LedgerEntry] = {}
    for pid in draw(st.lists(IDS, max_size=8, unique=True)):
        ledger[pid] = LedgerEntry(
            person_id=pid,
            fingerprint=draw(st.sampled_from(["", "stale"])),
            written=draw(st.sampled_from([{}, {"photo": "stale"}])),
        )
    return desired, Observed(persons=observed), ledger


@settings(max_examples=300, deadline=None)
@given(situations())
def test_applying_a_plan_converges_and_then_nothing_is_planned(
    situation: tuple[Desired, Observed, dict[str, LedgerEntry]],
) -> None:
    desired, observed, ledger = situation
    plan = planning.compute(desired, SPEC, observed, ledger, HASHER)
    after, after_ledger = apply_in_memory(plan, observed, ledger)

    again = planning.compute(desired, SPEC, after, after_ledger, HASHER)
    assert again.changes == ()

    stuck = set(plan.foreign) | {i.person_id for i in plan.invalid}
    for pid, person in desired.persons.items():
        if pid in stuck:
            continue
        record = render(person)
        assert not isinstance(record, Invalid)
        assert after.persons[pid].record == projection(record)
    for pid in set(after.persons) - set(desired.persons):
        assert pid in plan.foreign or pid not in after_ledger


@settings(max_examples=300, deadline=None)
@given(situations())
def test_nothing_outside_the_ledger_is_ever_deleted_or_touched(
    situation: tuple[Desired, Observed, dict[str, LedgerEntry]],
) -> None:
    desired, observed, ledger = situation
    plan = planning.compute(desired, SPEC, observed, ledger, HASHER)
    for change in plan.changes:
        if change.action is Action.DELETE:
            assert change.person_id in ledger
        if change.person_id in observed.persons:
            assert change.person_id in ledger, "a foreign person was touched"
    assert not set(plan.foreign) & {c.person_id for c in plan.changes}


@settings(max_examples=200, deadline=None)
@given(situations(), st.randoms(use_true_random=False))
def test_same_inputs_in_any_order_give_the_same_plan_and_fingerprint(
    situation: tuple[Desired, Observed, dict[str, LedgerEntry]], shuffler: random.Random
) -> None:
    desired, observed, ledger = situation

    def shuffled(mapping: dict[str, object]) -> dict[str, object]:
        items = list(mapping.items())
        shuffler.shuffle(items)
        return dict(items)

    first = planning.compute(desired, SPEC, observed, ledger, HASHER)
    second = planning.compute(
        Desired(persons=shuffled(dict(desired.persons))),  # type: ignore[arg-type]
        SPEC,
        Observed(persons=shuffled(dict(observed.persons))),  # type: ignore[arg-type]
        shuffled(dict(ledger)),  # type: ignore[arg-type]
        HASHER,
    )
    assert first == second
    assert changes.fingerprint("d", [first], HASHER) == changes.fingerprint("d", [second], HASHER)
    ids = [c.person_id for c in first.changes if c.action is not Action.DELETE]
    assert ids == sorted(ids)
    deletes = [c.person_id for c in first.changes if c.action is Action.DELETE]
    assert deletes == sorted(deletes)


@settings(max_examples=300, deadline=None)
@given(situations(), situations(), st.randoms(use_true_random=False))
def test_a_baseline_never_changes_the_plan(
    before: tuple[Desired, Observed, dict[str, LedgerEntry]],
    other: tuple[Desired, Observed, dict[str, LedgerEntry]],
    chooser: random.Random,
) -> None:
    """The last plan spares looks, never changes an outcome: whatever changed since (persons
    edited, added, removed or reloaded as equal copies; persons read again, or gone), under the
    same ledger the plan is the one computed from scratch."""
    desired, observed, ledger = before
    last = planning.compute(desired, SPEC, observed, ledger, HASHER)

    persons: dict[str, Person] = {}
    for pid in sorted(set(desired.persons) | set(other[0].persons)):
        mine, theirs = desired.persons.get(pid), other[0].persons.get(pid)
        pick = chooser.choice([mine, theirs, dataclasses.replace(mine) if mine else None])
        if pick is not None:
            persons[pid] = pick
    seen: dict[str, ObservedPerson] = {}
    for pid in sorted(set(observed.persons) | set(other[1].persons)):
        mine_seen, theirs_seen = observed.persons.get(pid), other[1].persons.get(pid)
        copy = ObservedPerson(record=dict(mine_seen.record)) if mine_seen else None
        pick_seen = chooser.choice([mine_seen, theirs_seen, copy])
        if pick_seen is not None:
            seen[pid] = pick_seen
    now_desired = Desired(persons=persons)
    now_observed = Observed(persons=seen)

    baseline = planning.Baseline(desired=desired, observed=observed, plan=last)
    spared = planning.compute(now_desired, SPEC, now_observed, ledger, HASHER, baseline=baseline)
    assert spared == planning.compute(now_desired, SPEC, now_observed, ledger, HASHER)
    # The very same inputs: the very same plan.
    assert planning.compute(desired, SPEC, observed, ledger, HASHER, baseline=baseline) == last


TYPED = KindSpec(
    name="typed",
    fields=("name", "admin", "level", "codes"),
    observable=frozenset({"name", "admin", "level", "codes"}),
)
VALUES = st.one_of(
    st.sampled_from(["", "a", "1"]),
    st.sampled_from([0, 1, True, False, None]),
    st.lists(st.sampled_from(["1", 1, True]), max_size=2),
    st.fixed_dictionaries({"a": st.sampled_from([1, True, "1"])}),
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {"name": VALUES, "admin": VALUES, "level": VALUES, "codes": VALUES},
        optional={"extra": VALUES},
    ),
    st.sets(st.sampled_from(["name", "admin", "level", "codes"]), max_size=1),
)
def test_the_fields_of_an_update_are_the_ones_deepdiff_finds_in_the_whole_record(
    seen: dict[str, Any], missing: set[str]
) -> None:
    """Only some fields go to DeepDiff; the fields found are those of a whole-record diff,
    types included (1 and True, "1" and 1, in lists and dicts too). Records equal as dicts are
    in sync, as they always were."""

    def typed(person: Person) -> Record:
        return {"name": person.name, "admin": person.admin, "level": 1, "codes": {"a": 1}}

    for name in missing:
        del seen[name]
    spec = TargetSpec(name="t", kind=TYPED, render=typed)
    person = Person(id="1", name="a", admin=True)
    record = typed(person)
    ledger = {"1": LedgerEntry(person_id="1", fingerprint=HASHER.digest(record))}
    observed = Observed(persons={"1": ObservedPerson(record=seen)})
    plan = planning.compute(Desired(persons={"1": person}), spec, observed, ledger, HASHER)
    if record == seen:
        assert plan.changes == ()
    else:
        assert [c.fields for c in plan.changes] == [diffs.field_changes(record, seen)]


@settings(max_examples=300, deadline=None)
@given(situations())
def test_a_plan_is_kept_settled_only_when_it_does_nothing_and_reads_back_the_same(
    situation: tuple[Desired, Observed, dict[str, LedgerEntry]],
) -> None:
    desired, observed, ledger = situation
    for current in (
        observed,
        apply_in_memory(
            planning.compute(desired, SPEC, observed, ledger, HASHER), observed, ledger
        )[0],
    ):
        plan = planning.compute(desired, SPEC, current, ledger, HASHER)
        document = changes.settled_document(plan)
        if plan.changes or plan.refresh or plan.forget:
            assert document is None
            continue
        assert document is not None
        # Through JSON, as the store keeps it: the very plan again, fingerprint and all.
        again = changes.settled_plan(orjson.loads(orjson.dumps(document)))
        assert again == plan
        fingerprints = [changes.fingerprint(desired.digest, [p], HASHER) for p in (plan, again)]
        assert fingerprints[0] == fingerprints[1]


def test_a_mangled_settled_document_reads_back_as_nothing() -> None:
    plan = planning.compute(Desired(persons={}), SPEC, Observed(persons={}), {}, HASHER)
    document = changes.settled_document(plan)
    assert document is not None
    assert changes.settled_plan(document) == plan
    for key, value in [
        ("managed", "1"),
        ("suspended", 0),
        ("invalid", [["1"]]),
        ("foreign", [1]),
        ("observed_digest", None),
    ]:
        assert changes.settled_plan({**document, key: value}) is None
    assert changes.settled_plan({}) is None
