"""What only the PostgreSQL store does: its URL, migrations raced by replicas, leadership locks,
a lost connection, and the fixture that must fail (not skip) in CI without PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from reconciler import logs
from reconciler.app import connect_store
from reconciler.core.planning import LedgerEntry
from reconciler.errors import ConfigError, StoreError
from reconciler.settings import Settings
from reconciler.store.base import Holding, migrations
from reconciler.store.postgres import PostgresStore, parse_url
from tests.reliability import closed_port

ROOT = Path(__file__).resolve().parents[2]


def entry(pid: str) -> LedgerEntry:
    return LedgerEntry(person_id=pid, fingerprint="fp", applied_at=1.0)


def test_the_url_names_the_schema_and_is_shown_without_its_password() -> None:
    location = parse_url(
        "postgresql://rec:s%40cret-77@db.example:5433/prod?schema=recon&sslmode=require"
    )
    assert location.schema == "recon"
    assert (
        location.shown == "postgresql://rec:***@db.example:5433/prod?schema=recon&sslmode=require"
    )
    assert "schema" not in location.conninfo
    assert "sslmode=require" in location.conninfo
    assert parse_url("postgresql://h/db").schema == "reconciler"
    query_password = parse_url("postgresql://h/db?password=pw-in-query-31")
    assert "pw-in-query-31" not in query_password.shown
    with pytest.raises(ConfigError, match="schema 'Bad-Name'"):
        parse_url("postgresql://rec:s3cret@h/db?schema=Bad-Name")


async def test_an_unreachable_store_is_a_store_error_without_the_password() -> None:
    url = f"postgresql://rec:pw-never-shown-5581@127.0.0.1:{closed_port()}/db"
    with pytest.raises(StoreError) as caught:
        await PostgresStore.open(url)
    message = str(caught.value)
    assert "cannot connect to the store postgresql://rec:***@127.0.0.1" in message
    assert "pw-never-shown-5581" not in message
    assert caught.value.__cause__ is None  # libpq's text may quote the connection string


async def test_the_store_urls_password_is_hidden_from_every_log_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only the store's own messages: a driver's error or a traceback logged anywhere."""
    monkeypatch.setattr(logs, "_redactor", logs._redactor)  # protect() below is undone after
    url = f"postgresql://rec:pw-store-9917@127.0.0.1:{closed_port()}/db?sslpassword=key-pw-2210"
    with pytest.raises(StoreError):
        await connect_store(Settings(store_url=url))
    assert logs.redact("echoed pw-store-9917 and key-pw-2210") == (
        "echoed [redacted] and [redacted]"
    )


async def test_replicas_starting_together_migrate_once(
    postgres_schema: Callable[[], str],
) -> None:
    url = postgres_schema()
    stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(4)))
    try:
        location = parse_url(url)
        with psycopg.connect(location.conninfo, autocommit=True) as db:
            rows = db.execute(
                f"SELECT version FROM {location.schema}.schema_version ORDER BY version"  # noqa: S608
            ).fetchall()
        assert [v for (v,) in rows] == [v for v, _ in migrations("postgres")]
        keys = {await s.fingerprint_key() for s in stores}
        assert len(keys) == 1
    finally:
        for store in stores:
            await store.aclose()


async def test_each_target_has_one_owner_and_a_dead_replicas_targets_are_free(
    postgres_schema: Callable[[], str],
) -> None:
    url = postgres_schema()
    a = await PostgresStore.open(url, replica="replica-a")
    b = await PostgresStore.open(url, replica="replica-b")
    cli = await PostgresStore.open(url, replica="operator-9")
    try:
        await a.join("daemon")
        await b.join("daemon")
        assert await b.replicas() == ["replica-a", "replica-b"]  # a command is no replica
        assert await a.claim("lobby")
        assert not await b.claim("lobby")
        assert await b.claim("kiosk")
        assert (a.owned(), b.owned()) == (frozenset({"lobby"}), frozenset({"kiosk"}))
        async with cli.writer(["kiosk"]):
            assert await a.holders(["lobby", "kiosk", "fog"]) == {
                "lobby": Holding(owner="replica-a"),
                "kiosk": Holding(owner="replica-b", writer="operator-9 (a command)"),
                "fog": Holding(),
            }
        await a.release("lobby")
        assert await b.claim("lobby")
        await a.claim("fog")
    finally:
        await a.aclose()
    # Its session ended: its locks went with it, and it is no longer a live replica.
    try:
        assert await b.replicas() == ["replica-b"]
        assert await b.claim("fog")
    finally:
        await b.aclose()
        await cli.aclose()


