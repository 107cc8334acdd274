"""persons_from end to end, on the test PostgreSQL: `validate` reads the sources only when asked,
`plan`/`apply` follow the database, an empty source holds deletes, and the daemon reads the
database on every pass, keeping the last good state (and saying so) while it is slow or failing.
The URL's password appears in no output."""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from reconciler.core.redaction import url_shown
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from tests.conftest import POSTGRES_PASSWORD, Postgres
from tests.daemon.test_run import Running, spawn
from tests.test_cli import PASSWORD, Site

#: Ann's pin: sensitive, so it must never show. Long enough not to turn up by chance in a log
#: line's timestamp or a hash, as a four-digit one can.
PIN = "73910482"  # as in EMPLOYEES
EMPLOYEES = (
    "CREATE TABLE employees (emp_no integer, full_name text, pin text, active boolean)",
    "INSERT INTO employees VALUES (1001, 'Ann', '73910482', true), (1002, 'Bob', NULL, true),"
    " (1003, 'Cy', NULL, false)",
    # How slow the database is, in seconds.
    "CREATE TABLE control (delay float)",
    "INSERT INTO control VALUES (0)",
)
# The pause runs once per query (a materialised CTE), not once per row.
QUERY = (
    "WITH pause AS MATERIALIZED (SELECT pg_sleep(delay) FROM control)"
    " SELECT emp_no AS id, full_name AS name, pin FROM employees, pause WHERE active"
)


def shown(url: str) -> str:
    """How messages name the source: its URL, the password masked (core.redaction)."""
    return f"persons_from[0] ({url_shown(url)})"


def sources(timeout: str = "2s") -> str:
    """Persons for Site.write: one inline, then the database's."""
    return (
        '  - {id: "9", name: Nine}\n'
        "persons_from:\n"
        "  - sql: ${HR_DATABASE_URL}\n"
        f"    query: {json.dumps(QUERY)}\n"
        f"    timeout: {timeout}\n"
    )


@pytest.fixture
def site(tmp_path: Path, nebula_url: str) -> Site:
    return Site(tmp_path, nebula_url)


@dataclass(frozen=True)
class Database:
    """A database of this test's own on the test PostgreSQL, so that it can refuse connections."""

    name: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:5432/{self.name}"

    def execute(self, *statements: str) -> None:
        url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
            for statement in statements:
                connection.execute(statement)


@pytest.fixture
def database(postgres_server: str) -> Iterator[Database]:
    name = f"reconciler_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def allow_connections(database: Database, server: str, *, allow: bool) -> None:
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as connection:
        connection.execute(
            f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}'
        )


@pytest.fixture
def hr(site: Site, postgres: Postgres) -> Postgres:
    postgres.execute(*EMPLOYEES)
    site.env["HR_DATABASE_URL"] = postgres.url
    return postgres


def assert_no_password(*texts: str) -> None:
    for text in texts:
        assert POSTGRES_PASSWORD not in text
        assert PASSWORD not in text


async def test_validate_queries_only_when_asked(site: Site, hr: Postgres) -> None:
    site.write(sources())
    site.env["HR_DATABASE_URL"] = hr.url.replace(":5432/", ":1/")  # nothing listens there
    offline = await site.run("validate")
    assert offline.code == 0, offline.err
    assert "valid: 1 person," in offline.out
    assert "1 persons_from source not read (--query reads them)" in offline.out
    down = await site.run("validate", "--query")
    assert down.code == 1
    unreachable = site.env["HR_DATABASE_URL"]
    assert f"desired.yaml:14: {shown(unreachable)}: cannot" in down.err
    assert "postgresql://postgres:***@127.0.0.1:1/test" in down.err
    site.env["HR_DATABASE_URL"] = hr.url
    read = await site.run("validate", "--query")
    assert read.code == 0, read.err
    assert "valid: 3 persons," in read.out
    assert "1 persons_from source read" in read.out
    assert_no_password(offline.out, offline.err, down.out, down.err, read.out, read.err)


async def test_plan_and_apply_follow_the_database(
    site: Site, hr: Postgres, nebula: NebulaPassSimulator
) -> None:
    site.write(sources())
    applied = await site.run("apply", "--yes")
    assert applied.code == 0, applied.err
    assert {u: nebula.users[u]["name"] for u in nebula.users} == {
        "1001": "Ann",
        "1002": "Bob",
        "9": "Nine",
    }
    assert nebula.users["1001"]["pin"] == PIN
    converged = await site.run("plan", "--detailed-exitcode")
    assert converged.code == 0, converged.err

    # The database changed, the files did not.
    hr.execute("UPDATE employees SET full_name = 'Ann B.' WHERE emp_no = 1001")
    edited = await site.run("plan", "--detailed-exitcode")
    assert edited.code == 2, edited.err
    assert "~ 1001" in edited.out
    assert '"Ann" → "Ann B."' in edited.out

    # A bad row: nothing is planned, the row and id are named.
    hr.execute("UPDATE employees SET full_name = '' WHERE emp_no = 1002")
    bad = await site.run("apply", "--yes")
    assert bad.code == 1
    assert f'desired.yaml:14: {shown(hr.url)} row 2, id "1002": name must not be empty' in bad.err
    assert nebula.users["1001"]["name"] == "Ann"

    # Zero rows are data, not an error: the empty-source guard holds the deletes.
    hr.execute("UPDATE employees SET active = false")
    desired = site.root / "desired.yaml"
    desired.write_text(
        desired.read_text().replace('persons:\n  - {id: "9", name: Nine}', "persons: []")
    )
    held = await site.run("apply", "--yes")
    assert held.code == 3, held.err
    assert "no desired person is in scope" in held.out
    assert set(nebula.users) == {"1001", "1002", "9"}
    texts = [text for run in (applied, converged, edited, bad, held) for text in (run.out, run.err)]
    assert_no_password(*texts)
    assert all(PIN not in text for text in texts)


