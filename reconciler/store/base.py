"""The store's contract, which every backend keeps (SQLite, PostgreSQL), and what they share.

The ledger, attempts, target health, passes and the fingerprint key, plus the primitives of
leadership: which replica owns a target (spread over replicas) and who writes it now (one at a
time). Defines types and reads the packaged migrations; no other I/O.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol

import orjson

from reconciler import logs
from reconciler.core.changes import Attempt
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.core.quarantine import Health

#: Bytes of the key that makes fingerprints unguessable (a plain hash of a pin is the pin).
KEY_BYTES = 32
#: Pass records kept: about a week of passes at the default interval, bounded for years of
#: unattended running.
PASSES_KEPT = 10_000

#: What a process using the store is: a daemon (`reconciler run`, counted as a replica) or a
#: command (`apply`, `adopt`: it may write, but takes no share of the targets).
Role = Literal["daemon", "command"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PassRecord:
    id: int
    started_at: float
    finished_at: float | None
    mode: str
    result: str | None
    plan_fingerprint: str | None
    summary: Mapping[str, Any] | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Holding:
    """Who holds a target: the replica it is assigned to, and who is writing it right now."""

    #: The daemon replica the target is assigned to; None: nobody (yet).
    owner: str | None = None
    #: Whoever holds its writer lock now (a replica in a pass, or `reconciler apply`).
    writer: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settled:
    """A target's last settled plan (see cycle): the key of everything it was computed from,
    its document (core.changes.settled_document), and until when (epoch seconds) the target's
    change feed may stand in for reading the target."""

    key: str
    plan: Mapping[str, Any]
    expires_at: float


def settled_of(row: Sequence[Any]) -> Settled | None:
    """A settled_plans row as read; None when its plan is not a JSON object (a miss)."""
    key, text, expires_at = row
    try:
        plan = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(plan, dict):
        return None
    return Settled(key=key, plan=plan, expires_at=float(expires_at))


def default_replica_id() -> str:
    """hostname-pid: unique among live processes, readable in /status and in lock errors."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Store(Protocol):
    """What the executor, the pass and the daemon need from a store."""

    #: This process, as /status and lock errors name it.
    replica: str
    #: Whether several processes may share the store and spread its targets between them.
    shared: bool

    async def aclose(self) -> None: ...

    # -- the ledger ---------------------------------------------------------------------------

    async def ledger(self, target: str) -> Mapping[str, LedgerEntry]: ...

    async def ledger_version(self, target: str) -> Hashable:
        """A token equal between two calls only if the target's ledger and department ledger
        are unchanged in between (whoever wrote them): a plan computed from them still holds."""
        ...

    async def managed(self) -> dict[str, int]:
        """Ledger entries per target: the persons reconciler owns on each."""
        ...

    async def mark_pending(self, target: str, person_ids: Iterable[str]) -> None:
        """Write-ahead: these persons are about to be created; own them before sending."""
        ...

    async def adopt(self, target: str, remote_ids: Mapping[str, str | None]) -> None:
        """Take persons found on a target into the ledger, pending, on an operator's request."""
        ...

    async def record(
        self, target: str, applied: Sequence[LedgerEntry], deleted: Sequence[str] = ()
    ) -> None:
        """Confirmed outcomes, in one transaction: applied records and confirmed deletes."""
        ...

    async def forget(self, target: str, person_ids: Sequence[str]) -> None:
        """Drop ledger rows of persons gone from both the target and the desired state."""
        ...

    async def departments(self, target: str) -> dict[str, DepartmentEntry]: ...

    async def record_departments(
        self, target: str, applied: Sequence[DepartmentEntry], deleted: Sequence[str] = ()
    ) -> None: ...

    # -- attempts, target health, passes ------------------------------------------------------

    async def attempts(self, target: str) -> dict[str, Attempt]: ...

    async def record_attempts(
        self, target: str, failed: Sequence[Attempt], succeeded: Sequence[str] = ()
    ) -> None: ...

    async def health(self) -> dict[str, Health]: ...

    async def record_health(self, target: str, health: Health) -> None: ...

    # -- settled plans ------------------------------------------------------------------------

    async def settled(self, target: str) -> Settled | None:
        """The target's last settled plan as remembered; None when there is none."""
        ...

    async def remember_settled(self, target: str, settled: Settled) -> None:
        """Keep a settled plan in place of the target's last one."""
        ...

    async def begin_pass(self, mode: str) -> int: ...

    async def finish_pass(
        self,
        pass_id: int,
        *,
        result: str,
        plan_fingerprint: str | None,
        summary: Mapping[str, Any],
        error: str | None = None,
    ) -> None: ...

    async def passes(self, limit: int = 20) -> list[PassRecord]: ...

    async def fingerprint_key(self) -> bytes:
        """The installation's key for keyed fingerprints; made once, kept with the ledger."""
        ...

    # -- writers and leadership -----------------------------------------------------------------

    def writer(
        self, targets: Collection[str], *, wait: float = 0.0, partial: bool = False
    ) -> AbstractAsyncContextManager[frozenset[str]]:
        """The exclusive right to write these targets, yielding the ones obtained.

        Waits up to `wait` seconds for targets someone else is writing, then raises StoreError
        naming the holder; with `partial`, yields at once the targets that are free instead.
        Re-entrant: targets an enclosing writer holds are kept, not taken again.
        """
        ...

    async def join(self, role: Role) -> None:
        """Register this process (a daemon becomes a replica); reconnects after a lost
        connection, which dropped every lock this process held."""
        ...

    async def replicas(self) -> list[str]:
        """The live daemon replicas, this one included once it has joined."""
        ...

    async def claim(self, target: str) -> bool:
        """Become the target's owner if nobody is; True if this replica owns it now."""
        ...

    async def release(self, target: str) -> None:
        """Stop owning a target (another replica may claim it)."""
        ...

    def owned(self) -> frozenset[str]:
        """The targets this replica owns now (none after a lost connection)."""
        ...

    async def holders(self, targets: Collection[str]) -> dict[str, Holding]:
        """Who owns and who writes each of these targets."""
        ...


