"""The shared store: PostgreSQL, for several daemon replicas. Network I/O (psycopg).

The SQLite store's ledger semantics, plus leadership: one connection per process carries its
data and its session-level advisory locks (who owns a target, who writes it now), so a process
that lost them can record nothing more under them. psycopg's errors are mapped here, once, into
StoreError, and no message carries the URL's password; errors written here are redacted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from reconciler import progress
from reconciler.core.changes import Attempt
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.core.quarantine import Health
from reconciler.core.redaction import url_secrets, url_shown
from reconciler.errors import ConfigError, StoreError
from reconciler.store import base
from reconciler.store.base import (
    KEY_BYTES,
    Holding,
    PassRecord,
    Role,
    Settled,
    default_replica_id,
    migrations,
    statements,
)

#: The schema the tables live in when the URL names none (`?schema=NAME`).
DEFAULT_SCHEMA = "reconciler"
#: TCP keepalives, on the server's side of the connection and on ours (seconds). The server
#: releases the locks of a replica whose host died (no FIN, no RST) once the idle connection
#: has gone unanswered for IDLE + INTERVAL x COUNT seconds; data sent and never acknowledged
#: gives up after the same time (tcp_user_timeout).
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
DEAD_PEER_SECONDS = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
#: Seconds to establish a connection.
CONNECT_TIMEOUT = 10
#: How often a writer waiting for a busy target tries its lock again (seconds).
LOCK_POLL = 0.5

Connection = psycopg.AsyncConnection[TupleRow]


def _marked(statement: str) -> str:
    """A statement of store.base with psycopg's parameter marks."""
    return statement.replace("?", "%s")


_PENDING = _marked(base.PENDING.statement())
_ADOPTED = _marked(base.ADOPTED.statement())
_LEDGER = _marked(base.LEDGER.statement())
_DEPARTMENTS = _marked(base.DEPARTMENTS.statement())
_ATTEMPTS = _marked(base.ATTEMPTS.statement())
_HEALTH = _marked(base.HEALTH.statement())
_SETTLED = _marked(base.SETTLED.statement())
_READ_LEDGER = _marked(base.READ_LEDGER)
_READ_MANAGED = base.READ_MANAGED
_READ_DEPARTMENTS = _marked(base.READ_DEPARTMENTS)
_READ_ATTEMPTS = _marked(base.READ_ATTEMPTS)
_READ_HEALTH = base.READ_HEALTH
_READ_SETTLED = _marked(base.READ_SETTLED)
_READ_PASSES = _marked(base.READ_PASSES)
_PASSES_FINISHED = _marked(base.PASSES_FINISHED)
_FORGET_HEALTH = _marked(base.FORGET_HEALTH)
_PASSES_PRUNED = _marked(base.PASSES_PRUNED)
_KEY_ADDED = _marked(base.KEY_ADDED)
_READ_KEY = base.READ_KEY

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where the store is: libpq's connection string, the schema, and a printable form."""

    conninfo: str
    schema: str
    #: The URL with its password masked, for messages.
    shown: str
    #: Strings no message may contain (the password, as written and decoded).
    secrets: tuple[str, ...]


def parse_url(url: str) -> Location:
    """postgresql://user:password@host:port/db?schema=NAME (plus any libpq parameter)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"RECONCILER_STORE_URL: not a postgresql:// URL: {parts.scheme}://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    shown = url_shown(url)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"RECONCILER_STORE_URL {shown}: schema {schema!r} is not a plain lower-case name "
            "(letters, digits, _; at most 63)"
        )
    conninfo = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(kept, quote_via=quote), "")
    )
    return Location(
        conninfo=conninfo,
        schema=schema,
        shown=shown,
        secrets=tuple(sorted(url_secrets(url), key=len, reverse=True)),
    )


def lock_key(schema: str, purpose: str, target: str = "") -> int:
    """The advisory lock key (bigint) of a purpose on a target, within one schema: locks are
    database-wide, so two installations sharing a database never take each other's."""
    seed = f"reconciler\0{schema}\0{purpose}\0{target}".encode()
    return int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big", signed=True)


