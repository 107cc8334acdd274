"""One pass: load -> observe -> plan -> check -> apply -> record, shared by the CLI and the daemon.

Targets are observed and applied concurrently and independently: a failing target never stops
the others. I/O through the app's targets and store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys
import time
import weakref
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from reconciler import executor, logs, provenance
from reconciler.app import App
from reconciler.core import attempts, changes, planning, quarantine, safety
from reconciler.core.changes import Plan, TargetPlan
from reconciler.core.persons import Desired
from reconciler.core.planning import Observed
from reconciler.core.quarantine import HEALTHY, Health
from reconciler.core.records import Hasher
from reconciler.errors import StoreError, TargetError
from reconciler.executor import TargetReport
from reconciler.heap import collector_paused, heap_frozen
from reconciler.store.base import Settled
from reconciler.targets.base import Feed, Target

log = structlog.get_logger("reconciler.cycle")
#: Held deletes named in a plan.held line; the plan itself lists them all.
HELD_SHOWN = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class PassReport:
    plan: Plan
    targets: tuple[TargetReport, ...]
    #: ok: every planned change applied and every target observed; partial otherwise.
    result: Literal["ok", "partial"]
    #: Each target's health after this pass (core.quarantine).
    health: Mapping[str, Health] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(len(t.failures) for t in self.targets)

    @property
    def applied(self) -> int:
        return sum(t.applied for t in self.targets)


async def plan(
    app: App,
    *,
    only: Collection[str] | None = None,
    backoff: bool = False,
    targets: Collection[str] | None = None,
    recall: bool = False,
) -> Plan:
    """Observe every target (or only `targets`) and compute the plan, guards applied; changes
    nothing anywhere (but the settled plans remembered in the store).

    Held deletes are released afterwards, and only by an operator (apply --allow-mass-delete).
    With `backoff` (the daemon), changes that failed before wait out their back-off and a
    quarantined target is left alone until its quarantine ends; an operator's own plan and
    apply try everything. A replica plans only the targets it holds. With `recall` (a command,
    which has nothing in memory), a target whose change feed, ledger, desired state and
    settings are all as when its last settled plan was made is neither read nor planned: that
    plan stands (see _recall).
    """
    desired = app.desired.loaded.desired
    health = await app.store.health()

    # One target at a time reads its ledger and plans: planning is CPU-bound anyway, and so
    # only one target's ledger is in memory at once.
    planning_turn = asyncio.Lock()

    async def one(name: str, target: Target) -> TargetPlan:
        spec = target.spec
        record = health.get(name, HEALTHY)
        if backoff and record.quarantined(time.time()):
            log.info("target.quarantined", target=name, until=record.until, error=record.error)
            return TargetPlan(target=name, kind=spec.kind.name, health=record, quarantined=True)
        recalled = observed = version = None
        try:
            feed = await target.feed() if spec.kind.can_list else None
            if feed is not None and recall and desired.digest:
                recalled, version = await _recall(app, target, desired, feed, only)
            if recalled is None and spec.kind.can_list:
                observed = await target.observe()
        except TargetError as exc:
            log.error("target.unobservable", target=name, error=exc.message)
            return TargetPlan(target=name, kind=spec.kind.name, error=exc.message, health=record)
        if recalled is not None:
            computed = recalled
        else:
            async with planning_turn:
                computed = await _compute(app, target, desired, observed, only, version)
            if feed is not None and desired.digest:
                await _remember(app, target, desired, feed, only, computed)
        checked = safety.check(computed, target.settings.delete_limit, in_scope=computed.in_scope)
        checked = dataclasses.replace(checked, health=record)
        if backoff and checked.changes:
            checked = attempts.defer(checked, await app.store.attempts(name), time.time())
        return checked

    names = sorted(n for n in app.targets if targets is None or n in targets)
    # Reading targets and planning build a great many objects that live on (the snapshots);
    # collections meanwhile would walk the whole heap again and again for nothing.
    with collector_paused():
        planned = await asyncio.gather(*(one(name, app.targets[name]) for name in names))
    return Plan(
        desired_digest=desired.digest,
        targets={p.target: p for p in planned},
        fingerprint=changes.fingerprint(desired.digest, planned, app.hasher),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Computed:
    """The plan last computed for a target, and what it was computed from."""

    desired: Desired
    observed: weakref.ref[Observed]
    ledger: Hashable
    only: frozenset[str] | None
    hasher: Hasher
    plan: TargetPlan


#: Per target (as long as it lives): a pass whose inputs all equal the last one's reuses its plan
#: instead of reading the ledger and planning again, which makes the daemon's common no-op pass
#: cost about what reading the target costs.
_last: weakref.WeakKeyDictionary[Target, _Computed] = weakref.WeakKeyDictionary()


async def _compute(
    app: App,
    target: Target,
    desired: Desired,
    observed: Observed | None,
    only: Collection[str] | None,
    version: Hashable | None = None,
) -> TargetPlan:
    """planning.compute() for one target, or the last plan when nothing it depends on changed:
    the same desired state, an equal observed snapshot (the very object, or the same digest),
    the same ledger (by the store's version token; `version` when one was read already, before
    the target was). A kind that cannot list plans with the clock (its re-push is due by time),
    so it is always computed."""
    name, spec = target.spec.name, target.spec
    scope = frozenset(only) if only is not None else None
    if observed is None:
        version = None
    elif version is None:
        version = await app.store.ledger_version(name)
    last = _last.get(target)
    baseline = None
    # The ledger, the scope and the key as then: the last plan still speaks for the persons
    # whose desired and observed records are as then.
    if (
        observed is not None
        and last is not None
        and last.ledger == version
        and last.only == scope
        and last.hasher is app.hasher
    ):
        if last.desired is desired and (
            last.observed() is observed
            or last.plan.observed_digest == planning.observed_digest(observed, app.hasher)
        ):
            return last.plan
        previous = last.observed()
        if previous is not None:
            # Only part changed (a new desired state, some persons read again): whoever the
            # last plan left alone and is declared and seen as then needs no look.
            baseline = planning.Baseline(desired=last.desired, observed=previous, plan=last.plan)
    ledger = await app.store.ledger(name)
    departments = await app.store.departments(name) if spec.kind.departments else None
    with collector_paused():
        computed = planning.compute(
            desired,
            spec,
            observed,
            ledger,
            app.hasher,
            only=only,
            departments=departments,
            now=time.time(),
            baseline=baseline,
        )
    if observed is not None and version is not None:
        _last[target] = _Computed(
            desired=desired,
            observed=weakref.ref(observed),
            ledger=version,
            only=scope,
            hasher=app.hasher,
            plan=computed,
        )
    return computed


#: Per target: the key of the settled plan last remembered in the store, so that the daemon's
#: passes write it once, not every pass.
_remembered: weakref.WeakKeyDictionary[Target, str] = weakref.WeakKeyDictionary()


@functools.cache
def _code() -> str:
    """Every module of the package: plans made by other code are never recalled."""
    package = Path(__file__).parent
    modules = sorted(package.rglob("*.py"))
    return provenance.code_digest(b"reconciler settled plan 1", modules, (sys.version,)).hex()


def _settled_key(
    app: App,
    target: Target,
    desired: Desired,
    feed: Feed,
    version: Hashable,
    only: Collection[str] | None,
) -> str:
    """A keyed digest of everything a target's plan is made from: the code, the target's
    settings (secrets masked by pydantic), the desired state, the ledger, the scope and what the
    target's change feed says."""
    return app.hasher.digest(
        [
            _code(),
            target.spec.name,
            target.spec.kind.name,
            target.settings.model_dump(mode="json"),
            desired.digest,
            repr(version),
            sorted(only) if only is not None else None,
            feed.digest,
        ]
    )