# The statements both backends run, written once: '?' marks each parameter (the PostgreSQL
# store puts its own '%s' in their place; no statement here has either character otherwise).


@dataclass(frozen=True, slots=True)
class Upsert:
    """Rows into `table`. A row whose `key` is there already is left alone, or with `update`
    has every other column set from the new row; `kept` columns keep their stored value when
    the new one is NULL."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: bool = False
    kept: tuple[str, ...] = ()

    @property
    def head(self) -> str:
        """INSERT INTO table (columns) VALUES"""
        return f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES"

    @property
    def tail(self) -> str:
        """ON CONFLICT (key) DO ..."""
        conflict = f"ON CONFLICT ({', '.join(self.key)})"
        if not self.update:
            return f"{conflict} DO NOTHING"
        sets = ", ".join(
            f"{c} = COALESCE(excluded.{c}, {self.table}.{c})"
            if c in self.kept
            else f"{c} = excluded.{c}"
            for c in self.columns
            if c not in self.key
        )
        return f"{conflict} DO UPDATE SET {sets}"

    def statement(self, rows: int = 1, mark: str = "?") -> str:
        """The whole statement for `rows` rows, each parameter marked by `mark`."""
        one = "(" + ", ".join([mark] * len(self.columns)) + ")"
        return f"{self.head} {', '.join([one] * rows)} {self.tail}"


_PERSON_KEY = ("target", "person_id")
#: Write-ahead: a person about to be created is owned before it is sent.
PENDING = Upsert("ledger", ("target", "person_id", "applied_at"), _PERSON_KEY)
#: Persons an operator adopts: owned, their content unknown.
ADOPTED = Upsert("ledger", ("target", "person_id", "remote_id", "applied_at"), _PERSON_KEY)
#: Confirmed outcomes (ledger_row); a target that answers no id keeps the one known.
LEDGER = Upsert(
    "ledger",
    ("target", "person_id", "remote_id", "fingerprint", "written", "refs", "applied_at"),
    _PERSON_KEY,
    update=True,
    kept=("remote_id",),
)
#: Confirmed department outcomes (department_row).
DEPARTMENTS = Upsert(
    "department_ledger",
    ("target", "department_id", "parent", "fingerprint", "applied_at"),
    ("target", "department_id"),
    update=True,
)
#: Failed changes and their next try (attempt_row).
ATTEMPTS = Upsert(
    "attempts",
    ("target", "person_id", "fingerprint", "failures", "next_try", "error"),
    _PERSON_KEY,
    update=True,
)
#: An unhealthy target (health_row).
HEALTH = Upsert(
    "target_health",
    ("target", "failing_passes", "since", "until", "quarantines", "error"),
    ("target",),
    update=True,
)
#: A target's last settled plan (settled_row).
SETTLED = Upsert("settled_plans", ("target", "key", "plan", "expires_at"), ("target",), update=True)

READ_LEDGER = (
    "SELECT person_id, remote_id, fingerprint, written, refs, applied_at FROM ledger "
    "WHERE target = ? ORDER BY person_id"
)
READ_MANAGED = "SELECT target, COUNT(*) FROM ledger GROUP BY target"
#: Read by departments_of.
READ_DEPARTMENTS = (
    "SELECT department_id, parent, fingerprint, applied_at FROM department_ledger "
    "WHERE target = ? ORDER BY department_id"
)
#: Read by attempts_of.
READ_ATTEMPTS = (
    "SELECT person_id, fingerprint, failures, next_try, error FROM attempts WHERE target = ?"
)
#: Read by health_of.
READ_HEALTH = (
    "SELECT target, failing_passes, since, until, quarantines, error "
    "FROM target_health ORDER BY target"
)
#: Read by settled_of.
READ_SETTLED = "SELECT key, plan, expires_at FROM settled_plans WHERE target = ?"
#: Read by passes_of.
READ_PASSES = (
    "SELECT id, started_at, finished_at, mode, result, plan_fingerprint, summary, error "
    "FROM passes ORDER BY id DESC LIMIT ?"
)
#: Takes finished_row.
PASSES_FINISHED = (
    "UPDATE passes SET finished_at = ?, result = ?, plan_fingerprint = ?, summary = ?, "
    "error = ? WHERE id = ?"
)
FORGET_HEALTH = "DELETE FROM target_health WHERE target = ?"
PASSES_PRUNED = "DELETE FROM passes WHERE id <= ?"
KEY_ADDED = (
    "INSERT INTO meta (key, value) VALUES ('fingerprint_key', ?) ON CONFLICT (key) DO NOTHING"
)
READ_KEY = "SELECT value FROM meta WHERE key = 'fingerprint_key'"


# Rows as both backends write them, in the columns' order above.


def pending_rows(target: str, person_ids: Iterable[str], now: float) -> list[tuple[Any, ...]]:
    return [(target, pid, now) for pid in person_ids]


def adopted_rows(
    target: str, remote_ids: Mapping[str, str | None], now: float
) -> list[tuple[Any, ...]]:
    return [(target, pid, remote_id, now) for pid, remote_id in remote_ids.items()]


def department_row(target: str, entry: DepartmentEntry) -> tuple[Any, ...]:
    return (target, entry.department_id, entry.parent, entry.fingerprint, entry.applied_at)


def attempt_row(target: str, attempt: Attempt) -> tuple[Any, ...]:
    """The error redacted: it may quote a target's answer."""
    return (
        target,
        attempt.person_id,
        attempt.fingerprint,
        attempt.failures,
        attempt.next_try,
        logs.redact(attempt.error),
    )


