"""The executor: applies one target's plan and records every confirmed outcome at once.

Order: creates / updates / replaces, then deletes last. Each create's pending row (the
write-ahead) is written before the call that carries it, while earlier calls are in flight; the
batches the target confirms are written to the ledger as soon as the last write ends, all those
confirmed meanwhile in one transaction, so a crash loses at most the batches in flight or
waiting, which the next pass re-plans (upserts are keyed by our id: nothing is duplicated).
I/O through the target and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import cast

import structlog

from reconciler import logs
from reconciler.core import attempts as backoff
from reconciler.core.changes import (
    UPSERTS,
    Action,
    Attempt,
    Change,
    DepartmentChange,
    TargetPlan,
    change_document,
    department_document,
    split,
)
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.errors import TargetError
from reconciler.store.base import Store
from reconciler.targets.base import DepartmentTarget, Outcome, Target, after_writes

log = structlog.get_logger("reconciler.executor")

#: Change lines written in one step of the event loop. A batch's 100 lines took a millisecond,
#: which the answers of the other calls in flight waited out before their next call could start.
LINES_PER_STEP = 20
#: Confirmed batches that may wait for the ledger before the target is made to wait too.
WAITING = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    #: The person, or for a department change "department:<id>".
    person_id: str
    action: Action
    error: str


@dataclass(slots=True, kw_only=True)
class TargetReport:
    """What applying one target's plan did."""

    target: str
    applied: int = 0
    #: Applied changes by action (create, update, replace, delete).
    applied_by_action: dict[str, int] = field(default_factory=dict)
    #: Applied department changes by action (kinds with departments).
    departments_applied: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    #: Why the target was not applied at all (suspended, unobservable).
    skipped: str | None = None
    #: Changes never started because the process is stopping; the next pass plans them again.
    interrupted: int = 0
    #: Failed changes' back-off so far, by person (loaded once per apply, kept current).
    attempts: dict[str, Attempt] = field(default_factory=dict)
    #: Person changes sent to the target, and those that failed in a way worth retrying: the
    #: target's verdict for core.quarantine.
    attempted: int = 0
    retryable_failures: int = 0
    #: The target failed as a whole part-way (it stopped answering), not one change.
    target_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.skipped is None


async def apply(
    plan: TargetPlan, target: Target, store: Store, *, stop: asyncio.Event | None = None
) -> TargetReport:
    """Apply one target's plan; a failing target returns failures, it never raises.

    Once `stop` is set, nothing new is started; what is in flight finishes and is recorded.
    """
    report = TargetReport(target=plan.target)
    if plan.error is not None:
        report.skipped = f"not observed: {plan.error}"
        return report
    if plan.suspended:
        report.skipped = "suspended"
        log.info("target.suspended", target=plan.target, changes=len(plan.changes))
        return report
    if plan.quarantined:
        report.skipped = "quarantined"
        return report
    if plan.forget:
        await store.forget(plan.target, plan.forget)
    if plan.refresh:
        now = time.time()
        await store.record(
            plan.target,
            [
                LedgerEntry(
                    person_id=r.person_id,
                    remote_id=r.remote_id,
                    fingerprint=r.fingerprint,
                    written=r.written,
                    refs=r.refs,
                    applied_at=now,
                )
                for r in plan.refresh
            ],
        )
    settled = [r.person_id for r in plan.refresh] + list(plan.forget)
    if settled:
        # Their failures are moot: the target holds the record, or the person is gone.
        await store.record_attempts(plan.target, [], settled)
    if plan.changes:
        report.attempts = await store.attempts(plan.target)

    upserts, deletes = split(plan.changes, UPSERTS, {Action.DELETE}, present=plan.actions)
    # Departments exist before the persons placed in them, and go after the persons leave.
    await _apply_departments(
        [d for d in plan.departments if d.action is not Action.DELETE], target, store, report, stop
    )
    for phase in (upserts, deletes):
        if phase:
            await _apply_phase(phase, target, store, report, stop)
    await _apply_departments(
        [d for d in plan.departments if d.action is Action.DELETE], target, store, report, stop
    )
    return report


async def _apply_departments(
    changes: Sequence[DepartmentChange],
    target: Target,
    store: Store,
    report: TargetReport,
    stop: asyncio.Event | None,
) -> None:
    if not changes:
        return
    name = report.target
    if stop is not None and stop.is_set():
        report.interrupted += len(changes)
        return
    try:
        outcomes = await cast(DepartmentTarget, target).apply_departments(changes)
    except TargetError as exc:
        report.target_error = exc.message
        for change in changes:
            _department_failed(name, report, change, exc.message)
        return
    now = time.time()
    await store.record_departments(
        name,
        [
            DepartmentEntry(
                department_id=o.change.department_id,
                parent=o.change.parent,
                fingerprint=o.change.fingerprint,
                applied_at=now,
            )
            for o in outcomes
            if o.ok and o.change.action is not Action.DELETE
        ],
        [o.change.department_id for o in outcomes if o.ok and o.change.action is Action.DELETE],
    )
    answered = set()
    for outcome in outcomes:
        answered.add(outcome.change.department_id)
        if outcome.ok:
            action = outcome.change.action.value
            report.departments_applied[action] = report.departments_applied.get(action, 0) + 1
            log.info("department.applied", target=name, **department_document(outcome.change))
        else:
            _department_failed(name, report, outcome.change, outcome.error or "failed")
    report.interrupted += sum(1 for c in changes if c.department_id not in answered)


