"""`reconciler run`: the daemon's composition and its single worker.

One worker runs passes one at a time (the same pass code as `apply`). Passes are requested by the
interval schedule, by edits of the desired files, by SIGHUP and by POST /reconcile; requests
during a pass collapse into one follow-up pass. An invalid edit is refused: the last good desired
state stays in use, and the error is logged and shown on /readyz and /status. persons_from
sources are read on every pass (their data changes without any file changing); a source that
fails or is slow is treated like an invalid edit, until a read succeeds again. SIGTERM lets the
batches in flight finish and be recorded, then exits 0. I/O through everything it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import structlog

from reconciler import app as composition
from reconciler import cycle, progress
from reconciler.app import App, Validated
from reconciler.core.changes import Plan, TargetPlan
from reconciler.core.quarantine import HEALTHY, Health
from reconciler.daemon import server, watching
from reconciler.daemon.leadership import Leadership
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.notify import Notifier
from reconciler.daemon.scheduling import Schedule
from reconciler.daemon.status import (
    FAILURES_SHOWN,
    FOREIGN_SHOWN,
    DesiredView,
    FailureView,
    PassOutcome,
    PassResult,
    Status,
    TargetPass,
    TargetResult,
)
from reconciler.daemon.trigger import Trigger
from reconciler.errors import DesiredError, ReconcilerError
from reconciler.executor import TargetReport
from reconciler.settings import Settings
from reconciler.sources import sql, yamlfile
from reconciler.targets.http import Backoff

log = structlog.get_logger("reconciler.daemon")

#: How long the watcher may take to notice it must stop.
WATCH_STOP_TIMEOUT = 5.0
#: Before READY=1 (a long first sync), the service manager's start timeout is extended by this.
START_EXTENSION = 120.0


class Daemon:
    """The long-running reconciler."""

    def __init__(
        self,
        settings: Settings,
        *,
        desired_path: Path,
        dry_run: bool,
        interval: float,
        targets: Collection[str] = (),
        only: Collection[str] | None = None,
        backoff: Backoff | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.desired_path = desired_path
        self.dry_run = dry_run
        self.interval = interval
        self.targets = targets
        self.only = only
        self.backoff = backoff
        self.notifier = notifier or Notifier()
        self.status = Status(
            interval=interval, dry_run=dry_run, stall_timeout=settings.stall_timeout
        )
        self.metrics = Metrics()
        self.trigger = Trigger()
        self._stopping: asyncio.Event | None = None
        self._signature: str | None = None
        #: The newest valid state of the files (it may wait for its sources to be readable).
        self._files: Validated | None = None
        #: False while an edit of the files waits for its sources to be read.
        self._files_in_use = True
        #: A refused edit's problems, shown until the files change; a failed read's, until
        #: the next read.
        self._file_problems: tuple[str, ...] = ()
        self._source_problems: tuple[str, ...] = ()
        self._reader = sql.Reader()
        self.leadership: Leadership | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; 0 after a clean stop, 1 if it could not start."""
        self._stopping = asyncio.Event()
        try:
            opened = composition.open_app(
                self.settings,
                desired_path=self.desired_path,
                targets=self.targets,
                backoff=self.backoff,
            )
            async with opened as app:
                return await self._serve(app)
        except DesiredError as exc:
            # No last good state to fall back on: refuse to start, loudly.
            log.error("desired.invalid", problems=[str(p) for p in exc.problems])
            raise

    def _check_stall_timeout(self, app: App) -> None:
        """A stall timeout one step of a pass may outlast (a slow target's request with its
        back-off, a slow persons_from query) would restart a daemon waiting on it as it should:
        say so, at start and whenever the desired state changes."""
        stall = self.settings.stall_timeout
        if not stall:
            return
        backoff = (self.backoff or Backoff()).maximum
        waits = [
            (f"a request to target {name}, with its back-off", t.settings.timeout + backoff)
            for name, t in app.targets.items()
        ]
        waits += [
            (f"the persons_from query at {s.source}:{s.line}", s.timeout)
            for s in app.desired.loaded.persons_from
        ]
        if not waits:
            return
        what, longest = max(waits, key=lambda wait: wait[1])
        if stall <= longest:
            log.warning(
                "settings.stall_timeout_short",
                stall_timeout=stall,
                longest_step=longest,
                step=what,
                advice=f"{what} may take {longest:g} s, and a pass waiting on it would be "
                f"taken as hung: raise RECONCILER_STALL_TIMEOUT above that, or set it to 0",
            )

    async def _serve(self, app: App) -> int:
        assert self._stopping is not None
        self._check_stall_timeout(app)
        self._files = app.desired
        leadership = self.leadership = Leadership(app.store, active=not self.dry_run)
        self._signature = await asyncio.to_thread(self._current_signature)
        self._show_desired(app)
        self._show_problems()
        listening = await server.start(
            server.make_app(
                self.status,
                self.trigger,
                self.metrics,
                webhook_secret=self.settings.webhook_secret.get_secret_value()
                if self.settings.webhook_secret
                else None,
            ),
            self.settings.listen,
        )
        schedule = Schedule(self.trigger, self.interval)
        watch_stop = asyncio.Event()
        watcher = asyncio.create_task(
            watching.watch(self.desired_path, self.trigger, watch_stop), name="watcher"
        )
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        # Replicas sharing a store take over targets nobody owns between passes, too.
        leader = None
        if app.store.shared and not self.dry_run:
            leader = asyncio.create_task(
                leadership.watch(
                    lambda: list(app.targets),
                    lambda: self.trigger.request("takeover"),
                    watch_stop,
                    self.settings.leadership_check,
                ),
                name="leadership",
            )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.trigger.request, "sighup")
        log.info(
            "daemon.started",
            listen=listening.url,
            desired=str(self.desired_path),
            interval=self.interval,
            dry_run=self.dry_run,
            targets=sorted(app.targets),
            replica=app.store.replica,
        )
        schedule.start()
        self.trigger.request("startup")
        try:
            await self._work(app)
        finally:
            schedule.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            watch_stop.set()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(watcher, WATCH_STOP_TIMEOUT)
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if leader is not None:
                await leader
            await listening.close()
        log.info("daemon.stopped", passes=self.status.passes)
        return 0

    def stop(self) -> None:
        """SIGTERM: start nothing new, let what is in flight finish and be recorded, exit."""
        if self._stopping is None or self._stopping.is_set():
            return
        log.info("daemon.stopping", in_pass=self.status.in_pass)
        self.notifier.send("STOPPING=1")
        self._stopping.set()
        self.trigger.close()

    async def _work(self, app: App) -> None:
        while reasons := await self.trigger.wait():
            await self._pass(app, reasons)
            last = self.status.last_pass
            assert last is not None
            state = f"STATUS=pass {last.number}: {last.result}"
            if self.status.passes == 1:
                self.notifier.send("READY=1", state)
            else:
                self.notifier.send(state)

    async def _heartbeat(self) -> None:
        """WATCHDOG=1 while the event loop runs and no pass stands still (Status.liveness);
        before the first pass has finished, also extend the start timeout, since a first sync
        may take long. A stalled pass gets neither: the service manager restarts the process."""
        interval = self.notifier.watchdog_interval or 30.0
        stalled = False
        while True:
            alive, reason = self.status.liveness(progress.steps(), time.monotonic())
            if not alive:
                if not stalled:
                    log.error("daemon.stalled", reason=reason)
                    self.notifier.send(f"STATUS=stalled: {reason}")
                stalled = True
            else:
                if stalled:
                    log.info("daemon.moving")
                    self.notifier.send("STATUS=moving again")
                stalled = False
                if self.status.passes == 0:
                    usec = int(max(START_EXTENSION, 2 * interval) * 1_000_000)
                    self.notifier.send(f"EXTEND_TIMEOUT_USEC={usec}", "STATUS=first pass running")
                if self.notifier.watchdog_interval is not None:
                    self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- one pass ----------------------------------------------------------------------------

    async def _pass(self, app: App, reasons: tuple[str, ...]) -> None:
        assert self.leadership is not None
        number = self.status.passes + 1
        started_wall, started = time.time(), time.monotonic()
        self.status.pass_began(progress.steps(), started)
        log.info("pass.started", number=number, reasons=list(reasons), dry_run=self.dry_run)
        plan: Plan | None = None
        targets: dict[str, TargetPass] = {}
        error: str | None = None
        result: PassResult
        try:
            await self._refresh_desired(app)
            held = await self.leadership.hold(app.targets)
            plan = await cycle.plan(app, only=self.only, backoff=True, targets=held)
            health = {name: tp.health for name, tp in plan.targets.items()}
            if self.dry_run:
                cycle.log_plan(plan, mode="dry-run")
                reports: dict[str, TargetReport] = {}
                result = "partial" if plan.has_errors else "ok"
            else:
                report = await cycle.apply(app, plan, stop=self._stopping)
                reports = {r.target: r for r in report.targets}
                health.update(report.health)
                result = report.result
            managed = await app.store.managed()
            targets = {
                name: target_pass(
                    tp,
                    reports.get(name),
                    managed.get(name, 0),
                    dry_run=self.dry_run,
                    health=health[name],
                )
                for name, tp in plan.targets.items()
            }
        except ReconcilerError as exc:
            result, error = "failed", str(exc)
            log.error("pass.failed", number=number, error=error)
        except Exception:
            # A bug must not end the daemon (the next pass may well succeed); it must be loud.
            result, error = "failed", "internal error; see the pass.crashed log line"
            log.exception("pass.crashed", number=number)
        finally:
            self.status.in_pass = False
            await self.leadership.let_go(app.targets)
        finished = time.monotonic()
        outcome = PassOutcome(
            number=number,
            started_at=started_wall,
            finished_at=started_wall + (finished - started),
            duration=finished - started,
            result=result,
            dry_run=self.dry_run,
            reasons=reasons,
            targets=targets,
            plan_fingerprint=plan.fingerprint if plan is not None else None,
            error=error,
        )
        self.status.passes = number
        self.status.last_pass = outcome
        self.status.leadership = self.leadership.view
        self.metrics.record_pass(outcome)
        self.metrics.set_leadership(self.leadership.view)
        log.info(
            "pass.finished",
            number=number,
            result=result,
            duration=round(outcome.duration, 3),
            planned=plan.summary() if plan is not None else None,
            applied=sum(sum(t.applied.values()) for t in targets.values()),
            failed=sum(sum(t.failed.values()) for t in targets.values()),
        )

    async def _refresh_desired(self, app: App) -> None:
        """Re-read the files when they changed, refusing an invalid edit; read the persons_from
        sources on every pass, keeping the last good state while they fail."""
        assert self._files is not None
        current: str | None
        try:
            current = await asyncio.to_thread(self._current_signature)
        except DesiredError as exc:
            # Unreadable files: once they are back, whatever they hold is loaded afresh.
            current = self._signature = None
            self._file_problems = self._refuse(exc)
        if current is not None and current != self._signature:
            self._signature = current  # refused once; reported until the files change again
            try:
                self._files = await asyncio.to_thread(
                    composition.validate, self.desired_path, hasher=app.hasher, cache=app.parsed
                )
            except DesiredError as exc:
                self._file_problems = self._refuse(exc)
            else:
                progress.step()  # a large desired state may take a while to validate
                self._file_problems, self._files_in_use = (), False
                # Photos named since: a change to one of them is a change of the files.
                self._signature = await asyncio.to_thread(self._current_signature)
        candidate: Validated | None = self._files
        self._source_problems = ()
        if self._files.loaded.persons_from:
            try:
                candidate = await composition.read_sources(
                    self._files, hasher=app.hasher, reader=self._reader
                )
            except DesiredError as exc:
                candidate = None
                self._source_problems = self._refuse(exc)
        if candidate is not None and (
            not self._files_in_use
            or candidate.loaded.desired.digest != app.desired.loaded.desired.digest
        ):
            await app.replace_desired(candidate)
            self._files_in_use = True
            self._check_stall_timeout(app)
            self._show_desired(app)
            log.info(
                "desired.loaded",
                files=list(candidate.loaded.files),
                parsed=list(candidate.loaded.parsed),
                persons=len(candidate.loaded.desired.persons),
                targets=sorted(app.targets),
            )
        self._show_problems()

    def _current_signature(self) -> str:
        assert self._files is not None
        loaded = self._files.loaded
        # The files' own photos only: the sources' photos are looked at on every read anyway.
        persons = (loaded.inline if loaded.inline is not None else loaded.desired).persons
        return yamlfile.signature(
            self.desired_path, (p.photo.path for p in persons.values() if p.photo)
        )

    def _show_desired(self, app: App) -> None:
        loaded = app.desired.loaded
        self.status.desired = DesiredView(
            files=loaded.files,
            digest=loaded.desired.digest,
            persons=len(loaded.desired.persons),
            loaded_at=time.time(),
        )

    def _refuse(self, exc: DesiredError) -> tuple[str, ...]:
        problems = tuple(str(p) for p in exc.problems)
        log.error("desired.invalid", problems=list(problems), kept=self.status.desired.digest)
        return problems

    def _show_problems(self) -> None:
        """The refused edit and the failed read, if any, on /readyz, /status and /metrics."""
        problems = self._file_problems + self._source_problems
        summary = None
        if problems:
            summary = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}: {problems[0]}"
        self.status.desired = dataclasses.replace(
            self.status.desired, error=summary, problems=problems
        )
        self.metrics.set_desired(not problems)


