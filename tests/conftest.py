"""Shared fixtures: simulators on loopback, photo files, and a guard against leaked tasks."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.core.persons import Photo
from reconciler.simulators.base import serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator

#: Smallest bytes our photo checks accept: the magic numbers, then padding.
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 60


@pytest.fixture
def nebula() -> NebulaPassSimulator:
    return NebulaPassSimulator(username="admin", password="s3cret-lobby-pw")


@pytest.fixture
async def nebula_url(nebula: NebulaPassSimulator) -> AsyncIterator[str]:
    async with await serve(nebula) as served:
        yield served.url


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Photo]:
    """Three distinct photos on disk, as the loader would describe them."""
    found = {}
    for name, data in (("a.jpg", JPEG + b"a"), ("b.jpg", JPEG + b"b"), ("c.png", PNG + b"c")):
        path = tmp_path / name
        path.write_bytes(data)
        found[name] = Photo(
            path=str(path),
            digest="sha256:" + hashlib.sha256(data).hexdigest(),
            media_type="image/png" if name.endswith("png") else "image/jpeg",
            size=len(data),
        )
    return found


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """A test that leaves tasks running has a bug: every wait in the product must end."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not current]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks leaked: {leaked}"
