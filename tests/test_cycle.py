"""One pass (cycle.plan) against a simulator: a pass whose inputs did not change reuses the last
plan without reading the ledger, and any change of the desired state, the device or the ledger
plans again. A new process recalls the last settled plan from the store on the same terms."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from reconciler import app as composition
from reconciler import cycle
from reconciler.app import App
from reconciler.core import planning
from reconciler.core.changes import Action, Change, Plan, Reason, TargetPlan
from reconciler.settings import Settings
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.store.sqlite import SqliteStore
from reconciler.targets.nebula_pass import NebulaPass
from tests import lobby

PASSWORD = lobby.PASSWORD


def write(path: Path, url: str, names: dict[str, str]) -> None:
    path.write_text(lobby.desired(url, lobby.persons(names)), encoding="utf-8")


@contextlib.asynccontextmanager
async def process(tmp_path: Path) -> AsyncIterator[App]:
    """The App a new `reconciler plan` builds: new targets, nothing in memory."""
    settings = Settings(state_dir=tmp_path / "state", desired=tmp_path / "desired.yaml")
    async with composition.open_app(settings, env={"LOBBY_PASSWORD": PASSWORD}) as app:
        yield app


@pytest.fixture
async def opened(tmp_path: Path, nebula_url: str) -> AsyncIterator[App]:
    write(tmp_path / "desired.yaml", nebula_url, {"1": "one", "2": "two", "3": "three"})
    async with process(tmp_path) as app:
        yield app


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The targets planning.compute() ran for, in order."""
    calls: list[str] = []
    real: Callable[..., Any] = planning.compute

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(planning, "compute", counting)
    return calls


async def converge(app: App) -> None:
    report = await cycle.apply(app, await cycle.plan(app, backoff=True))
    assert report.result == "ok"


async def test_a_pass_with_nothing_changed_reuses_the_last_plan(
    opened: App, computed: list[str], nebula: NebulaPassSimulator
) -> None:
    await converge(opened)
    first = await cycle.plan(opened, backoff=True)  # our writes moved the device and ledger
    assert computed == ["lobby", "lobby"]
    assert not first.has_changes

    again = await cycle.plan(opened, backoff=True)
    assert computed == ["lobby", "lobby"]
    assert again.targets == first.targets
    assert nebula.log.writes() == 1  # the first sync, one batch; nothing since


async def test_a_device_edit_plans_again(
    opened: App, computed: list[str], nebula: NebulaPassSimulator
) -> None:
    await converge(opened)
    await cycle.plan(opened, backoff=True)
    nebula.edit_user("2", name="edited at the device")
    plan = await cycle.plan(opened, backoff=True)
    assert len(computed) == 3
    assert [(c.action, c.person_id, c.reason) for c in plan.targets["lobby"].changes] == [
        (Action.UPDATE, "2", Reason.DRIFT)
    ]


async def test_a_ledger_write_by_another_process_plans_again(
    opened: App, computed: list[str]
) -> None:
    await converge(opened)
    await cycle.plan(opened, backoff=True)
    assert isinstance(opened.store, SqliteStore)
    other = await SqliteStore.open(opened.store.path)
    try:
        await other.forget("lobby", ["3"])  # say, another reconciler took it off the ledger
    finally:
        await other.aclose()
    plan = await cycle.plan(opened, backoff=True)
    assert len(computed) == 3
    assert plan.targets["lobby"].foreign == ("3",)


async def test_a_new_desired_state_plans_again(
    opened: App, computed: list[str], tmp_path: Path, nebula_url: str
) -> None:
    await converge(opened)
    await cycle.plan(opened, backoff=True)
    path = tmp_path / "desired.yaml"
    write(path, nebula_url, {"1": "one", "2": "two", "3": "three, renamed"})
    await opened.replace_desired(
        composition.validate(path, env={"LOBBY_PASSWORD": PASSWORD}, hasher=opened.hasher)
    )
    plan = await cycle.plan(opened, backoff=True)
    assert len(computed) == 3
    assert [(c.action, c.person_id) for c in plan.targets["lobby"].changes] == [
        (Action.UPDATE, "3")
    ]
    # --only is an input too.
    only = await cycle.plan(opened, only=["1"], backoff=True)
    assert len(computed) == 4
    assert only.targets["lobby"].changes == ()


