"""The executor's recording of a batch, through the real SQLite store: every outcome recorded
and logged, without holding the event loop for the whole batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler import executor, logs
from reconciler.core.changes import Action, Change, Reason, TargetPlan
from reconciler.errors import StoreError, TemporaryTargetError
from reconciler.store.sqlite import SqliteStore
from reconciler.targets import base as targets_base
from reconciler.targets.base import Outcome, pipelined, writes_pending


async def test_a_batch_s_change_lines_let_other_work_run_between_them(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    changes = [
        Change(action=Action.CREATE, person_id=f"{n:03d}", reason=Reason.INTENT, fingerprint="f")
        for n in range(100)
    ]
    report = executor.TargetReport(target="door")
    # What another task (an answer from the device, say) sees of the lines each time it runs.
    seen: list[int] = []
    try:
        with capture_logs() as captured:

            async def other_work() -> None:
                for _ in range(10_000):
                    seen.append(sum(1 for e in captured if e["event"] == "change.applied"))
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(other_work())
            outcomes = [Outcome(change=c, ok=True) for c in changes]
            await executor._record("door", outcomes, store, report)
            watcher.cancel()
        assert set(await store.ledger("door")) == {c.person_id for c in changes}
    finally:
        await store.aclose()
    assert report.applied == 100
    assert [e["person"] for e in captured] == [c.person_id for c in changes]
    assert any(0 < lines < 100 for lines in seen), "the batch's 100 lines were one step"


def _outcomes(*pids: str) -> list[Outcome]:
    return [
        Outcome(
            change=Change(action=Action.CREATE, person_id=p, reason=Reason.NEW, fingerprint="f"),
            ok=True,
        )
        for p in pids
    ]


async def test_batches_confirmed_while_the_last_were_recorded_come_together() -> None:
    async def confirmed() -> AsyncIterator[list[Outcome]]:
        for n in range(4):
            yield _outcomes(f"{n}a", f"{n}b")
            await asyncio.sleep(0)

    taken = []
    async for outcomes in executor._together(confirmed()):
        taken.append([o.change.person_id for o in outcomes])
        await asyncio.sleep(0.05)  # a slow ledger write: the other batches come meanwhile
    assert taken == [["0a", "0b"], ["1a", "1b", "2a", "2b", "3a", "3b"]]


async def test_an_error_of_the_target_comes_after_the_batches_confirmed_before_it() -> None:
    async def confirmed() -> AsyncIterator[list[Outcome]]:
        yield _outcomes("1")
        yield _outcomes("2")
        raise TemporaryTargetError("door", "stopped answering")

    taken: list[str] = []

    async def record_all() -> None:
        async for outcomes in executor._together(confirmed()):
            taken.extend(o.change.person_id for o in outcomes)
            await asyncio.sleep(0.01)

    with pytest.raises(TemporaryTargetError, match="stopped answering"):
        await record_all()
    assert taken == ["1", "2"]


async def test_confirmed_batches_waiting_for_the_ledger_are_bounded() -> None:
    produced = 0
    closed = asyncio.Event()

    async def confirmed() -> AsyncIterator[list[Outcome]]:
        nonlocal produced
        try:
            for n in range(1000):
                produced += 1
                yield _outcomes(str(n))
        finally:
            closed.set()

    together = executor._together(confirmed())
    try:
        first = await anext(together)
        await asyncio.sleep(0.05)  # the ledger write of these takes long
        # The target is made to wait once WAITING batches wait: its back-pressure holds it.
        assert len(first) <= executor.WAITING + 1
        assert produced - len(first) <= executor.WAITING + 1
    finally:
        await together.aclose()
    assert closed.is_set(), "the caller went away, but the target's batches were left open"
    assert produced < 1000


async def test_a_store_failing_mid_phase_ends_the_target_s_calls_at_once(tmp_path: Path) -> None:
    """The phase is over when the ledger cannot record: the target's batches are closed before
    the error leaves the executor, not when the collector gets to them."""
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    changes = tuple(
        Change(action=Action.CREATE, person_id=f"{n:03d}", reason=Reason.NEW, fingerprint="f")
        for n in range(50)
    )
    sent: list[str] = []
    closed = asyncio.Event()

    class Door:
        async def apply(
            self, planned: Sequence[Change], **_: object
        ) -> AsyncIterator[list[Outcome]]:
            try:
                for change in planned:
                    sent.append(change.person_id)
                    yield [Outcome(change=change, ok=True)]
                    await asyncio.sleep(0)
            finally:
                closed.set()

    async def failing(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    store.record = failing  # type: ignore[method-assign]
    try:
        plan = TargetPlan(target="door", kind="nebula_pass", changes=changes)
        with pytest.raises(StoreError, match="disk full"):
            await executor.apply(plan, Door(), store)  # type: ignore[arg-type]
        assert closed.is_set()
        calls = len(sent)
        await asyncio.sleep(0.05)
        assert len(sent) == calls < len(changes)
    finally:
        await store.aclose()


@pytest.mark.parametrize("answer_after", [0, 0.002])
async def test_the_ledger_waits_for_requests_just_sent_to_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer_after: float
) -> None:
    """Sends go first: while a request of any target may not be written out yet, the executor
    neither records nor logs (it would hold the write back while a slot stands idle). A device
    that answers at once meets the recording as it starts; one that takes a while meets its
    change lines; a request begun while the store wrote meets the first of them."""
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    changes = tuple(
        Change(action=Action.CREATE, person_id=f"{n:04d}", reason=Reason.NEW, fingerprint="f")
        for n in range(4000)
    )
    recorded_while_pending: list[bool] = []
    record = store.record

    async def watched(*args: object, **kwargs: object) -> None:
        recorded_while_pending.append(writes_pending())
        await record(*args, **kwargs)  # type: ignore[arg-type]
        # A slot's next request begins as the store's thread hands back (as pipelined marks
        # one): the lines of what was just recorded wait for its write too.
        targets_base._writes().begun(asyncio.get_running_loop())

    class Door:
        async def apply(
            self, planned: Sequence[Change], **_: object
        ) -> AsyncIterator[list[Outcome]]:
            async def send(batch: list[Change]) -> list[Outcome]:
                await asyncio.sleep(answer_after)
                return [Outcome(change=c, ok=True) for c in batch]

            batches = (list(planned[i : i + 100]) for i in range(0, len(planned), 100))
            async for outcomes in pipelined(batches, None, send, 4):
                yield outcomes

    logged_while_pending: list[bool] = []
    change_lines = logs.change_lines

    def logged(*args: Any, **kwargs: Any) -> None:
        logged_while_pending.append(writes_pending())
        change_lines(*args, **kwargs)

    monkeypatch.setattr(logs, "change_lines", logged)
    store.record = watched  # type: ignore[method-assign]
    try:
        plan = TargetPlan(target="door", kind="nebula_pass", changes=changes)
        report = await executor.apply(plan, Door(), store)  # type: ignore[arg-type]
    finally:
        await store.aclose()
    assert report.applied == len(changes)
    assert recorded_while_pending, "nothing was recorded"
    assert not any(recorded_while_pending)
    assert len(logged_while_pending) >= len(changes) // executor.LINES_PER_STEP
    assert not any(logged_while_pending)