async def test_two_live_replicas_may_not_share_an_id(postgres_schema: Callable[[], str]) -> None:
    url = postgres_schema()
    first = await PostgresStore.open(url, replica="pod-1")
    second = await PostgresStore.open(url, replica="pod-1")
    try:
        await first.join("daemon")
        with pytest.raises(StoreError, match="another live replica is called pod-1"):
            await second.join("daemon")
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_busy_target_is_skipped_or_waited_for_then_names_its_writer(
    postgres_schema: Callable[[], str],
) -> None:
    url = postgres_schema()
    daemon = await PostgresStore.open(url, replica="replica-a")
    cli = await PostgresStore.open(url, replica="operator-9")
    try:
        await daemon.join("daemon")
        async with daemon.writer(["lobby"]):
            async with cli.writer(["kiosk", "lobby"], partial=True) as got:
                assert got == {"kiosk"}
            with pytest.raises(StoreError) as caught:
                async with cli.writer(["kiosk", "lobby"], wait=0.6):
                    pass
            assert str(caught.value) == (
                "target lobby is being written by replica-a (waited 0.6 s); try again when it "
                "has finished, or raise RECONCILER_LOCK_WAIT"
            )
        # The failed writer let go of what it had taken (kiosk), the first of lobby.
        assert await daemon.holders(["kiosk", "lobby"]) == {"kiosk": Holding(), "lobby": Holding()}
    finally:
        await daemon.aclose()
        await cli.aclose()


async def test_installations_in_other_schemas_never_share_a_lock(
    postgres_schema: Callable[[], str],
) -> None:
    one = await PostgresStore.open(postgres_schema())
    other = await PostgresStore.open(postgres_schema())
    try:
        async with one.writer(["lobby"]), other.writer(["lobby"]) as got:
            assert got == {"lobby"}
        assert await one.claim("lobby")
        assert await other.claim("lobby")
    finally:
        await one.aclose()
        await other.aclose()


def terminate(url: str, replica: str) -> int:
    """End a store's server session from outside, as a failover or an administrator would."""
    with psycopg.connect(parse_url(url).conninfo, autocommit=True) as db:
        rows = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"reconciler {replica}",),
        ).fetchall()
    return len(rows)


async def test_a_lost_connection_fences_the_writer_then_reconnects(
    postgres_schema: Callable[[], str],
) -> None:
    url = postgres_schema()
    store = await PostgresStore.open(url, replica="lost-1")
    other = await PostgresStore.open(url, replica="other-1")
    try:
        await store.join("daemon")
        assert await store.claim("lobby")
        async with store.writer(["lobby"]):
            await store.record("lobby", [entry("1")])
            assert terminate(url, "lost-1") == 1
            with pytest.raises(StoreError, match=r"postgresql://postgres@127\.0\.0\.1"):
                await store.record("lobby", [entry("2")])
            # The server released its locks: another replica takes over at once ...
            async with other.writer(["lobby"]):
                assert await other.claim("lobby")
                # ... and the one that lost them writes nothing more under this writer.
                with pytest.raises(StoreError, match="connection was lost"):
                    await store.record("lobby", [entry("3")])
        assert store.owned() == frozenset()
        # Outside the writer, the next operation reconnects.
        assert set(await store.ledger("lobby")) == {"1"}
        await store.join("daemon")
        assert await store.replicas() == ["lost-1"]
    finally:
        await store.aclose()
        await other.aclose()


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_without_postgresql_ci_fails_and_a_laptop_skips(ci: str, outcome: str) -> None:
    env = {
        **os.environ,
        "CI": ci,
        "RECONCILER_TEST_POSTGRES": f"postgresql://postgres@127.0.0.1:{closed_port()}/test",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests/store/test_contract.py::test_passes_are_recorded[postgres]",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert outcome in done.stdout, done.stdout[-2000:]
    assert done.returncode == (1 if ci else 0)
    if ci:
        assert "the PostgreSQL tests must run" in done.stdout


def test_the_command_line_names_an_unreachable_store_without_its_password(tmp_path: Path) -> None:
    (tmp_path / "desired.yaml").write_text("version: 1\ntargets: {}\npersons: []\n")
    url = f"postgresql://rec:pw-never-shown-7719@127.0.0.1:{closed_port()}/db?schema=site_a"
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan"],
        cwd=tmp_path,
        env={**os.environ, "RECONCILER_STORE_URL": url, "RECONCILER_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot connect to the store postgresql://rec:***@127.0.0.1:" in done.stderr
    assert "pw-never-shown-7719" not in done.stdout + done.stderr