def _department_failed(
    name: str, report: TargetReport, change: DepartmentChange, error: str
) -> None:
    report.failures.append(
        Failure(person_id=f"department:{change.department_id}", action=change.action, error=error)
    )
    log.warning(
        "department.failed",
        target=name,
        action=change.action.value,
        department=change.department_id,
        error=error,
    )


async def _apply_phase(
    changes: Sequence[Change],
    target: Target,
    store: Store,
    report: TargetReport,
    stop: asyncio.Event | None,
) -> None:
    name = report.target
    if stop is not None and stop.is_set():
        report.interrupted += len(changes)
        return
    answered: set[str] = set()
    report.attempted += len(changes)
    ahead = _WriteAhead(store, name, changes)
    try:
        # Closed on the way out, whatever ends the phase (a failing store, say): no call is
        # sent for a phase that is over.
        confirmed = _together(target.apply(changes, stop=stop, before=ahead.before))
        async with contextlib.aclosing(confirmed):
            async for outcomes in confirmed:
                await _record(name, outcomes, store, report)
                answered.update(map(_person_of, outcomes))
    except TargetError as exc:
        # A target that fails mid-way fails what it did not confirm; the rest stays recorded.
        unanswered = [c for c in changes if c.person_id not in answered]
        report.target_error = exc.message
        for change in unanswered:
            _failed(name, report, change, exc.message)
        await _note_attempts(name, store, report, [(c, exc.message) for c in unanswered], [])
        return
    finally:
        await ahead.settled()
    # A plan has one change a person: counted, not looked up (25 ms for 100 000 changes).
    interrupted = len(changes) - len(answered)
    report.interrupted += interrupted
    report.attempted -= interrupted


@dataclass(frozen=True, slots=True)
class _End:
    #: What ended the target's batches early; None: they all came.
    error: Exception | None = None


async def _together(
    batches: AsyncIterator[list[Outcome]],
) -> AsyncGenerator[list[Outcome], None]:
    """The target's confirmed batches, those confirmed while the last were recorded together.

    A ledger transaction costs about as much for one batch as for several (a turn of the store's
    thread, a commit), and while the event loop was busy one batch's took 5-8 ms. Four calls in
    flight confirm a batch every 5 ms, so recorded one at a time they queued up until the
    target's back-pressure held its calls back. They are read on by a task of their own, up to
    WAITING batches; an error ends them once the batches before it are taken.
    """
    queue: asyncio.Queue[list[Outcome] | _End] = asyncio.Queue(maxsize=WAITING)

    async def read() -> None:
        end = _End()
        try:
            async for outcomes in batches:
                await queue.put(outcomes)
        except Exception as exc:  # raised to the caller in its turn, as the target raised it
            end = _End(exc)
        finally:
            # Closed here even when the caller goes away while a batch waits for room.
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()
        await queue.put(end)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            taken = [await queue.get()]
            while not queue.empty():
                taken.append(queue.get_nowait())
            outcomes: list[Outcome] = []
            end: _End | None = None
            for item in taken:
                if isinstance(item, _End):
                    end = item
                else:
                    outcomes.extend(item)
            if outcomes:
                yield outcomes
            if end is not None:
                if end.error is not None:
                    raise end.error
                return
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class _WriteAhead:
    """A phase's creates are owned (a pending row each) before the call that carries them.

    The rows are written in the plan's order, ahead of the calls: a new run starts while fewer
    rows are written ahead than have been asked for (up to RUN_AHEAD), and reaches as far again,
    so a call in plan order finds its rows written and waits for nothing; the first call waits
    for its own rows alone. The plan is walked as it is sent, never indexed up front.
    """

    RUN_AHEAD = 1000

    def __init__(self, store: Store, target: str, changes: Sequence[Change]) -> None:
        self._store = store
        self._target = target
        self._changes = changes
        #: Each create whose row is written or being written: the write that covers it.
        self._writes: dict[str, asyncio.Future[None]] = {}
        self._runs: list[asyncio.Future[None]] = []
        self._next = 0  # the changes before this index are covered, or are not creates
        self._asked = 0  # creates asked for so far

    async def before(self, batch: Sequence[Change]) -> None:
        create = Action.CREATE
        creates = [c.person_id for c in batch if c.action is create]
        self._asked += len(creates)
        covering = set(map(self._writes.get, creates))
        if None in covering:
            covering.discard(None)
            covering.add(self._write([pid for pid in creates if pid not in self._writes]))
        if self._next < len(self._changes) and (
            len(self._writes) - self._asked < min(self.RUN_AHEAD, self._asked)
        ):
            self._write([])
        for write in covering:
            assert write is not None
            await asyncio.shield(write)  # one caller giving up must not undo another's rows

    async def settled(self) -> None:
        """Every run finished: none outlives the apply. A run that no call waited for carried
        no call, so its failure changes nothing sent; the records that follow it report a
        failing store."""
        await asyncio.gather(*self._runs, return_exceptions=True)

    def _write(self, missing: list[str]) -> asyncio.Future[None]:
        """One transaction: the rows asked for, the uncovered creates the plan puts before them,
        and as many after them as are covered so far (up to RUN_AHEAD)."""
        run = list(missing)
        wanted = set(missing)
        ahead = min(self.RUN_AHEAD, len(self._writes))
        changes = self._changes
        while self._next < len(changes) and (wanted or ahead > 0):
            change = changes[self._next]
            self._next += 1
            pid = change.person_id
            if change.action is not Action.CREATE or pid in self._writes:
                continue
            if pid in wanted:
                wanted.discard(pid)
                continue
            run.append(pid)
            if not wanted:
                ahead -= 1
        write = asyncio.ensure_future(self._store.mark_pending(self._target, run))
        self._runs.append(write)
        for pid in run:
            self._writes[pid] = write
        return write