async def _recall(
    app: App, target: Target, desired: Desired, feed: Feed, only: Collection[str] | None
) -> tuple[TargetPlan | None, Hashable | None]:
    """The target's last settled plan when everything it was made from is as then and the feed
    is still trusted, else None (then the target is read and planned); and the ledger version
    read, which planning then keys on. A store that cannot say is a miss: planning then reads
    the ledger and says what is wrong."""
    name = target.spec.name
    try:
        version = await app.store.ledger_version(name)
        settled = await app.store.settled(name)
    except StoreError:
        return None, None
    if (
        settled is None
        or settled.key != _settled_key(app, target, desired, feed, version, only)
        or time.time() >= settled.expires_at
    ):
        return None, version
    recalled = changes.settled_plan(settled.plan)
    if recalled is None or recalled.target != name or recalled.kind != target.spec.kind.name:
        return None, version
    log.info("plan.recalled", target=name, until=settled.expires_at)
    return recalled, version


async def _remember(
    app: App,
    target: Target,
    desired: Desired,
    feed: Feed,
    only: Collection[str] | None,
    plan: TargetPlan,
) -> None:
    """Keep a settled plan in the store, keyed on what it was made from: the feed read before
    the target was (a person changed in between makes the next key differ, never the other
    way round) and the ledger version read before the ledger was."""
    computed = _last.get(target)
    document = changes.settled_document(plan)
    if computed is None or computed.plan is not plan or document is None:
        return
    key = _settled_key(app, target, desired, feed, computed.ledger, only)
    if _remembered.get(target) == key:
        return
    try:
        await app.store.remember_settled(
            target.spec.name, Settled(key=key, plan=document, expires_at=feed.trusted_until)
        )
    except StoreError as exc:
        # Only an optimisation is lost: the next command reads the target again.
        log.warning("plan.not_remembered", target=target.spec.name, error=str(exc))
        return
    _remembered[target] = key