# -- a new process (a command): the settled plan remembered in the store ----------------------

LISTING = "/v1/user/offset/{offset}/limit/{limit}"


async def settled_then_recalled(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, computed: list[str]
) -> Plan:
    """Converged, then one command plans (reading the device) and remembers it settled."""
    await converge(opened)
    async with process(tmp_path) as app:
        first = await cycle.plan(app, recall=True)
    assert computed == ["lobby", "lobby"]
    assert nebula.log.count(route=LISTING) > 0
    assert not first.has_changes
    computed.clear()
    nebula.log.clear()
    return first


async def test_a_new_process_recalls_the_settled_plan_without_reading_the_device(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, computed: list[str]
) -> None:
    first = await settled_then_recalled(tmp_path, opened, nebula, computed)
    async with process(tmp_path) as app:
        again = await cycle.plan(app, recall=True)
    assert computed == []  # not planned again
    assert nebula.log.count(route=LISTING) == 0  # nor read: the feed alone
    assert nebula.log.count(route="/v2/datasync/info") == 1
    assert again.targets == first.targets
    assert again.fingerprint == first.fingerprint


async def test_the_daemon_remembers_its_settled_plan_for_a_command(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, computed: list[str]
) -> None:
    await converge(opened)
    await cycle.plan(opened, backoff=True)  # the daemon's pass: never recalls, but remembers
    nebula.log.clear()
    async with process(tmp_path) as app:
        plan = await cycle.plan(app, recall=True)
    assert len(computed) == 2
    assert nebula.log.count(route=LISTING) == 0
    assert not plan.has_changes


