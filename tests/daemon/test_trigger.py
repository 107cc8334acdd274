"""The trigger coalesces: any number of requests become one pending pass."""

from __future__ import annotations

import asyncio

from reconciler.daemon.trigger import Trigger


async def test_requests_collapse_into_one_pass_with_every_reason() -> None:
    trigger = Trigger()
    for reason in ("interval", "webhook", "interval", "sighup"):
        trigger.request(reason)
    assert await trigger.wait() == ("interval", "webhook", "sighup")
    assert not trigger.pending


async def test_requests_during_a_pass_make_exactly_one_follow_up() -> None:
    trigger = Trigger()
    trigger.request("startup")
    passes: list[tuple[str, ...]] = []

    async def worker() -> None:
        while reasons := await trigger.wait():
            passes.append(reasons)
            if len(passes) == 1:
                for _ in range(5):
                    trigger.request("webhook")  # arrives while the first pass runs
                await asyncio.sleep(0)
            else:
                trigger.close()

    await asyncio.wait_for(worker(), 5)
    assert passes == [("startup",), ("webhook",)]


async def test_close_ends_the_worker_and_ignores_later_requests() -> None:
    trigger = Trigger()
    trigger.close()
    trigger.request("interval")
    assert await asyncio.wait_for(trigger.wait(), 5) == ()
