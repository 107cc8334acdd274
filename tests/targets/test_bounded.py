"""targets.base.bounded: the concurrency every adapter reads and writes with."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.targets.base import bounded, pipelined

#: Every wait here ends: a piece of work that never finishes fails the test by this time.
DEADLINE = 5.0


async def test_the_next_piece_starts_while_the_caller_still_holds_a_result() -> None:
    started: list[int] = []
    gates = {n: asyncio.Event() for n in range(6)}

    async def work(n: int) -> int:
        started.append(n)
        await asyncio.wait_for(gates[n].wait(), DEADLINE)
        return n

    results = bounded(range(6), work, 2)
    gates[0].set()
    first = await asyncio.wait_for(anext(results), DEADLINE)
    assert first == 0
    # While we "record" result 0, pieces 1 and 2 are in flight: never more than the limit.
    await asyncio.sleep(0)
    assert started == [0, 1, 2]
    gates[1].set()
    await asyncio.sleep(0.01)  # 1 finishes while nobody asks for it: 3 starts anyway
    assert started == [0, 1, 2, 3]
    for gate in gates.values():
        gate.set()
    rest = [n async for n in results]
    assert sorted([first, *rest]) == list(range(6))


@pytest.mark.parametrize("prepared", [False, True])
async def test_a_slot_sends_its_next_item_in_the_step_its_last_answer_came_in(
    prepared: bool,
) -> None:
    """No turn of the event loop between an answer and the next send of that slot: in a turn,
    whatever else is due runs first (recording results, preparing bodies)."""
    turns = 0
    began: dict[int, int] = {}
    answered: dict[int, int] = {}

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def ready_at_once(n: int) -> int:
        return n

    async def send(n: int) -> int:
        began[n] = turns
        await asyncio.sleep(0.002)
        answered[n] = turns
        return n

    counter = asyncio.create_task(count_turns())
    try:
        prepare = ready_at_once if prepared else None
        done = [n async for n in pipelined(range(6), prepare, send, 1)]
    finally:
        counter.cancel()
    assert done == list(range(6))
    assert all(began[n + 1] == answered[n] for n in range(5)), (began, answered)


async def test_finished_results_waiting_for_the_caller_hold_new_work_back() -> None:
    started: list[int] = []

    async def work(n: int) -> int:
        started.append(n)
        return n

    results = bounded(range(100), work, 2)
    assert await asyncio.wait_for(anext(results), DEADLINE) in (0, 1)
    await asyncio.sleep(0.01)
    assert len(started) <= 5  # two in flight, two waiting, one taken
    assert len([n async for n in results]) == 99


async def test_once_stopped_nothing_new_starts_and_what_runs_is_yielded() -> None:
    stop = asyncio.Event()
    started: list[int] = []

    async def work(n: int) -> int:
        started.append(n)
        if n == 1:
            stop.set()
        await asyncio.sleep(0.01)
        return n

    done = [n async for n in bounded(range(10), work, 3, stop=stop)]
    assert sorted(done) == sorted(started)
    assert started == [0, 1]  # the third slot had not started its first piece yet


async def test_a_failing_piece_fails_the_whole_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def work(n: int) -> int:
        if n == 0:
            await asyncio.sleep(0.01)  # the others are in flight by then
            raise ValueError("boom")
        try:
            await asyncio.sleep(DEADLINE)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    with pytest.raises(ValueError, match="boom"):
        async for _ in bounded(range(10), work, 3):
            pass
    assert sorted(cancelled) == [1, 2]


async def test_items_are_prepared_ahead_and_a_free_slot_takes_a_prepared_one() -> None:
    """While `limit` sends are in flight, the next items are prepared, so that a slot that
    frees is taken without waiting for a prepare; sends go out in the items' order."""
    prepared: list[int] = []
    sent: list[int] = []
    gates = {n: asyncio.Event() for n in range(8)}

    async def prepare(n: int) -> str:
        prepared.append(n)
        return f"body {n}"

    async def send(body: str) -> str:
        sent.append(int(body.split()[1]))
        await asyncio.wait_for(gates[int(body.split()[1])].wait(), DEADLINE)
        return body

    results = pipelined(range(8), prepare, send, 2)
    pending = asyncio.ensure_future(anext(results))
    for _ in range(20):
        await asyncio.sleep(0)
    assert sent == [0, 1]  # never more than the limit in flight
    assert prepared == [0, 1, 2, 3]  # two in flight, two prepared and waiting
    gates[0].set()
    assert await asyncio.wait_for(pending, DEADLINE) == "body 0"
    await asyncio.sleep(0)
    assert sent == [0, 1, 2]
    for gate in gates.values():
        gate.set()
    rest = [body async for body in results]
    assert sorted(rest) == [f"body {n}" for n in range(1, 8)]
    assert sent == list(range(8))


async def test_once_stopped_a_prepared_item_is_not_sent() -> None:
    stop = asyncio.Event()
    prepared: list[int] = []
    sent: list[int] = []

    async def prepare(n: int) -> int:
        prepared.append(n)
        return n

    async def send(n: int) -> int:
        sent.append(n)
        if n == 1:
            stop.set()
        await asyncio.sleep(0.01)
        return n

    done = [n async for n in pipelined(range(10), prepare, send, 2, stop=stop)]
    assert sorted(done) == sent == [0, 1]
    assert len(prepared) > len(sent)  # prepared ahead, never sent


async def test_a_failing_prepare_fails_the_whole_and_sends_nothing_after_it() -> None:
    sent: list[int] = []

    async def prepare(n: int) -> int:
        if n == 2:
            raise ValueError("photo unreadable")
        return n

    async def send(n: int) -> int:
        sent.append(n)
        await asyncio.sleep(0.01)
        return n

    with pytest.raises(ValueError, match="photo unreadable"):
        async for _ in pipelined(range(10), prepare, send, 2):
            pass
    assert sent == [0, 1]


async def test_a_stop_while_only_prepares_are_running_ends_the_run() -> None:
    """Nothing in flight, the next prepare slow: setting `stop` ends the run once it is done,
    and nothing is sent."""
    stop = asyncio.Event()
    sent: list[int] = []

    async def prepare(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    async def send(n: int) -> int:
        sent.append(n)
        return n

    stop.set()
    done = [n async for n in pipelined(range(4), prepare, send, 2, stop=stop)]
    assert done == sent == []


@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_a_started_send_writes_its_request_before_any_prepare_or_caller_work(
    limit: int,
) -> None:
    """As aiohttp does on Python 3.11, each send writes its request from a task of its own,
    queued as the send starts: no prepare or work of the caller's may run in between."""
    events: list[str] = []

    async def prepare(n: int) -> int:
        events.append(f"prepare {n}")
        return n

    async def send(n: int) -> int:
        events.append(f"send {n}")
        written = asyncio.Event()

        async def write() -> None:
            events.append(f"write {n}")
            written.set()

        writer = asyncio.ensure_future(write())
        await asyncio.wait_for(written.wait(), DEADLINE)
        await writer
        for _ in range(n % 3):  # answers come back in an order of their own
            await asyncio.sleep(0)
        return n

    async for n in pipelined(range(12), prepare, send, limit):
        events.append(f"record {n}")  # the caller's work on a result, in one step

    assert sorted(e for e in events if e.startswith("write")) == sorted(
        f"write {n}" for n in range(12)
    )
    for n in range(12):
        between = events[events.index(f"send {n}") + 1 : events.index(f"write {n}")]
        assert not [e for e in between if not e.startswith(("send", "write"))], (n, between)