def health_row(target: str, health: Health) -> tuple[Any, ...]:
    return (
        target,
        health.failing_passes,
        health.since,
        health.until,
        health.quarantines,
        logs.redact(health.error),
    )


def settled_row(target: str, settled: Settled) -> tuple[Any, ...]:
    return (target, settled.key, orjson.dumps(settled.plan).decode(), settled.expires_at)


def finished_row(
    pass_id: int,
    finished_at: float,
    result: str,
    plan_fingerprint: str | None,
    summary: Mapping[str, Any],
    error: str | None,
) -> tuple[Any, ...]:
    """PASSES_FINISHED's parameters; the summary and error redacted."""
    return (
        finished_at,
        result,
        plan_fingerprint,
        orjson.dumps(logs.redact(summary)).decode(),
        logs.redact(error),
        pass_id,
    )


def ledger_row(target: str, entry: LedgerEntry) -> tuple[Any, ...]:
    """A ledger entry as both backends store it: (target, person_id, remote_id, fingerprint,
    written, refs, applied_at), the mappings as sorted JSON text."""
    return (
        target,
        entry.person_id,
        entry.remote_id,
        entry.fingerprint,
        _json_text(entry.written),
        _json_text(entry.refs),
        entry.applied_at,
    )


def _json_text(mapping: Mapping[str, str]) -> str:
    # Mostly empty (a person without a photo, a kind without references): no encoder for it.
    if not mapping:
        return "{}"
    return orjson.dumps(dict(mapping), option=orjson.OPT_SORT_KEYS).decode()


# Rows as both backends select them (the columns in the order read here) into core values.


def departments_of(rows: Iterable[Sequence[Any]]) -> dict[str, DepartmentEntry]:
    """From (department_id, parent, fingerprint, applied_at)."""
    return {
        did: DepartmentEntry(department_id=did, parent=parent, fingerprint=fp, applied_at=at)
        for did, parent, fp, at in rows
    }


def attempts_of(rows: Iterable[Sequence[Any]]) -> dict[str, Attempt]:
    """From (person_id, fingerprint, failures, next_try, error)."""
    return {
        pid: Attempt(person_id=pid, fingerprint=fp, failures=failures, next_try=at, error=error)
        for pid, fp, failures, at, error in rows
    }


def passes_of(rows: Iterable[Sequence[Any]]) -> list[PassRecord]:
    """From (id, started_at, finished_at, mode, result, plan_fingerprint, summary, error)."""
    return [
        PassRecord(
            id=row[0],
            started_at=row[1],
            finished_at=row[2],
            mode=row[3],
            result=row[4],
            plan_fingerprint=row[5],
            summary=orjson.loads(row[6]) if row[6] else None,
            error=row[7],
        )
        for row in rows
    ]


def health_of(rows: Iterable[Sequence[Any]]) -> dict[str, Health]:
    """From (target, failing_passes, since, until, quarantines, error)."""
    return {
        target: Health(
            failing_passes=failing, since=since, until=until, quarantines=count, error=error
        )
        for target, failing, since, until, count, error in rows
    }


def migrations(dialect: Literal["sqlite", "postgres"]) -> list[tuple[int, str]]:
    """The schema migrations shipped in the package for a dialect, in order.

    Version numbers count per dialect: the PostgreSQL schema has tables SQLite does not need.
    """
    folder = resources.files("reconciler.store") / "migrations"
    if dialect == "postgres":
        folder = folder / "postgres"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def statements(script: str) -> list[str]:
    """Split a migration into statements (our migrations never put ';' inside literals)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
