"""The executor's recording of a batch, through the real SQLite store: every outcome recorded
and logged, without holding the event loop for the whole batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from reconciler import executor
from reconciler.core.changes import Action, Change, Reason
from reconciler.store.sqlite import SqliteStore
from reconciler.targets.base import Outcome


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