def log_plan(plan: Plan, *, mode: Literal["apply", "dry-run"]) -> None:
    """The plan, before anything is applied: a summary line, and what is held, deferred or
    invalid. In a dry run also one line per change (its plan document entry); applying logs
    each change's outcome instead, with the same document (change.applied / change.failed), so
    that a first sync of 100 000 persons does not log each of them twice.
    """
    log.info(
        "plan.computed",
        mode=mode,
        fingerprint=plan.fingerprint,
        desired_digest=plan.desired_digest,
        summary=plan.summary(),
        held=sum(len(t.held) for t in plan.targets.values()),
        errors=sum(1 for t in plan.targets.values() if t.error),
    )
    for target_plan in plan.targets.values():
        if mode == "dry-run":
            for department in target_plan.departments:
                log.info(
                    "department.planned",
                    target=target_plan.target,
                    **changes.department_document(department),
                )
            logs.change_lines(
                "reconciler.cycle", "change.planned", target_plan.changes, target=target_plan.target
            )
        if target_plan.held:
            log.warning(
                "plan.held",
                target=target_plan.target,
                deletes=len(target_plan.held),
                reason=target_plan.held_reason,
                # Whom a release would delete: enough to recognise the mistake, never 100 000.
                persons=[c.person_id for c in target_plan.held[:HELD_SHOWN]],
            )
        if target_plan.deferred:
            log.info(
                "plan.deferred",
                target=target_plan.target,
                changes=len(target_plan.deferred),
                first_retry=min(a.next_try for a in target_plan.deferred),
            )
        for invalid in target_plan.invalid:
            log.warning(
                "person.invalid",
                target=target_plan.target,
                person=invalid.person_id,
                error=invalid.error,
            )


async def _apply_target(
    app: App, plan: TargetPlan, stop: asyncio.Event | None
) -> executor.TargetReport:
    """One target's apply; a store that fails under it fails this target, not the others
    (which must finish and record before the pass ends and the store closes)."""
    try:
        return await executor.apply(plan, app.targets[plan.target], app.store, stop=stop)
    except StoreError as exc:
        log.error("target.store_failed", target=plan.target, error=str(exc))
        return executor.TargetReport(target=plan.target, skipped=f"store failed: {exc}")


def target_summary(plan: TargetPlan, report: TargetReport) -> dict[str, object]:
    """What one pass did to one target, as the store keeps it for `reconciler status`."""
    return {
        "kind": plan.kind,
        "planned": plan.planned,
        "applied": dict(report.applied_by_action),
        "failed": len(report.failures),
        "drift": plan.drift,
        "held": len(plan.held),
        "held_reason": plan.held_reason or None,
        "deferred": len(plan.deferred),
        "foreign": len(plan.foreign),
        "invalid": len(plan.invalid),
        "error": plan.error,
        "skipped": report.skipped,
    }


