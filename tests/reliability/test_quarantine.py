"""The target tier: a target whose calls mostly fail is quarantined as a whole, left alone while
its back-off runs, probed when it runs out, and leaves quarantine by itself once it answers.

Passes run as the daemon runs them (cycle.plan with back-off, then cycle.apply) against a
terminal whose device answers every request with 503, beside a healthy one.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from structlog.testing import capture_logs

from reconciler import cycle
from reconciler.app import App
from reconciler.core.quarantine import FIRST_DELAY, QUARANTINE_AFTER
from reconciler.daemon.running import target_pass
from reconciler.daemon.status import PassOutcome, Status
from reconciler.simulators.base import Faults, serve
from tests.reliability import NEBULA, assert_holds_exactly, target_settings
from tests.reliability.test_fault_matrix import SEED, Site, initial_persons


async def daemon_pass(app: App) -> cycle.PassReport:
    return await cycle.apply(app, await cycle.plan(app, backoff=True))


async def run_out(app: App, name: str) -> None:
    """The quarantine's back-off runs out (time passes, in the store's terms)."""
    health = (await app.store.health())[name]
    await app.store.record_health(name, dataclasses.replace(health, until=time.time() - 1))


async def test_a_failing_target_is_quarantined_left_alone_and_recovers(tmp_path: Path) -> None:
    healthy = NEBULA.simulator(Faults(seed=SEED))
    sick = NEBULA.simulator(Faults(seed=SEED, error_rate=1.0))
    site = Site(tmp_path)
    async with await serve(healthy) as good, await serve(sick) as bad:
        site.write(
            {
                "terminal": target_settings(NEBULA, good.url),
                "lobby": target_settings(NEBULA, bad.url),
            },
            initial_persons(),
        )
        async with site.app() as app:
            with capture_logs() as logs:
                for number in range(1, QUARANTINE_AFTER + 1):
                    report = await daemon_pass(app)
                    assert report.health["lobby"].failing_passes == number
                    assert report.health["terminal"].healthy
            entered = [e for e in logs if e["event"] == "target.quarantined"]
            assert [e["target"] for e in entered] == ["lobby"]
            health = (await app.store.health())["lobby"]
            assert health.quarantined(time.time())
            assert health.until is not None
            assert health.until - time.time() <= FIRST_DELAY
            assert "503" in health.error

            # Quarantined: not a single request, while the other target goes on.
            asked = len(sick.log.entries)
            plan = await cycle.plan(app, backoff=True)
            assert plan.targets["lobby"].quarantined
            assert plan.targets["terminal"].error is None
            report = await cycle.apply(app, plan)
            assert len(sick.log.entries) == asked
            assert {t.target: t.skipped for t in report.targets}["lobby"] == "quarantined"
            shown = Status(interval=60, dry_run=False)
            shown.last_pass = PassOutcome(
                number=4,
                started_at=time.time(),
                finished_at=time.time(),
                duration=0.0,
                result="partial",
                dry_run=False,
                targets={
                    "lobby": target_pass(
                        plan.targets["lobby"], None, 0, dry_run=False, health=health
                    )
                },
            )
            lobby = shown.document()["targets"]["lobby"]
            assert lobby["result"] == "quarantined"
            assert lobby["health"]["quarantined"] is True
            assert lobby["health"]["failing_passes"] == QUARANTINE_AFTER

            # A failed probe: the next quarantine is twice as long.
            await run_out(app, "lobby")
            report = await daemon_pass(app)
            assert len(sick.log.entries) > asked
            probed = report.health["lobby"]
            assert probed.quarantines == 2
            assert probed.until is not None
            assert probed.until - time.time() > FIRST_DELAY

            # The device is back: the next probe finds it and the quarantine ends by itself.
            sick.faults.error_rate = 0.0
            await run_out(app, "lobby")
            with capture_logs() as logs:
                report = await daemon_pass(app)
            assert report.health["lobby"].healthy
            assert await app.store.health() == {}
            assert [e["target"] for e in logs if e["event"] == "target.recovered"] == ["lobby"]
            assert_holds_exactly(sick, initial_persons())
            assert not (await cycle.plan(app, backoff=True)).has_changes


async def test_an_operator_apply_tries_a_quarantined_target(tmp_path: Path) -> None:
    """`reconciler apply` is an operator asking now: the quarantine does not hold it back,
    and a pass that works ends the quarantine for the daemon too."""
    sick = NEBULA.simulator(Faults(seed=SEED, error_rate=1.0))
    site = Site(tmp_path)
    async with await serve(sick) as bad:
        site.write({"lobby": target_settings(NEBULA, bad.url)}, initial_persons())
        async with site.app() as app:
            for _ in range(QUARANTINE_AFTER):
                await daemon_pass(app)
            assert (await app.store.health())["lobby"].quarantined(time.time())
            sick.faults.error_rate = 0.0
            plan = await cycle.plan(app)
            assert not plan.targets["lobby"].quarantined
            assert plan.targets["lobby"].health.quarantined(time.time())
            report = await cycle.apply(app, plan)
            assert report.health["lobby"].healthy
            assert await app.store.health() == {}
            assert_holds_exactly(sick, initial_persons())
