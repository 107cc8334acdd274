"""One pass (cycle.plan) against a simulator: a pass whose inputs did not change reuses the last
plan without reading the ledger, and any change of the desired state, the device or the ledger
plans again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import app as composition
from reconciler import cycle
from reconciler.app import App
from reconciler.core import planning
from reconciler.core.changes import Action, Reason
from reconciler.settings import Settings
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.store.sqlite import SqliteStore

PASSWORD = "s3cret-lobby-pw"


def write(path: Path, url: str, names: dict[str, str]) -> None:
    lines = [
        "version: 1",
        "targets:",
        "  lobby:",
        "    kind: nebula_pass",
        f"    url: {url}",
        "    username: admin",
        "    password: ${LOBBY_PASSWORD}",
        "    rate_limit: null",
        "persons:",
    ]
    lines += [f'  - {{id: "{pid}", name: "{name}"}}' for pid, name in names.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
async def opened(tmp_path: Path, nebula_url: str) -> AsyncIterator[App]:
    path = tmp_path / "desired.yaml"
    write(path, nebula_url, {"1": "one", "2": "two", "3": "three"})
    settings = Settings(state_dir=tmp_path / "state", desired=path)
    async with composition.open_app(settings, env={"LOBBY_PASSWORD": PASSWORD}) as app:
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
