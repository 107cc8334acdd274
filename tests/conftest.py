"""Shared fixtures: simulators on loopback, photo files, the test PostgreSQL (schemas of each
test's own), and a guard against leaked tasks."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from reconciler.core.persons import Photo
from reconciler.simulators.base import serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from tests import lobby

#: Smallest bytes our photo checks accept: the magic numbers, then padding.
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 60


@pytest.fixture
def nebula() -> NebulaPassSimulator:
    return NebulaPassSimulator(username="admin", password=lobby.PASSWORD)


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


#: The test PostgreSQL (trust auth, database test, user postgres; override for another server).
POSTGRES = os.environ.get("RECONCILER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: Put in every URL the tests hand to the product: trust auth ignores it; no output may show it.
POSTGRES_PASSWORD = "pg-pw-6f3a91"


@dataclass(frozen=True)
class Postgres:
    """A schema of this test's own on the test PostgreSQL."""

    schema: str

    @property
    def url(self) -> str:
        """The URL the product gets: with a password, and the schema first on the search path."""
        options = quote(f"-csearch_path={self.schema}")
        return f"postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:5432/test?options={options}"

    def execute(self, *statements: str) -> list[tuple[object, ...]]:
        """Runs the statements in the schema, committed; the rows of the last one, if any."""
        rows: list[tuple[object, ...]] = []
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'SET search_path TO "{self.schema}"')
            for statement in statements:
                cursor = connection.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
        return rows


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test PostgreSQL, or a skip when it is unreachable; under CI=true a failure instead,
    because CI must run these tests, never silently pass them by."""
    try:
        with psycopg.connect(POSTGRES, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {POSTGRES} is unreachable: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI=true: the PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    return POSTGRES


@pytest.fixture
def postgres(postgres_server: str) -> Iterator[Postgres]:
    """A schema unique to this test (engineers share the server), dropped afterwards."""
    schema = f"reconciler_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Postgres(schema)
    finally:
        with psycopg.connect(postgres_server, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


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


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A store URL on the test PostgreSQL, in a schema unique to this test session (parallel
    engineers share the server); that schema and every one named after it are dropped at the
    end."""
    prefix = f"reconciler_test_{os.getpid()}_{secrets.token_hex(4)}"
    yield f"{POSTGRES}?schema={prefix}"
    with psycopg.connect(POSTGRES, autocommit=True) as db:
        rows = db.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
        ).fetchall()
        for (schema,) in rows:
            db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


_schemas = itertools.count(1)


@pytest.fixture
def postgres_schema(postgres_url: str) -> Callable[[], str]:
    """Store URLs in fresh schemas of this session's (each call: a new, empty one)."""
    return lambda: f"{postgres_url}_{next(_schemas)}"
