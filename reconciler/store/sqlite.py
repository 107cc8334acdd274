"""The embedded store: one SQLite file in the state directory. File I/O on one worker thread.

Confirmed batches are written whole, in one ledger transaction, so a crash leaves the ledger
agreeing with the targets. Creates are written ahead as pending rows before they are sent, so a
crash between send and confirmation leaves the person owned, not orphaned. Errors written here
are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import itertools
import os
import secrets
import sqlite3
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson

from reconciler import progress
from reconciler.core.changes import Attempt
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.core.quarantine import Health
from reconciler.errors import StoreError
from reconciler.store import base
from reconciler.store.base import (
    KEY_BYTES,
    Holding,
    PassRecord,
    Role,
    Settled,
    default_replica_id,
)

_T = TypeVar("_T")

#: How often a writer waiting for the file lock tries again.
_LOCK_POLL = 0.2


class Ledger(Mapping[str, LedgerEntry]):
    """One target's ledger rows as read, each turned into a LedgerEntry when looked up."""

    __slots__ = ("_parsed", "_rows")

    def __init__(self, rows: dict[str, tuple[Any, ...]]) -> None:
        self._rows = rows
        # Most rows repeat a few JSON texts (no photo, no refs): each is parsed once and
        # shared, read-only, by the entries that carry it.
        self._parsed: dict[str, Any] = {}

    def __getitem__(self, person_id: str) -> LedgerEntry:
        pid, remote_id, fingerprint, written, refs, applied_at = self._rows[person_id]
        return LedgerEntry(
            person_id=pid,
            remote_id=remote_id,
            fingerprint=fingerprint,
            written=self._json(written),
            refs=self._json(refs),
            applied_at=applied_at,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, person_id: object) -> bool:
        return person_id in self._rows

    def _json(self, text: str) -> Any:
        found = self._parsed.get(text)
        if found is None:
            found = self._parsed[text] = orjson.loads(text)
        return found


def migrations() -> list[tuple[int, str]]:
    """The SQLite schema migrations shipped in the package, in order."""
    return base.migrations("sqlite")