_person_of = attrgetter("change.person_id")


async def _record(
    name: str, outcomes: Sequence[Outcome], store: Store, report: TargetReport
) -> None:
    # Sends go first: a request just sent is written before this work, which held writes back
    # 0.2-0.5 ms on average in a first sync when it ran in between (targets.base.after_writes).
    await after_writes()
    now = time.time()
    applied: list[LedgerEntry] = []
    deleted: list[str] = []
    done: list[Change] = []
    failed: list[Outcome] = []
    delete = Action.DELETE
    # One walk over the outcomes: this runs between the calls of a first sync, 100 000 times.
    for outcome in outcomes:
        change = outcome.change
        if not outcome.ok:
            failed.append(outcome)
            continue
        done.append(change)
        if change.action is delete:
            deleted.append(change.person_id)
        else:
            applied.append(
                LedgerEntry(
                    person_id=change.person_id,
                    remote_id=outcome.remote_id or change.remote_id,
                    fingerprint=change.fingerprint,
                    written=change.written,
                    refs=outcome.refs if outcome.refs is not None else change.refs,
                    applied_at=now,
                )
            )
    await store.record(name, applied, deleted)
    await _note_attempts(
        name,
        store,
        report,
        [(o.change, o.error or "failed") for o in failed],
        [c.person_id for c in done],
    )
    by_action = report.applied_by_action
    for action, count in Counter(map(attrgetter("action"), done)).items():
        by_action[action.value] = by_action.get(action.value, 0) + count
    report.applied += len(done)
    for start in range(0, len(done), LINES_PER_STEP):
        # A request begun while the store wrote, or while the last lines were logged and the
        # responses that came in meanwhile were read, is written first.
        await after_writes()
        logs.change_lines(
            "reconciler.executor",
            "change.applied",
            done[start : start + LINES_PER_STEP],
            target=name,
        )
        await asyncio.sleep(0)  # a response that arrived meanwhile goes first
    for outcome in failed:
        _failed(
            name, report, outcome.change, outcome.error or "failed", retryable=outcome.retryable
        )


async def _note_attempts(
    name: str,
    store: Store,
    report: TargetReport,
    failed: Sequence[tuple[Change, str]],
    succeeded: Sequence[str],
) -> None:
    """Failed changes wait out a growing back-off; a success forgets the person's failures."""
    now = time.time()
    noted = [
        backoff.next_attempt(change, error, report.attempts.get(change.person_id), now)
        for change, error in failed
    ]
    cleared = [pid for pid in succeeded if pid in report.attempts]
    await store.record_attempts(name, noted, cleared)
    for attempt in noted:
        report.attempts[attempt.person_id] = attempt
    for pid in cleared:
        del report.attempts[pid]


def _failed(
    name: str, report: TargetReport, change: Change, error: str, *, retryable: bool = True
) -> None:
    report.failures.append(Failure(person_id=change.person_id, action=change.action, error=error))
    if retryable:
        report.retryable_failures += 1
    # The change's plan document too: in apply mode no change.planned line came before.
    log.warning(
        "change.failed", target=name, **change_document(change), error=error, retryable=retryable
    )