async def test_the_daemon_reads_the_database_every_pass_and_keeps_the_last_good_state(
    tmp_path: Path,
    site: Site,
    database: Database,
    postgres_server: str,
    nebula: NebulaPassSimulator,
) -> None:
    database.execute(*EMPLOYEES)
    site.write(sources(timeout="1s"))
    daemon = await spawn(tmp_path, "--interval", "1", HR_DATABASE_URL=database.url)
    try:
        await exercise(daemon, database, postgres_server, nebula)
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.exited() == 0
    finally:
        await daemon.close()
    assert_no_password(*daemon.lines)
    assert all(PIN not in line for line in daemon.lines)


async def exercise(daemon: Running, hr: Database, server: str, nebula: NebulaPassSimulator) -> None:
    await daemon.until(lambda: set(nebula.users) == {"1001", "1002", "9"}, "the first sync")
    named = shown(hr.url)

    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, Any]:
            async with http.get(daemon.url + path) as response:
                return response.status, await response.read()

        # A new employee arrives without any file changing.
        hr.execute("INSERT INTO employees VALUES (1004, 'Dee', NULL, true)")
        await daemon.until(lambda: "1004" in nebula.users, "the new employee")
        await daemon.until(lambda: daemon.passes("ok") >= 3, "a pass that finds nothing to do")
        writes = nebula.log.writes()
        everyone = {"1001", "1002", "1004", "9"}

        # Slow: the query is cancelled, the last good state stays in use and is reported.
        hr.execute(
            "UPDATE control SET delay = 30",
            "UPDATE employees SET active = false WHERE emp_no = 1002",  # not seen yet
        )
        await daemon.until(lambda: invalid(daemon, "no answer within the timeout of 1s"), "slow")
        status, body = await get("/readyz")
        assert status == 503
        assert b"no answer within the timeout of 1s" in body
        status, body = await get("/status")
        assert named in orjson.loads(body)["desired"]["error"]
        status, body = await get("/metrics")
        assert b"reconciler_desired_valid 0.0" in body
        passes = daemon.passes()
        await daemon.until(lambda: daemon.passes() >= passes + 2, "two passes while slow")
        assert set(nebula.users) == everyone
        assert nebula.log.writes() == writes

        # Every step below goes from one bad state to another, so that no pass in between can
        # read the database (and see Bob gone) before the recovery. The delay stays at 30 s
        # until the table is gone.

        # Unreachable: the same.
        allow_connections(hr, server, allow=False)
        await daemon.until(lambda: invalid(daemon, f"{named}: cannot connect"), "unreachable")
        assert (await get("/readyz"))[0] == 503
        passes = daemon.passes()
        await daemon.until(lambda: daemon.passes() >= passes + 2, "two passes while unreachable")
        assert set(nebula.users) == everyone
        assert nebula.log.writes() == writes
        allow_connections(hr, server, allow=True)

        # Failing: the same.
        hr.execute("ALTER TABLE employees RENAME TO gone", "UPDATE control SET delay = 0")
        await daemon.until(
            lambda: invalid(daemon, 'the query failed: relation "employees" does not exist'),
            "failing",
        )
        assert (await get("/readyz"))[0] == 503
        passes = daemon.passes()
        await daemon.until(lambda: daemon.passes() >= passes + 2, "two passes while failing")
        assert set(nebula.users) == everyone
        assert nebula.log.writes() == writes

        # Recovered: the database as it is now (Bob has left) is the desired state again.
        hr.execute("ALTER TABLE gone RENAME TO employees")
        await daemon.until(lambda: set(nebula.users) == {"1001", "1004", "9"}, "the recovery")
        ok = daemon.passes("ok")
        await daemon.until(lambda: daemon.passes("ok") > ok, "one more ok pass")
        status, body = await get("/readyz")
        assert status == 200, body
        status, body = await get("/metrics")
        assert b"reconciler_desired_valid 1.0" in body


def invalid(daemon: Running, text: str) -> bool:
    return any(
        e["event"] == "desired.invalid" and any(text in p for p in e["problems"])
        for e in daemon.events
    )