class SqliteStore:
    """The ledger and passes in `<state_dir>/reconciler.sqlite3` (or any sqlite:/// path)."""

    shared = False

    def __init__(self, path: Path, *, replica: str | None = None) -> None:
        self.path = path
        self.replica = replica or default_replica_id()
        self._owned: set[str] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self._lock_file: int | None = None

    @classmethod
    async def open(cls, path: Path, *, replica: str | None = None) -> Self:
        store = cls(path, replica=replica)
        try:
            await store._run(store._connect)
        except BaseException:
            await store.aclose()
            raise
        return store

    async def aclose(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)
        self._release_lock()

    # -- ledger ---------------------------------------------------------------------------

    async def ledger(self, target: str) -> Mapping[str, LedgerEntry]:
        """The target's ledger, person id order. Entries are built when looked up: a pass
        that finds most persons settled never builds theirs."""

        def read(db: sqlite3.Connection) -> Ledger:
            return Ledger({row[0]: row for row in db.execute(base.READ_LEDGER, (target,))})

        return await self._with_db(read)

    async def ledger_version(self, target: str) -> int:
        """The target's counter in ledger_versions, which triggers move on every write to its
        ledger or department ledger, by any connection: equal tokens, equal ledgers, across
        processes too (and across a restore from a backup, which restores both)."""

        def read(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT version FROM ledger_versions WHERE target = ?", (target,)
            ).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._with_db(read)

    async def managed(self) -> dict[str, int]:
        """Ledger entries per target: the persons reconciler owns on each."""

        def read(db: sqlite3.Connection) -> dict[str, int]:
            return dict(db.execute(base.READ_MANAGED))

        return await self._with_db(read)

    async def mark_pending(self, target: str, person_ids: Iterable[str]) -> None:
        """Write-ahead: these persons are about to be created; own them before sending."""
        rows = base.pending_rows(target, person_ids, time.time())
        if rows:
            await self._transaction(lambda db: _insert(db, base.PENDING, rows))

    async def adopt(self, target: str, remote_ids: Mapping[str, str | None]) -> None:
        """Take persons found on a target into the ledger, on an operator's request.

        They are owned from now on but their content is unknown (pending), so the next pass
        brings each to its desired state, write-only fields (photos) included.
        """
        rows = base.adopted_rows(target, remote_ids, time.time())
        if rows:
            await self._transaction(lambda db: _insert(db, base.ADOPTED, rows))

    async def record(
        self, target: str, applied: Sequence[LedgerEntry], deleted: Sequence[str] = ()
    ) -> None:
        """Confirmed outcomes, in one transaction: applied records and confirmed deletes."""
        if not applied and not deleted:
            return

        def write(db: sqlite3.Connection) -> None:
            # The rows are made here, in the store's thread: the event loop has calls to send.
            _insert(db, base.LEDGER, [base.ledger_row(target, e) for e in applied])
            _delete(db, "ledger", "person_id", target, deleted)

        await self._transaction(write)

    async def forget(self, target: str, person_ids: Sequence[str]) -> None:
        """Drop ledger rows of persons gone from both the target and the desired state."""
        await self.record(target, (), person_ids)

    async def departments(self, target: str) -> dict[str, DepartmentEntry]:
        """The departments we created on a target (kinds with departments)."""

        def read(db: sqlite3.Connection) -> dict[str, DepartmentEntry]:
            return base.departments_of(db.execute(base.READ_DEPARTMENTS, (target,)))

        return await self._with_db(read)

    async def record_departments(
        self, target: str, applied: Sequence[DepartmentEntry], deleted: Sequence[str] = ()
    ) -> None:
        """Confirmed department outcomes, in one transaction."""
        if not applied and not deleted:
            return
        upserts = [base.department_row(target, e) for e in applied]

        def write(db: sqlite3.Connection) -> None:
            _insert(db, base.DEPARTMENTS, upserts)
            _delete(db, "department_ledger", "department_id", target, deleted)

        await self._transaction(write)

    # -- attempts -------------------------------------------------------------------------

    async def attempts(self, target: str) -> dict[str, Attempt]:
        """Failed changes of a target waiting out their back-off."""

        def read(db: sqlite3.Connection) -> dict[str, Attempt]:
            return base.attempts_of(db.execute(base.READ_ATTEMPTS, (target,)))

        return await self._with_db(read)

    async def record_attempts(
        self, target: str, failed: Sequence[Attempt], succeeded: Sequence[str] = ()
    ) -> None:
        """Failures with their next try; a success clears the person's attempt."""
        if not failed and not succeeded:
            return
        rows = [base.attempt_row(target, a) for a in failed]

        def write(db: sqlite3.Connection) -> None:
            _insert(db, base.ATTEMPTS, rows)
            _delete(db, "attempts", "person_id", target, succeeded)

        await self._transaction(write)

    # -- target health ----------------------------------------------------------------------

    async def health(self) -> dict[str, Health]:
        """Targets that are failing or quarantined (core.quarantine); the rest are healthy."""

        def read(db: sqlite3.Connection) -> dict[str, Health]:
            return base.health_of(db.execute(base.READ_HEALTH))

        return await self._with_db(read)

    async def record_health(self, target: str, health: Health) -> None:
        """A target's health after a pass; a healthy target's row is removed."""

        def write(db: sqlite3.Connection) -> None:
            if health.healthy:
                db.execute(base.FORGET_HEALTH, (target,)).close()
            else:
                db.execute(base.HEALTH.statement(), base.health_row(target, health)).close()

        await self._transaction(write)

    # -- settled plans ----------------------------------------------------------------------

    async def settled(self, target: str) -> Settled | None:
        """The target's last settled plan as remembered; None when there is none."""

        def read(db: sqlite3.Connection) -> Settled | None:
            row = db.execute(base.READ_SETTLED, (target,)).fetchone()
            return base.settled_of(row) if row is not None else None

        return await self._with_db(read)

    async def remember_settled(self, target: str, settled: Settled) -> None:
        """Keep a settled plan in place of the target's last one."""
        row = base.settled_row(target, settled)
        await self._transaction(lambda db: db.execute(base.SETTLED.statement(), row).close())

    # -- passes ---------------------------------------------------------------------------

    async def begin_pass(self, mode: str) -> int:
        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO passes (started_at, mode) VALUES (?, ?)", (time.time(), mode)
            )
            assert cursor.lastrowid is not None
            db.execute(base.PASSES_PRUNED, (cursor.lastrowid - base.PASSES_KEPT,))
            return cursor.lastrowid

        return await self._transaction(write)

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
        await self._transaction(lambda db: db.execute(base.PASSES_FINISHED, row).close())

    async def passes(self, limit: int = 20) -> list[PassRecord]:
        def read(db: sqlite3.Connection) -> list[PassRecord]:
            return base.passes_of(db.execute(base.READ_PASSES, (limit,)))

        return await self._with_db(read)

    # -- the fingerprint key, the writer lock ----------------------------------------------

    async def fingerprint_key(self) -> bytes:
        """The installation's key for keyed fingerprints; made once, kept with the ledger."""

        def read_or_make(db: sqlite3.Connection) -> bytes:
            row = db.execute(base.READ_KEY).fetchone()
            if row is None:
                db.execute(base.KEY_ADDED, (secrets.token_bytes(KEY_BYTES),)).close()
                row = db.execute(base.READ_KEY).fetchone()
            return bytes(row[0])

        return await self._transaction(read_or_make)

    @contextlib.asynccontextmanager
    async def writer(
        self, targets: Collection[str], *, wait: float = 0.0, partial: bool = False
    ) -> AsyncIterator[frozenset[str]]:
        """Exclusive right to apply: two applies on one store file never interleave.

        One lock for the whole file, whatever the targets: a busy store is an error even with
        `partial` (there is nothing to share out).
        """
        if self._lock_file is not None:
            yield frozenset(targets)
            return
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() < deadline:
                    await asyncio.sleep(_LOCK_POLL)
                    progress.step()  # a bounded wait, not a hang
                    continue
                os.close(fd)
                holder = lock_path.read_text(encoding="utf-8").strip() or "another process"
                waited = f" (waited {wait:g} s)" if wait else ""
                raise StoreError(
                    f"another reconciler ({holder}) is applying with this store ({self.path}); "
                    f"wait for it to finish{waited}"
                ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_file = fd
        try:
            yield frozenset(targets)
        finally:
            self._release_lock()

    # One process writes a SQLite store at a time, so a replica owns whatever it is given.

    async def join(self, role: Role) -> None:
        return None

    async def replicas(self) -> list[str]:
        return [self.replica]

    async def claim(self, target: str) -> bool:
        self._owned.add(target)
        return True

    async def release(self, target: str) -> None:
        self._owned.discard(target)

    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    async def holders(self, targets: Collection[str]) -> dict[str, Holding]:
        writer = self.replica if self._lock_file is not None else None
        return {
            t: Holding(owner=self.replica if t in self._owned else None, writer=writer)
            for t in targets
        }

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            os.close(self._lock_file)
            self._lock_file = None

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            # NORMAL with WAL survives process crashes; only an OS crash may lose the last
            # transactions, which the next pass re-plans from the targets' truth.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA busy_timeout = 5000")
            self._migrate(db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        self._db = db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        known = migrations()
        if known and current > known[-1][0]:
            raise StoreError(
                f"the store's schema is version {current}, newer than this reconciler knows "
                f"({known[-1][0]}): upgrade reconciler"
            )
        for version, script in known:
            if version > current:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(script):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise

    async def _run(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def _with_db(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            if self._db is None:
                raise StoreError("the store is closed")
            try:
                result = work(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc
            if isinstance(result, sqlite3.Cursor):
                raise TypeError("store work must not return a cursor")
            return result

        return await self._run(call)

    async def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def call(db: sqlite3.Connection) -> _T:
            with _transaction(db):
                return work(db)

        return await self._with_db(call)


def _statements(script: str) -> Iterator[str]:
    """A migration's statements: a trigger's body has ';' of its own, so a statement ends where
    SQLite's own tokenizer says it is complete."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip(" \n;"):
        yield pending.strip()


#: Rows one statement writes: SQLite's thread takes the GIL back after each step, and a row a
#: step (executemany) made 100 ledger rows take 90 ms while the event loop was busy, against
#: 11 ms as one statement. 100 rows of 7 columns stay under SQLite's oldest limit of 999
#: parameters; a fixed size keeps the statement cache warm.
ROWS_PER_STATEMENT = 100


def _insert(db: sqlite3.Connection, upsert: base.Upsert, rows: Sequence[tuple[Any, ...]]) -> None:
    """The rows, ROWS_PER_STATEMENT to a statement."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = list(itertools.chain.from_iterable(chunk))
        db.execute(_statement(upsert, len(chunk)), values).close()


@functools.lru_cache(maxsize=64)
def _statement(upsert: base.Upsert, rows: int) -> str:
    return upsert.statement(rows)


def _delete(db: sqlite3.Connection, table: str, key: str, target: str, ids: Sequence[str]) -> None:
    """The target's rows of `table` whose `key` is one of `ids`, ROWS_PER_STATEMENT at a time."""
    for start in range(0, len(ids), ROWS_PER_STATEMENT):
        chunk = ids[start : start + ROWS_PER_STATEMENT]
        marks = ", ".join("?" * len(chunk))
        db.execute(
            f"DELETE FROM {table} WHERE target = ? AND {key} IN ({marks})",  # noqa: S608
            [target, *chunk],
        ).close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
