"""The watcher sees content changes, including a Kubernetes ConfigMap's symlink swap, and
ignores events that change nothing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.daemon import watching
from reconciler.daemon.trigger import Trigger

DEADLINE = 15.0
BODY = "version: 1\npersons: []\n"


async def settle() -> None:
    await asyncio.sleep(0.5)  # longer than the debounce: the watcher is idle again


async def wait_pending(trigger: Trigger) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if trigger.pending:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def configmap(tmp_path: Path) -> AsyncIterator[tuple[Path, Trigger]]:
    """A folder laid out like a mounted ConfigMap: desired.yaml -> ..data/desired.yaml."""
    folder = tmp_path / "etc"
    (folder / "..v1").mkdir(parents=True)
    (folder / "..v1" / "desired.yaml").write_text(BODY)
    (folder / "..data").symlink_to("..v1")
    (folder / "desired.yaml").symlink_to("..data/desired.yaml")
    trigger = Trigger()
    stop = asyncio.Event()
    task = asyncio.create_task(watching.watch(folder / "desired.yaml", trigger, stop))
    await settle()
    try:
        yield folder, trigger
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


async def test_a_configmap_update_is_seen(configmap: tuple[Path, Trigger]) -> None:
    folder, trigger = configmap
    (folder / "..v2").mkdir()
    (folder / "..v2" / "desired.yaml").write_text(BODY + "# edited\n")
    (folder / "..data_tmp").symlink_to("..v2")
    os.replace(folder / "..data_tmp", folder / "..data")  # what the kubelet does
    assert await wait_pending(trigger)
    assert await trigger.wait() == ("desired-changed",)


async def test_a_touch_that_changes_nothing_requests_nothing(
    configmap: tuple[Path, Trigger],
) -> None:
    folder, trigger = configmap
    os.utime(folder / "..v1" / "desired.yaml")
    (folder / "unrelated.txt").write_text("x")
    await settle()
    await settle()
    assert not trigger.pending


async def test_an_editors_save_by_rename_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "desired.yaml"
    path.write_text(BODY)
    trigger = Trigger()
    stop = asyncio.Event()
    task = asyncio.create_task(watching.watch(path, trigger, stop))
    try:
        await settle()
        (tmp_path / ".desired.yaml.swp").write_text(BODY + "# edited\n")
        os.replace(tmp_path / ".desired.yaml.swp", path)
        assert await wait_pending(trigger)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)