def _halves(key: int) -> tuple[int, int]:
    """A bigint key as pg_locks shows it: (classid, objid), its high and low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class PostgresStore:
    """The ledger, passes and leadership in one PostgreSQL schema, shared by every replica."""

    shared = True

    def __init__(self, location: Location, *, replica: str) -> None:
        self.location = location
        self.replica = replica
        self._conn: Connection | None = None
        #: One operation (one transaction) at a time on the connection.
        self._lock = asyncio.Lock()
        #: This process's row in `replicas`.
        self._session = secrets.token_hex(8)
        self._role: Role = "command"
        self._owned: set[str] = set()
        self._writing: set[str] = set()
        #: How many writer() contexts are open: inside one, only its targets may be written.
        self._writers = 0

    @classmethod
    async def open(cls, url: str, *, replica: str | None = None) -> PostgresStore:
        store = cls(parse_url(url), replica=replica or default_replica_id())
        async with store._lock:
            await store._connect()
        return store

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        self._owned.clear()
        self._writing.clear()
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            if not conn.broken:
                await conn.execute("DELETE FROM replicas WHERE session = %s", (self._session,))
        # Closing the session releases every advisory lock it held.
        await conn.close()

    # -- ledger ---------------------------------------------------------------------------

    async def ledger(self, target: str) -> dict[str, LedgerEntry]:
        rows = await self._fetch(_READ_LEDGER, (target,))
        return {
            pid: LedgerEntry(
                person_id=pid,
                remote_id=remote_id,
                fingerprint=fp,
                written=orjson.loads(written),
                refs=orjson.loads(refs),
                applied_at=applied_at,
            )
            for pid, remote_id, fp, written, refs, applied_at in rows
        }

    async def managed(self) -> dict[str, int]:
        rows = await self._fetch(_READ_MANAGED)
        return {target: int(count) for target, count in rows}

    async def mark_pending(self, target: str, person_ids: Iterable[str]) -> None:
        rows = base.pending_rows(target, person_ids, time.time())
        if rows:
            async with self._cursor(write_for=target) as cur:
                await cur.executemany(_PENDING, rows)

    async def adopt(self, target: str, remote_ids: Mapping[str, str | None]) -> None:
        rows = base.adopted_rows(target, remote_ids, time.time())
        if rows:
            async with self._cursor(write_for=target) as cur:
                await cur.executemany(_ADOPTED, rows)

    async def record(
        self, target: str, applied: Sequence[LedgerEntry], deleted: Sequence[str] = ()
    ) -> None:
        if not applied and not deleted:
            return
        upserts = [base.ledger_row(target, e) for e in applied]
        async with self._cursor(write_for=target) as cur:
            if upserts:
                await cur.executemany(_LEDGER, upserts)
            if deleted:
                await cur.execute(
                    "DELETE FROM ledger WHERE target = %s AND person_id = ANY(%s)",
                    (target, list(deleted)),
                )

    async def forget(self, target: str, person_ids: Sequence[str]) -> None:
        await self.record(target, (), person_ids)

    async def ledger_version(self, target: str) -> Hashable:
        """A checksum of the target's ledger and department ledger rows, as the server holds
        them: any write by any replica or CLI changes it (unless 64-bit hashes collide)."""
        rows = await self._fetch(
            "SELECT (SELECT (count(*), coalesce(sum(hashtextextended(person_id || chr(31) "
            "|| coalesce(remote_id, chr(30)) || chr(31) || fingerprint || chr(31) || written "
            "|| chr(31) || refs, 0)), 0))::text FROM ledger WHERE target = %s), "
            "(SELECT (count(*), coalesce(sum(hashtextextended(department_id || chr(31) || "
            "coalesce(parent, chr(30)) || chr(31) || fingerprint, 0)), 0))::text "
            "FROM department_ledger WHERE target = %s)",
            (target, target),
        )
        return tuple(rows[0])

    async def departments(self, target: str) -> dict[str, DepartmentEntry]:
        return base.departments_of(await self._fetch(_READ_DEPARTMENTS, (target,)))

    async def record_departments(
        self, target: str, applied: Sequence[DepartmentEntry], deleted: Sequence[str] = ()
    ) -> None:
        if not applied and not deleted:
            return
        upserts = [base.department_row(target, e) for e in applied]
        async with self._cursor(write_for=target) as cur:
            if upserts:
                await cur.executemany(_DEPARTMENTS, upserts)
            if deleted:
                await cur.execute(
                    "DELETE FROM department_ledger WHERE target = %s AND department_id = ANY(%s)",
                    (target, list(deleted)),
                )

    # -- attempts, target health ----------------------------------------------------------------

    async def attempts(self, target: str) -> dict[str, Attempt]:
        return base.attempts_of(await self._fetch(_READ_ATTEMPTS, (target,)))

    async def record_attempts(
        self, target: str, failed: Sequence[Attempt], succeeded: Sequence[str] = ()
    ) -> None:
        if not failed and not succeeded:
            return
        rows = [base.attempt_row(target, a) for a in failed]
        async with self._cursor(write_for=target) as cur:
            if rows:
                await cur.executemany(_ATTEMPTS, rows)
            if succeeded:
                await cur.execute(
                    "DELETE FROM attempts WHERE target = %s AND person_id = ANY(%s)",
                    (target, list(succeeded)),
                )

    async def health(self) -> dict[str, Health]:
        return base.health_of(await self._fetch(_READ_HEALTH))

    async def record_health(self, target: str, health: Health) -> None:
        async with self._cursor(write_for=target) as cur:
            if health.healthy:
                await cur.execute(_FORGET_HEALTH, (target,))
            else:
                await cur.execute(_HEALTH, base.health_row(target, health))

    # -- settled plans --------------------------------------------------------------------------

    async def settled(self, target: str) -> Settled | None:
        rows = await self._fetch(_READ_SETTLED, (target,))
        return base.settled_of(rows[0]) if rows else None

    async def remember_settled(self, target: str, settled: Settled) -> None:
        # Not a write under the target's writer lock: a plan only remembers what it found, and
        # its key holds the ledger checksum it was computed from, so a stale one never hits.
        async with self._cursor() as cur:
            await cur.execute(_SETTLED, base.settled_row(target, settled))

    # -- passes, the fingerprint key ------------------------------------------------------------

    async def begin_pass(self, mode: str) -> int:
        async with self._cursor() as cur:
            await cur.execute(
                "INSERT INTO passes (started_at, mode) VALUES (%s, %s) RETURNING id",
                (time.time(), mode),
            )
            row = await cur.fetchone()
            assert row is not None
            pass_id: int = row[0]
            await cur.execute(_PASSES_PRUNED, (pass_id - base.PASSES_KEPT,))
        return pass_id

    async def finish_pass(
        self,
        pass_id: int,
        *,
        result: str,
        plan_fingerprint: str | None,
        summary: Mapping[str, Any],
        error: str | None = None,
    ) -> None:
        row = base.finished_row(pass_id, time.time(), result, plan_fingerprint, summary, error)
        async with self._cursor() as cur:
            await cur.execute(_PASSES_FINISHED, row)

    async def passes(self, limit: int = 20) -> list[PassRecord]:
        return base.passes_of(await self._fetch(_READ_PASSES, (limit,)))

    async def fingerprint_key(self) -> bytes:
        async with self._cursor() as cur:
            # Replicas starting together may both try: the first insert wins, both read it.
            await cur.execute(_KEY_ADDED, (secrets.token_bytes(KEY_BYTES),))
            await cur.execute(_READ_KEY)
            row = await cur.fetchone()
        assert row is not None
        return bytes(row[0])

    # -- writers and leadership -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def writer(
        self, targets: Collection[str], *, wait: float = 0.0, partial: bool = False
    ) -> AsyncIterator[frozenset[str]]:
        wanted = sorted(set(targets))
        if self._writers:
            lost = [t for t in wanted if t not in self._writing]
            if lost:
                raise StoreError(self._lost_message(lost))
            yield frozenset(wanted)
            return
        taken: list[str] = []
        self._writers += 1
        try:
            deadline = time.monotonic() + wait
            # In name order, each waited for in turn: two commands never hold one target each
            # while waiting for the other's.
            for target in wanted:
                key = lock_key(self.location.schema, "write", target)
                while not await self._try_lock(key):
                    if partial:
                        break
                    if time.monotonic() >= deadline:
                        raise StoreError(await self._busy_message(target, wait))
                    await asyncio.sleep(LOCK_POLL)
                    progress.step()  # a bounded wait, not a hang
                else:
                    taken.append(target)
                    self._writing.add(target)
            yield frozenset(taken)
        finally:
            self._writers -= 1
            for target in taken:
                if target in self._writing:
                    self._writing.discard(target)
                    with contextlib.suppress(StoreError):
                        await self._unlock(lock_key(self.location.schema, "write", target))

    async def join(self, role: Role) -> None:
        self._role = role
        async with self._cursor() as cur:
            await self._register(cur)
            if role != "daemon":
                return
            await cur.execute(
                "SELECT count(*) FROM replicas r JOIN pg_stat_activity a "
                "ON a.pid = r.backend_pid AND a.backend_start = r.backend_start "
                "WHERE r.role = 'daemon' AND r.replica_id = %s AND r.session <> %s",
                (self.replica, self._session),
            )
            row = await cur.fetchone()
        if row is not None and row[0]:
            raise StoreError(
                f"another live replica is called {self.replica} in the store "
                f"{self.location.shown}: give each replica its own RECONCILER_REPLICA_ID "
                "(or leave it unset: hostname-pid)"
            )

    async def replicas(self) -> list[str]:
        rows = await self._fetch(
            "SELECT DISTINCT r.replica_id FROM replicas r JOIN pg_stat_activity a "
            "ON a.pid = r.backend_pid AND a.backend_start = r.backend_start "
            "WHERE r.role = 'daemon' ORDER BY 1"
        )
        return [replica for (replica,) in rows]

    async def claim(self, target: str) -> bool:
        if target in self._owned:
            return True
        if await self._try_lock(lock_key(self.location.schema, "own", target)):
            self._owned.add(target)
            return True
        return False

    async def release(self, target: str) -> None:
        if target in self._owned:
            self._owned.discard(target)
            await self._unlock(lock_key(self.location.schema, "own", target))

    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    async def holders(self, targets: Collection[str]) -> dict[str, Holding]:
        keys: dict[tuple[int, int], tuple[str, str]] = {}
        for target in targets:
            for purpose in ("own", "write"):
                keys[_halves(lock_key(self.location.schema, purpose, target))] = (target, purpose)
        rows = await self._fetch(
            "SELECT l.classid::bigint, l.objid::bigint, l.pid, r.replica_id, r.role "
            "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "LEFT JOIN replicas r ON r.backend_pid = l.pid AND r.backend_start = a.backend_start "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        found: dict[str, dict[str, str]] = {t: {} for t in targets}
        for classid, objid, pid, replica, role in rows:
            hit = keys.get((classid, objid))
            if hit is not None:
                target, purpose = hit
                found[target][purpose] = _who(replica, role, pid)
        return {
            t: Holding(owner=held.get("own"), writer=held.get("write")) for t, held in found.items()
        }

    # -- plumbing ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Connect, migrate under a lock (replicas start together), register. Needs _lock."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.location.conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=f"reconciler {self.replica}"[:63],
                keepalives=1,
                keepalives_idle=KEEPALIVE_IDLE,
                keepalives_interval=KEEPALIVE_INTERVAL,
                keepalives_count=KEEPALIVE_COUNT,
                tcp_user_timeout=DEAD_PEER_SECONDS * 1000,
            )
        except psycopg.Error as exc:
            # libpq's message may quote the connection string: no chaining, scrubbed text.
            raise StoreError(
                f"cannot connect to the store {self.location.shown}: {self._text(exc)}"
            ) from None
        try:
            schema = sql.Identifier(self.location.schema)
            # The server's side of the keepalives: it notices a dead replica host by itself.
            await conn.execute(
                f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE}; "
                f"SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL}; "
                f"SET tcp_keepalives_count = {KEEPALIVE_COUNT}; "
                f"SET tcp_user_timeout = {DEAD_PEER_SECONDS * 1000}"
            )
            await self._migrate(conn)
            await conn.execute(sql.SQL("SET search_path TO {}").format(schema))
            async with conn.cursor() as cur:
                await self._register(cur)
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(
                f"cannot open the store {self.location.shown}: {self._text(exc)}"
            ) from exc
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _migrate(self, conn: Connection) -> None:
        """Bring the schema to this version, in one transaction under an advisory lock, so
        replicas starting together migrate once and in order."""
        schema = self.location.schema
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "migrate"),))
            await cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            # Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when
            # an administrator made the schema beforehand.
            if await cur.fetchone() is None:
                await cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            await cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            await cur.execute("SELECT MAX(version) FROM schema_version")
            row = await cur.fetchone()
            current = (row[0] if row else None) or 0
            known = migrations("postgres")
            if known and current > known[-1][0]:
                raise StoreError(
                    f"the store's schema is version {current}, newer than this reconciler knows "
                    f"({known[-1][0]}): upgrade reconciler"
                )
            for version, script in known:
                if version > current:
                    for statement in statements(script):
                        await cur.execute(statement)
                    await cur.execute(
                        "INSERT INTO schema_version (version) VALUES (%s)", (version,)
                    )

    async def _register(self, cur: psycopg.AsyncCursor[TupleRow]) -> None:
        """This process's row in `replicas`, tied to its server session; rows of sessions that
        ended are dropped, so the table lists live processes only."""
        await cur.execute(
            "INSERT INTO replicas (session, replica_id, role, backend_pid, backend_start, "
            "started_at, seen_at) SELECT %s, %s, %s, pid, backend_start, %s, %s "
            "FROM pg_stat_activity WHERE pid = pg_backend_pid() "
            "ON CONFLICT (session) DO UPDATE SET role = excluded.role, "
            "backend_pid = excluded.backend_pid, backend_start = excluded.backend_start, "
            "seen_at = excluded.seen_at",
            (self._session, self.replica, self._role, time.time(), time.time()),
        )
        await cur.execute(
            "DELETE FROM replicas r WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
            "WHERE a.pid = r.backend_pid AND a.backend_start = r.backend_start)"
        )

    @contextlib.asynccontextmanager
    async def _cursor(
        self, *, write_for: str | None = None
    ) -> AsyncIterator[psycopg.AsyncCursor[TupleRow]]:
        """A cursor in a transaction, alone on the connection; psycopg errors mapped.

        Inside a writer, only the targets it holds may be written: after a lost connection the
        server has released them, and another replica may be writing them already.
        """
        async with self._lock:
            conn = await self._live()
            if write_for is not None and self._writers and write_for not in self._writing:
                raise StoreError(self._lost_message([write_for]))
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self._drop_locks()
                raise StoreError(f"store {self.location.shown}: {self._text(exc)}") from exc

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[TupleRow]:
        async with self._cursor() as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def _try_lock(self, key: int) -> bool:
        async with self._cursor() as cur:
            await cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            row = await cur.fetchone()
        return bool(row and row[0])

    async def _unlock(self, key: int) -> None:
        async with self._cursor() as cur:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (key,))

    async def _live(self) -> Connection:
        """The connection; a lost one is replaced only outside writers (the locks it held are
        gone, and the writes under them must fail, not continue unlocked)."""
        conn = self._conn
        if conn is not None and not conn.broken and not conn.closed:
            return conn
        self._drop_locks()
        if self._writers:
            raise StoreError(
                f"store {self.location.shown}: the connection was lost; the next pass reconnects"
            )
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
            self._conn = None
        await self._connect()
        assert self._conn is not None
        return self._conn

    def _drop_locks(self) -> None:
        # The server released them with the session.
        self._owned.clear()
        self._writing.clear()

    def _lost_message(self, targets: Sequence[str]) -> str:
        return (
            f"target {', '.join(targets)}: this process no longer holds the writer lock (the "
            f"connection to the store {self.location.shown} was lost); the next pass takes it "
            "again"
        )

    async def _busy_message(self, target: str, waited: float) -> str:
        holding = (await self.holders([target]))[target]
        holder = holding.writer or "another process"
        return (
            f"target {target} is being written by {holder} (waited {waited:g} s); try again "
            "when it has finished, or raise RECONCILER_LOCK_WAIT"
        )

    def _text(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        for secret in self.location.secrets:
            text = text.replace(secret, "***")
        return text


def _who(replica: str | None, role: str | None, pid: int) -> str:
    if replica is None:
        return f"an unregistered session (server pid {pid})"
    return replica if role == "daemon" else f"{replica} (a command)"