async def test_a_device_edit_is_not_recalled_over(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, computed: list[str]
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    nebula.edit_user("2", name="edited at the device")
    async with process(tmp_path) as app:
        plan = await cycle.plan(app, recall=True)
    assert computed == ["lobby"]
    assert [(c.action, c.person_id, c.reason) for c in plan.targets["lobby"].changes] == [
        (Action.UPDATE, "2", Reason.DRIFT)
    ]


async def test_a_missed_recall_reads_the_ledger_version_once_and_keys_on_it(
    tmp_path: Path,
    opened: App,
    nebula: NebulaPassSimulator,
    computed: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    versions: list[str] = []
    read = SqliteStore.ledger_version

    async def counted(store: SqliteStore, target: str) -> int:
        versions.append(target)
        return await read(store, target)

    monkeypatch.setattr(SqliteStore, "ledger_version", counted)
    async with process(tmp_path) as app:
        missed = await cycle.plan(app, only=["1"], recall=True)  # a new scope: a miss
    assert computed == ["lobby"]
    assert versions == ["lobby"]  # by the recall, not again by planning
    assert not missed.has_changes
    # What the miss remembered is keyed on that version: the next command recalls it.
    nebula.log.clear()
    async with process(tmp_path) as app:
        again = await cycle.plan(app, only=["1"], recall=True)
    assert computed == ["lobby"]
    assert nebula.log.count(route=LISTING) == 0
    assert again.targets == missed.targets


async def test_a_ledger_write_by_any_process_is_not_recalled_over(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, computed: list[str]
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    # Straight into the file, as an operator's sqlite3 shell would: the triggers still count it.
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "reconciler.sqlite3")) as db, db:
        db.execute("DELETE FROM ledger WHERE target = 'lobby' AND person_id = '3'")
    async with process(tmp_path) as app:
        plan = await cycle.plan(app, recall=True)
    assert computed == ["lobby"]
    assert plan.targets["lobby"].foreign == ("3",)


async def test_new_settings_or_a_new_scope_are_not_recalled_over(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, computed: list[str]
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    path = tmp_path / "desired.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("rate_limit: null", "rate_limit: 1000"), encoding="utf-8")
    async with process(tmp_path) as app:
        assert not (await cycle.plan(app, recall=True)).has_changes
    assert computed == ["lobby"]

    async with process(tmp_path) as app:
        only = await cycle.plan(app, only=["1"], recall=True)
    assert computed == ["lobby", "lobby"]
    assert only.targets["lobby"].in_scope == 3


async def test_a_desired_edit_is_not_recalled_over(
    tmp_path: Path, opened: App, nebula: NebulaPassSimulator, nebula_url: str, computed: list[str]
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    write(tmp_path / "desired.yaml", nebula_url, {"1": "one", "2": "two", "3": "three, renamed"})
    async with process(tmp_path) as app:
        plan = await cycle.plan(app, recall=True)
    assert computed == ["lobby"]
    assert [(c.action, c.person_id) for c in plan.targets["lobby"].changes] == [
        (Action.UPDATE, "3")
    ]


async def test_a_settled_plan_is_not_recalled_once_the_feed_is_no_longer_trusted(
    tmp_path: Path,
    opened: App,
    nebula: NebulaPassSimulator,
    computed: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    later = time.time() + NebulaPass.FULL_READ_EVERY + 1
    monkeypatch.setattr(time, "time", lambda: later)
    async with process(tmp_path) as app:
        await cycle.plan(app, recall=True)
    assert computed == ["lobby"]
    assert nebula.log.count(route=LISTING) > 0


async def test_a_settled_plan_made_by_other_code_or_mangled_is_a_miss(
    tmp_path: Path,
    opened: App,
    nebula: NebulaPassSimulator,
    computed: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await settled_then_recalled(tmp_path, opened, nebula, computed)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "reconciler.sqlite3")) as db, db:
        db.execute("UPDATE settled_plans SET plan = '{\"target\": 1}'")
    async with process(tmp_path) as app:
        assert not (await cycle.plan(app, recall=True)).has_changes
    assert computed == ["lobby"]

    monkeypatch.setattr(cycle, "_code", lambda: "another release")
    async with process(tmp_path) as app:
        assert not (await cycle.plan(app, recall=True)).has_changes
    assert computed == ["lobby", "lobby"]


async def test_applying_leaves_what_existed_out_of_the_collectors_scans_then_gives_it_back(
    opened: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a plan is applied the heap that existed (desired state, plan, snapshots) is frozen
    for the collector; afterwards, and after a failure too, nothing stays frozen."""
    seen: list[int] = []
    real = NebulaPass.apply

    def watched(self: NebulaPass, *args: Any, **kwargs: Any) -> Any:
        seen.append(gc.get_freeze_count())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(NebulaPass, "apply", watched)
    plan = await cycle.plan(opened, backoff=True)
    report = await cycle.apply(opened, plan)
    assert report.result == "ok"
    assert seen
    assert seen[0] > 0
    assert gc.get_freeze_count() == 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(opened.store, "begin_pass", failing)
    with pytest.raises(RuntimeError, match="went away"):
        await cycle.apply(opened, plan)
    assert gc.get_freeze_count() == 0


def test_a_held_plan_names_the_first_persons_it_would_delete() -> None:
    held = tuple(
        Change(action=Action.DELETE, person_id=f"p{n:02d}", reason=Reason.REMOVED, fingerprint="")
        for n in range(cycle.HELD_SHOWN + 5)
    )
    target = TargetPlan(
        target="lobby", kind="nebula_pass", held=held, held_reason="25 deletes exceed 3"
    )
    plan = Plan(desired_digest="d", targets={"lobby": target}, fingerprint="f", created_at="")
    with structlog.testing.capture_logs() as captured:
        cycle.log_plan(plan, mode="apply")
    (line,) = [entry for entry in captured if entry["event"] == "plan.held"]
    assert (line["target"], line["deletes"], line["reason"]) == ("lobby", 25, "25 deletes exceed 3")
    assert line["persons"] == [f"p{n:02d}" for n in range(cycle.HELD_SHOWN)]
