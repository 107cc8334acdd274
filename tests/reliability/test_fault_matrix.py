"""Every kind x every fault: passes through the real product path (open_app, cycle.plan,
cycle.apply) with the fault on, then off until a pass plans nothing; then the target must hold
exactly the desired state, once each, and the ledger exactly the desired ids, none pending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reconciler import cycle
from reconciler.app import App, open_app
from reconciler.core.records import Invalid
from reconciler.settings import Settings
from reconciler.simulators.base import Faults, Simulator, serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.siteserver import SiteServerSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.simulators.sophon_sight import SophonSightSimulator
from reconciler.store.sqlite import SqliteStore
from reconciler.targets.http import Backoff
from tests.reliability import (
    FOG,
    KINDS,
    NEBULA,
    SECRETS,
    SIGHT,
    Kind,
    Spec,
    assert_holds_exactly,
    closed_port,
    target_settings,
    write_desired,
)

#: Quick, but the same shape as production: a few attempts with exponential back-off.
FAST = Backoff(attempts=4, initial=0.01, maximum=0.1, budget=5.0)
#: Passes with the fault on; then passes without it, up to MAX_PASSES in all.
FAULTY_PASSES = 2
MAX_PASSES = 8
SEED = 20240611


@dataclass
class CountingFaults(Faults):
    """Faults that count how often a random one fired (one knob is on per cell)."""

    injected: int = field(default=0, init=False)

    def roll(self, rate: float) -> bool:
        fired = super().roll(rate)
        self.injected += fired
        return fired


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    name: str
    #: Faults knobs set before the first faulty pass observes.
    knobs: Mapping[str, Any] = field(default_factory=dict)
    #: Knobs set when the first pass starts to apply, after it observed the target fine.
    apply_knobs: Mapping[str, Any] = field(default_factory=dict)
    #: nebula_pass: the device's user capacity during the faulty passes (per-item errors).
    capacity: int | None = None
    #: The target's request timeout (seconds).
    timeout: float = 5.0


FAULTS: tuple[Fault, ...] = (
    Fault(name="5xx", knobs={"error_rate": 0.3}),
    # More 503s in a row than the request tier retries: changes fail, the next pass redoes them.
    Fault(name="5xx-burst", apply_knobs={"fail_next": [503] * 20}),
    Fault(name="429", knobs={"throttle_rate": 0.3, "retry_after": 0.05}),
    Fault(name="timeout", knobs={"timeout_rate": 0.15, "hang_seconds": 0.6}, timeout=0.3),
    # The request is handled, then its connection dropped: the answer to a write is lost.
    Fault(name="reset", knobs={"reset_rate": 0.3}),
    Fault(name="malformed", knobs={"malformed_rate": 0.3}),
    # Every write of the first pass done, but its answer lost: the client cannot know.
    Fault(name="reset-writes", apply_knobs={"reset_rate": 1.0}),
    # Every write of the first pass answered 200 with a body that is not JSON (and not done):
    # nothing unconfirmed may be recorded as done.
    Fault(name="malformed-writes", apply_knobs={"malformed_rate": 1.0}),
)
#: Per-item errors of a batch: the terminal is full, so part of a batch upsert is refused.
BATCH_ERRORS = Fault(name="batch-errors", capacity=28)
CELLS = [(kind, fault) for kind in KINDS for fault in FAULTS] + [(NEBULA, BATCH_ERRORS)]


def initial_persons() -> list[Spec]:
    return [
        Spec(
            id=f"r{n:03d}",
            name=f"测试 {n}",
            email=f"r{n:03d}@example.com",
            department="HQ" if n % 2 else "D01",
            photo=f"r{n:03d}.jpg" if n % 3 == 0 else None,
        )
        for n in range(1, 31)
    ]


def final_persons() -> list[Spec]:
    """Creates, updates (names, an email, photos changed, added, removed) and deletes."""
    final = []
    for spec in initial_persons():
        n = int(spec.id[1:])
        if n > 26:
            continue  # r027..r030 are deleted
        if n <= 3:
            spec = Spec(**{**_fields(spec), "name": f"Renamed {n}"})
        elif n == 6:
            spec = Spec(**{**_fields(spec), "photo": "r006-new.jpg"})
        elif n == 7:
            spec = Spec(**{**_fields(spec), "photo": "r007.jpg"})
        elif n == 9:
            spec = Spec(**{**_fields(spec), "photo": None})
        elif n == 10:
            spec = Spec(**{**_fields(spec), "email": "r010.new@example.com"})
        final.append(spec)
    for n in range(31, 36):
        photo = f"r{n:03d}.jpg" if n % 2 else None
        final.append(
            Spec(
                id=f"r{n:03d}",
                name=f"New {n}",
                email=f"r{n:03d}@example.com",
                department="D02",
                photo=photo,
            )
        )
    return final


def _fields(spec: Spec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "name": spec.name,
        "email": spec.email,
        "department": spec.department,
        "photo": spec.photo,
    }


@dataclass
class Site:
    """A state directory and a desired.yaml, opened the way the CLI and the daemon open them."""

    root: Path

    def write(self, targets: Mapping[str, Mapping[str, Any]], persons: Sequence[Spec]) -> None:
        write_desired(self.root, targets, persons)

    def app(self) -> contextlib.AbstractAsyncContextManager[App]:
        settings = Settings(
            desired=self.root / "desired.yaml",
            state_dir=self.root / "state",
            store_url=f"sqlite:///{self.root / 'state' / 'reconciler.sqlite3'}",
        )
        return open_app(settings, env=dict(SECRETS), backoff=FAST)


@dataclass
class Passes:
    """What the passes of one cell did."""

    #: The pass that planned no change (1-based, counting the faulty ones).
    converged_at: int = 0
    #: Changes that failed, in all passes.
    failed: int = 0
    #: Passes in which a target could not be observed.
    unobservable: int = 0
    errors: list[str] = field(default_factory=list)


async def converge(
    app: App, simulator: Simulator, fault: Fault, *, faulty_passes: int = FAULTY_PASSES
) -> Passes:
    """Passes with the fault on for the first `faulty_passes`, then off until a pass plans no
    change. Each pass plans and applies on one App, as the daemon does, but plans as
    `reconciler apply` does: the daemon's change-tier back-off would hold a failed change for
    a minute."""
    done = Passes()
    faults = simulator.faults
    for number in range(1, MAX_PASSES + 1):
        faulty = number <= faulty_passes
        if number == 1:
            turn_on(faults, fault.knobs)
            if fault.capacity is not None:
                assert isinstance(simulator, NebulaPassSimulator)
                simulator.max_users = fault.capacity
        if number == faulty_passes + 1:
            await switch_off(simulator, fault)
        plan = await cycle.plan(app)
        converged = not faulty and not plan.has_changes and not plan.has_errors
        if plan.has_errors:
            done.unobservable += 1
        if number == 1:
            turn_on(faults, fault.apply_knobs)
        # Applied even when it plans no change, as the daemon does: ledger upkeep is applying.
        report = await cycle.apply(app, plan)
        done.failed += report.failed
        done.errors += [f.error for t in report.targets for f in t.failures]
        if converged:
            done.converged_at = number
            return done
    pytest.fail(f"not converged after {MAX_PASSES} passes; last failures: {done.errors[-5:]}")


def desired_fingerprints(app: App, name: str) -> dict[str, str]:
    """Person -> the fingerprint planning computes for its desired record on this target."""
    spec = app.targets[name].spec
    found = {}
    for pid, person in app.desired.loaded.desired.persons.items():
        record = spec.render(person)
        assert not isinstance(record, Invalid), record
        found[pid] = app.hasher.digest(record)
    return found


def turn_on(faults: Faults, knobs: Mapping[str, Any]) -> None:
    for knob, value in knobs.items():
        # A list (fail_next) is consumed by the simulator: never hand it the shared one.
        setattr(faults, knob, list(value) if isinstance(value, list) else value)


async def switch_off(simulator: Simulator, fault: Fault) -> None:
    faults = simulator.faults
    for knob in ("error_rate", "throttle_rate", "timeout_rate", "malformed_rate", "reset_rate"):
        setattr(faults, knob, 0.0)
    faults.fail_next.clear()
    if isinstance(simulator, NebulaPassSimulator):
        simulator.max_users = 100_000
    if fault.knobs.get("timeout_rate"):
        # Requests the client gave up on are still held by the server; let them land now,
        # so that the passes below see every late write.
        await asyncio.sleep(float(fault.knobs["hang_seconds"]))


@pytest.mark.parametrize(
    ("kind", "fault"), CELLS, ids=[f"{kind.name}-{fault.name}" for kind, fault in CELLS]
)
async def test_every_fault_converges_to_exactly_the_desired_state(
    kind: Kind, fault: Fault, tmp_path: Path, record_property: Any
) -> None:
    faults = CountingFaults(seed=SEED)
    simulator = kind.simulator(faults)
    site = Site(tmp_path)
    async with await serve(simulator) as served:
        targets = {"door": target_settings(kind, served.url, timeout=fault.timeout)}
        # A target that already holds persons reconciler owns: the faulty passes then create,
        # update, replace photos and delete.
        site.write(targets, initial_persons())
        async with site.app() as app:
            await converge(app, simulator, Fault(name="none"), faulty_passes=0)
        assert_holds_exactly(simulator, initial_persons())
        simulator.log.clear()

        site.write(targets, final_persons())
        async with site.app() as app:
            passes = await converge(app, simulator, fault)
            ledger = await app.store.ledger("door")
            departments = await app.store.departments("door")
            attempts = await app.store.attempts("door")
            fingerprints = desired_fingerprints(app, "door")
        writes = simulator.log.writes()
        # What the passes did, for the record (also when an assertion below fails).
        record_property("converged_at", passes.converged_at)
        record_property("writes", writes)
        record_property("failed_changes", passes.failed)
        record_property("unobservable_passes", passes.unobservable)
        log = simulator.log
        record_property("injected", faults.injected or sum(e.status == 503 for e in log.entries))
        record_property("resets", log.resets())
        record_property("write_resets", sum(1 for e in log.entries if e.reset and e.write))
        record_property("errors", "; ".join(sorted(set(passes.errors)))[:600])

        wanted = final_persons()
        assert_holds_exactly(simulator, wanted)
        assert sorted(ledger) == sorted(spec.id for spec in wanted)
        assert [pid for pid, entry in ledger.items() if entry.pending] == []
        if isinstance(simulator, SophonSightSimulator):
            assert sorted(departments) == ["D01", "D02", "HQ"]
        if isinstance(simulator, SiteServerSimulator):
            # The CMS's own ids, as the listing shows them.
            ids = {pid: simulator.user_named(pid) for pid in ledger}
            assert {pid: e.remote_id for pid, e in ledger.items()} == {
                pid: str(user["id"]) if user else None for pid, user in ids.items()
            }
        # The ledger records what the target now holds: the desired records' fingerprints.
        stale = sorted(pid for pid, e in ledger.items() if e.fingerprint != fingerprints[pid])
        assert stale == [], f"ledger fingerprints of an older record: {stale}"
        # Every change that failed on the way has succeeded since: no back-off is left behind.
        assert attempts == {}

    # The fault did happen.
    if fault.capacity is not None:
        assert any("capacity" in error for error in passes.errors), passes.errors
    elif fault.apply_knobs:
        assert passes.failed > 0
    else:
        assert faults.injected > 0


async def test_an_unreachable_target_does_not_hold_back_a_working_one(tmp_path: Path) -> None:
    """A face box on a closed port and a platform on another: the terminal converges in the
    passes it would take alone (one to apply, the next plans nothing for it)."""
    terminal = NEBULA.simulator(Faults(seed=SEED))
    site = Site(tmp_path)
    async with await serve(terminal) as served:
        dead = f"http://127.0.0.1:{closed_port()}"
        targets = {
            "terminal": target_settings(NEBULA, served.url),
            "box": target_settings(FOG, dead, timeout=1.0),
            "platform": target_settings(SIGHT, dead, timeout=1.0),
        }
        site.write(targets, initial_persons())
        async with site.app() as app:
            first = await cycle.plan(app)
            assert first.targets["box"].error is not None
            assert first.targets["terminal"].error is None
            report = await cycle.apply(app, first)
            by_target = {t.target: t for t in report.targets}
            assert by_target["terminal"].ok
            assert by_target["terminal"].applied == 30
            assert by_target["box"].skipped is not None
            # Push-only, so planned without a read: every department and person fails.
            failed = {f.person_id for f in by_target["platform"].failures}
            assert failed == {s.id for s in initial_persons()} | {
                f"department:{d}" for d in ("HQ", "D01", "D02")
            }
            assert_holds_exactly(terminal, initial_persons())

            second = await cycle.plan(app)
            assert second.targets["terminal"].changes == ()
            assert second.targets["box"].error is not None
            again = await cycle.apply(app, second)
            assert {t.target: t.applied for t in again.targets}["terminal"] == 0
            ledger = await app.store.ledger("terminal")
            box_ledger = await app.store.ledger("box")

    assert sorted(ledger) == sorted(spec.id for spec in initial_persons())
    assert [pid for pid, entry in ledger.items() if entry.pending] == []
    assert box_ledger == {}


async def test_a_reset_drops_the_answer_of_a_write_that_took_effect() -> None:
    """The `reset_rate` knob: the client sees the connection drop, the write is done anyway,
    and the log says the answer never left."""
    box = SophonFogSimulator(faults=Faults(reset_rate=1.0, seed=SEED))
    body = {"identity_id": "r001", "group_name": "default_group", "need_bring_pic": False}
    body["info"] = {"name": "测试 1"}
    async with await serve(box) as served, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.post(f"{served.url}/SophonFogSys/api/users", json=body) as answer:
                await answer.read()
        box.faults.reset_rate = 0.0
        async with session.get(f"{served.url}/SophonFogSys/api/groups") as answer:
            assert answer.status == 200
    assert box.person_names() == {"r001": "测试 1"}
    assert [(e.method, e.status, e.write, e.reset) for e in box.log.entries] == [
        ("POST", 200, True, True),
        ("GET", 200, False, False),
    ]
    assert box.log.resets() == 1


async def test_targets_writing_ahead_at_once_never_break_the_store(tmp_path: Path) -> None:
    """cycle.apply applies every target at once, and each executor first marks its creates
    pending: the same statement on one store from several targets, round after round."""
    store = await SqliteStore.open(tmp_path / "state" / "reconciler.sqlite3")
    failures: list[BaseException] = []
    try:
        for round_ in range(1000):
            marked = await asyncio.gather(
                *(
                    store.mark_pending(f"target-{round_}-{n}", [f"p{i:03d}" for i in range(30)])
                    for n in range(6)
                ),
                return_exceptions=True,
            )
            failures += [outcome for outcome in marked if isinstance(outcome, BaseException)]
        managed = await store.managed()
    finally:
        await store.aclose()
    assert [str(failure) for failure in failures[:3]] == [], f"{len(failures)} of 6000 failed"
    assert len(managed) == 6000