def target_pass(
    plan: TargetPlan,
    report: TargetReport | None,
    managed: int,
    *,
    dry_run: bool,
    health: Health = HEALTHY,
) -> TargetPass:
    """What one pass did to one target, for /status and the metrics."""
    failed = Counter(f.action.value for f in report.failures) if report else Counter[str]()
    applied = dict(report.applied_by_action) if report else {}
    result: TargetResult
    if plan.quarantined:
        result = "quarantined"
    elif plan.error is not None:
        result = "unobservable"
    elif plan.suspended:
        result = "suspended"
    elif dry_run or report is None:
        result = "dry-run"
    elif report.failures and not report.applied:
        result = "failed"
    elif report.failures or report.interrupted:
        result = "partial"
    else:
        result = "ok"
    return TargetPass(
        target=plan.target,
        kind=plan.kind,
        result=result,
        planned=plan.planned,
        applied=applied,
        failed=dict(failed),
        drift=plan.drift,
        held=len(plan.held),
        held_reason=plan.held_reason,
        deferred=len(plan.deferred),
        foreign=len(plan.foreign),
        foreign_persons=plan.foreign[:FOREIGN_SHOWN],
        invalid=len(plan.invalid),
        managed=managed,
        error=plan.error,
        health=health,
        failures=tuple(
            FailureView(person=f.person_id, action=f.action.value, error=f.error)
            for f in (report.failures[:FAILURES_SHOWN] if report else ())
        ),
    )