async def _judge(app: App, plan: TargetPlan, report: TargetReport, now: float) -> Health:
    """The target's health after this pass, recorded; quarantine entered or left is logged."""
    before = plan.health
    if plan.quarantined or plan.suspended or report.interrupted:
        # Nothing was asked of the target, or the process is stopping: nothing learned.
        return before
    verdict, error = quarantine.judge(
        unobservable=plan.error,
        target_error=report.target_error,
        attempted=report.attempted,
        failed=report.retryable_failures,
    )
    after = quarantine.after_pass(before, verdict, error, now)
    if after == before:
        return after
    try:
        await app.store.record_health(plan.target, after)
    except StoreError as exc:
        log.error("target.store_failed", target=plan.target, error=str(exc))
        return before
    if after.until is not None and after.until != before.until:
        log.warning(
            "target.quarantined",
            target=plan.target,
            failing_passes=after.failing_passes,
            until=after.until,
            quarantines=after.quarantines,
            error=after.error,
        )
    elif after.healthy and not before.healthy:
        log.info("target.recovered", target=plan.target, failing_passes=before.failing_passes)
    return after


async def apply(app: App, plan: Plan, *, stop: asyncio.Event | None = None) -> PassReport:
    """Apply a computed plan to every target at once; record the pass.

    Once `stop` is set nothing new starts; what is in flight finishes and is recorded.
    """
    # A full collection during a sync of 10 000 persons walked the whole heap for a tenth of a
    # second, while every request waited for the event loop.
    with heap_frozen():
        return await _apply(app, plan, stop)


async def _apply(app: App, plan: Plan, stop: asyncio.Event | None) -> PassReport:
    async with app.store.writer(plan.targets, wait=app.settings.lock_wait):
        pass_id = await app.store.begin_pass("apply")
        log_plan(plan, mode="apply")
        reports = await asyncio.gather(
            *(_apply_target(app, plan.targets[name], stop) for name in sorted(plan.targets))
        )
        complete = all(r.ok and not r.interrupted for r in reports)
        result: Literal["ok", "partial"] = "ok" if complete and not plan.has_errors else "partial"
        health = {
            r.target: await _judge(app, plan.targets[r.target], r, time.time()) for r in reports
        }
        report = PassReport(plan=plan, targets=tuple(reports), result=result, health=health)
        await app.store.finish_pass(
            pass_id,
            result=result,
            plan_fingerprint=plan.fingerprint,
            summary={
                "planned": plan.summary(),
                "applied": report.applied,
                "failed": report.failed,
                "targets": {r.target: target_summary(plan.targets[r.target], r) for r in reports},
            },
        )
    return report


@dataclass(frozen=True, slots=True, kw_only=True)
class Adoption:
    """What `adopt` found on one target."""

    target: str
    #: Foreign persons whose id a desired person in this target's scope declares: adopted.
    adopted: tuple[str, ...] = ()
    #: Foreign persons nobody declares (or outside the scope, or invalid here): left alone.
    left: tuple[str, ...] = ()
    #: Why nothing could be adopted (unobservable, a kind that cannot list).
    error: str | None = None


async def adopt(
    app: App, *, only: Collection[str] | None = None, commit: bool = True
) -> list[Adoption]:
    """Take foreign persons whose ids are desired into the ledger, on explicit request.

    Only the ledger changes: the next pass updates each adopted person to its desired state.
    With commit=False, reports what would be adopted and changes nothing.
    """
    desired = app.desired.loaded.desired
    found: list[Adoption] = []
    async with app.store.writer(app.targets, wait=app.settings.lock_wait):
        for name in sorted(app.targets):
            target = app.targets[name]
            spec = target.spec
            if not spec.kind.can_list:
                found.append(
                    Adoption(
                        target=name,
                        error=f"{spec.kind.name} cannot list persons, so none is foreign: a "
                        "desired person already there is simply updated (its writes are upserts)",
                    )
                )
                continue
            try:
                observed = await target.observe()
            except TargetError as exc:
                found.append(Adoption(target=name, error=f"could not be observed: {exc.message}"))
                continue
            assert observed is not None
            ledger = await app.store.ledger(name)
            computed = planning.compute(desired, spec, observed, ledger, app.hasher, only=only)
            invalid = {i.person_id for i in computed.invalid}
            adopted = tuple(
                pid
                for pid in computed.foreign
                if pid in desired.persons
                and spec.select.matches(desired.persons[pid])
                and pid not in invalid
            )
            if commit and adopted:
                await app.store.adopt(
                    name, {pid: observed.persons[pid].remote_id for pid in adopted}
                )
                for pid in adopted:
                    log.info("person.adopted", target=name, person=pid)
            left = tuple(pid for pid in computed.foreign if pid not in adopted)
            found.append(Adoption(target=name, adopted=adopted, left=left))
    return found
