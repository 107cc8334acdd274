"""The command line (DESIGN A2): validate, schema, plan, apply, adopt, run, demo, simulate.

Renders plans as text (Terraform-like) or as the plan document, asks before applying on a
terminal, and maps every ReconcilerError to one line on stderr and an exit code. Any other
exception is a bug and keeps its traceback. I/O: terminal, files, and what the commands open.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
import structlog
from pydantic import ValidationError

from reconciler import app as composition
from reconciler import cycle, logs
from reconciler.core import changes
from reconciler.core.changes import Action, FieldChange, Plan, TargetPlan
from reconciler.core.quarantine import HEALTHY, Health
from reconciler.errors import ConfigError, ReconcilerError, StalePlanError, UsageError
from reconciler.settings import Settings
from reconciler.sources.document import document_schema
from reconciler.targets import KINDS


class ExitCode(IntEnum):
    """Exit codes; scripts depend on them (DESIGN A2)."""

    #: Success; with --detailed-exitcode: success and no changes.
    OK = 0
    #: An error, including a partially failed apply.
    ERROR = 1
    #: Changes are present (only with --detailed-exitcode).
    CHANGES = 2
    #: Deletes were held by a safety guard (mass delete, empty source).
    HELD = 3
    #: The command line was used wrongly.
    USAGE = 64


SYMBOLS = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.REPLACE: ("-/+", "magenta"),
    Action.DELETE: ("-", "red"),
}


class Options:
    """Options common to every command."""

    def __init__(self, file: Path | None, targets: tuple[str, ...], only: tuple[str, ...]) -> None:
        try:
            self.settings = Settings()
        except ValidationError as exc:
            problems = "; ".join(
                f"RECONCILER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise ConfigError(f"invalid settings: {problems}") from None
        if self.settings.webhook_secret is not None:
            logs.protect([self.settings.webhook_secret.get_secret_value()])
        self.file = file or self.settings.desired
        self.targets = targets
        self.only = frozenset(only) or None

    def and_then(
        self, file: Path | None, targets: tuple[str, ...], only: tuple[str, ...]
    ) -> Options:
        """These options with those given after the command: a file replaces the one before,
        targets and persons add to theirs."""
        given = copy.copy(self)
        if file is not None:
            given.file = file
        given.targets = tuple(dict.fromkeys((*self.targets, *targets)))
        if only:
            given.only = (self.only or frozenset()) | frozenset(only)
        return given


_FILE_HELP = "Desired-state file or directory [default: $RECONCILER_DESIRED or ./desired.yaml]"
_TARGET_HELP = "Only this target (repeatable)."
_ONLY_HELP = "Only this person id (repeatable)."
_LOG_FORMAT = click.Choice(["auto", "json", "console"])
_LOG_FORMAT_HELP = "Logs on stderr: JSON lines, or console text on a terminal [default: auto]."


def common(command: Callable[..., int]) -> Callable[..., int]:
    """Pass the common options to a command, which takes them after its name too, as people
    write them (`reconciler plan --target lobby`) and before it (`reconciler --target lobby
    plan`)."""

    def given(
        options: Options,
        *args: Any,
        after_file: Path | None,
        after_targets: tuple[str, ...],
        after_only: tuple[str, ...],
        after_log_format: str | None,
        **kwargs: Any,
    ) -> int:
        if after_log_format is not None:
            logs.configure(after_log_format)  # type: ignore[arg-type]
        return command(options.and_then(after_file, after_targets, after_only), *args, **kwargs)

    # Click names the command and shows its help from these.
    given.__name__, given.__doc__ = command.__name__, command.__doc__
    # The command's own options stay its own; the common ones join them.
    given.__click_params__ = list(getattr(command, "__click_params__", []))  # type: ignore[attr-defined]
    path = click.Path(path_type=Path)
    passed: Callable[..., int] = click.pass_obj(given)
    for option in (
        click.option("--log-format", "after_log_format", type=_LOG_FORMAT, help=_LOG_FORMAT_HELP),
        click.option("--only", "after_only", multiple=True, help=_ONLY_HELP),
        click.option("--target", "after_targets", multiple=True, help=_TARGET_HELP),
        click.option("-f", "--file", "after_file", type=path, help=_FILE_HELP),
    ):
        passed = option(passed)
    return passed


def echo(message: str = "", *, err: bool = False) -> None:
    """Every line the CLI prints goes through the one redaction path (core.redaction)."""
    click.echo(logs.redact(message), err=err)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-f", "--file", type=click.Path(path_type=Path), help=_FILE_HELP)
@click.option("--target", "targets", multiple=True, help=_TARGET_HELP)
@click.option("--only", multiple=True, help=_ONLY_HELP)
@click.option("--log-format", type=_LOG_FORMAT, default=None, help=_LOG_FORMAT_HELP)
@click.version_option(package_name="reconciler")
@click.pass_context
def cli(
    ctx: click.Context,
    file: Path | None,
    targets: tuple[str, ...],
    only: tuple[str, ...],
    log_format: str | None,
) -> None:
    """Keep persons in sync on face terminals, edge boxes, access-control platforms and CMSs."""
    options = Options(file, targets, only)
    fmt = log_format or options.settings.log_format
    logs.configure(fmt)  # type: ignore[arg-type]
    ctx.obj = options


@cli.command()
@click.option(
    "--query",
    is_flag=True,
    help="Also run the persons_from queries (read-only) and validate their rows.",
)
@common
def validate(options: Options, query: bool) -> int:
    """Load and validate the desired state; no network (unless --query)."""
    cache = composition.parsed_cache(options.settings, options.file, existing=True)
    validated = composition.validate(options.file, cache=cache)
    sources = len(validated.loaded.persons_from)
    if query:
        validated = asyncio.run(composition.read_sources(validated))
    loaded = validated.loaded
    persons = len(loaded.desired.persons)
    line = (
        f"{options.file}: valid: {persons} person{'s' if persons != 1 else ''}, "
        f"{len(loaded.desired.departments)} departments, {len(validated.targets)} targets "
        f"({', '.join(sorted(validated.targets)) or 'none'})"
    )
    if sources:
        plural = "s" if sources != 1 else ""
        line += (
            f"; {sources} persons_from source{plural} read"
            if query
            else f"; {sources} persons_from source{plural} not read (--query reads them)"
        )
    echo(line)
    return ExitCode.OK


@cli.command()
def schema() -> int:
    """Print the JSON Schema of the desired-state file (for editors and CI)."""
    echo(orjson.dumps(full_schema(), option=orjson.OPT_INDENT_2).decode())
    return ExitCode.OK


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan document (JSON).")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Also save the plan document to this file."
)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes, 0 when none."
)
@common
def plan(options: Options, as_json: bool, out: Path | None, detailed_exitcode: bool) -> int:
    """Observe every target and print the plan; changes nothing."""
    computed = asyncio.run(_plan(options))
    if out is not None:
        save_plan(computed, out)
    if as_json:
        document = logs.redact(changes.document(computed))
        echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        render(computed)
        if out is not None:
            echo(f"Saved the plan to {out}; apply exactly it with: reconciler apply {out}")
    return plan_exit(computed, detailed=detailed_exitcode)


@cli.command()
@click.argument("planfile", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--yes", is_flag=True, help="Apply without asking (required without a terminal).")
@click.option("--allow-mass-delete", is_flag=True, help="Release deletes held by safety guards.")
@click.option("--dry-run", is_flag=True, help="Only plan (the same as `reconciler plan`).")
@common
def apply(
    options: Options, planfile: Path | None, yes: bool, allow_mass_delete: bool, dry_run: bool
) -> int:
    """Plan, show the plan, confirm, apply. With PLANFILE: apply exactly that saved plan."""
    if not dry_run and not yes and not sys.stdin.isatty():
        raise UsageError("apply needs --yes when it is not run from a terminal")
    saved = load_plan(planfile) if planfile is not None else None
    return asyncio.run(_apply(options, saved, yes=yes, release=allow_mass_delete, dry_run=dry_run))


@cli.command()
@click.option("--yes", is_flag=True, help="Adopt without asking (required without a terminal).")
@common
def adopt(options: Options, yes: bool) -> int:
    """Take persons already on a target (--target, required), whose ids are desired, into
    reconciler's ownership; --only narrows them.

    Only the ledger changes. From then on they are kept in their desired state and, once
    removed from it, deleted. Persons nobody declares stay foreign and untouched.
    """
    if not options.targets:
        raise UsageError("adopt needs --target NAME: the target whose persons to take in")
    if not yes and not sys.stdin.isatty():
        raise UsageError("adopt needs --yes when it is not run from a terminal")
    return asyncio.run(_adopt(options, options.targets, options.only, yes=yes))


@cli.command()
@click.option(
    "--dry-run", is_flag=True, help="Shadow mode: plan and log every pass, apply nothing."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1.0),
    help="Seconds between passes [default: $RECONCILER_INTERVAL or 60].",
)
@common
def run(options: Options, dry_run: bool, interval: float | None) -> int:
    """The daemon: a pass every interval, on edits, on SIGHUP and on POST /reconcile."""
    # The daemon's modules (its server, metrics, scheduler) are imported by the command that
    # runs it: `plan` by hand starts a fifth of a second sooner.
    from reconciler.daemon.running import Daemon

    daemon = Daemon(
        options.settings,
        desired_path=options.file,
        dry_run=dry_run,
        interval=interval or options.settings.interval,
        targets=options.targets,
        only=options.only,
    )
    return asyncio.run(daemon.run())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@common
def status(options: Options, as_json: bool) -> int:
    """Per target: the last pass, counts, drift, held deletes, failures, quarantine.

    Read from the store alone (no target is contacted), so it shows what the daemon and the
    CLI last did, even while the daemon runs.
    """
    found = asyncio.run(_status(options))
    if as_json:
        echo(orjson.dumps(logs.redact(found), option=orjson.OPT_INDENT_2).decode())
        return ExitCode.OK
    if not found["targets"]:
        echo(f"nothing has been applied yet ({found['store']})")
        return ExitCode.OK
    for name, entry in found["targets"].items():
        for line in status_lines(name, entry):
            echo(line)
    return ExitCode.OK


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the simulators running afterwards (Ctrl-C stops).")
def demo(keep: bool) -> int:
    """Plan and apply desired.example.yaml against bundled simulators on loopback."""
    from reconciler import demo as demo_run  # the simulators too: only these commands need them

    settings = demo_run.prepare()
    return asyncio.run(demo_run.run(settings, render=render, keep=keep))


@cli.command()
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(sorted(KINDS)),
    help="Only this kind (repeatable) [default: all].",
)
@click.option(
    "--port", default=8000, show_default=True, help="First port, one per kind; 0: any free ports."
)
@click.option("--host", default="127.0.0.1", show_default=True)
def simulate(kinds: tuple[str, ...], port: int, host: str) -> int:
    """Serve the bundled vendor simulators until interrupted."""
    from reconciler import demo as demo_run

    return asyncio.run(demo_run.simulate(kinds or tuple(sorted(KINDS)), host=host, port=port))


# -- passes ---------------------------------------------------------------------------------


async def _plan(options: Options) -> Plan:
    async with composition.open_app(
        options.settings, desired_path=options.file, targets=options.targets
    ) as app:
        return await cycle.plan(app, only=options.only, recall=True)


#: Recent passes read for `status`: enough to find every target's last one in a busy store.
STATUS_PASSES = 500


async def _status(options: Options) -> dict[str, Any]:
    """Per target, from the store: its last applied pass, ledger size, failures, health."""
    wanted = set(options.targets)
    async with composition.open_store(options.settings, create=False) as store:
        where = composition.store_location(options.settings)
        if store is None:
            return {"store": where, "targets": {}}
        managed = await store.managed()
        health = await store.health()
        last: dict[str, dict[str, Any]] = {}
        for passed in await store.passes(STATUS_PASSES):
            for name, summary in ((passed.summary or {}).get("targets") or {}).items():
                if name not in last:
                    last[name] = {
                        "pass": passed.id,
                        "finished_at": passed.finished_at,
                        "result": passed.result,
                        **summary,
                    }
        names = sorted(set(managed) | set(health) | set(last))
        targets: dict[str, Any] = {}
        for name in names:
            if wanted and name not in wanted:
                continue
            waiting = sorted((await store.attempts(name)).values(), key=lambda a: a.person_id)
            record = health.get(name, HEALTHY)
            targets[name] = {
                "last_pass": last.get(name),
                "managed": managed.get(name, 0),
                "failures": [
                    {
                        "person": a.person_id,
                        "failures": a.failures,
                        "next_try": a.next_try,
                        "error": a.error,
                    }
                    for a in waiting
                ],
                "health": None
                if record.healthy
                else changes.health_document(record, quarantined=record.quarantined(time.time())),
            }
        return {"store": where, "targets": targets}


def status_lines(name: str, entry: Mapping[str, Any]) -> Iterator[str]:
    last = entry["last_pass"]
    header = click.style(name, bold=True)
    if last is None:
        yield header + f"  never applied; {entry['managed']} managed"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["finished_at"] or 0))
        yield header + f" ({last['kind']})  last pass {last['pass']} at {when}: {last['result']}"
        planned = ", ".join(f"{n} {a}" for a, n in last["planned"].items()) or "nothing"
        applied = sum(last["applied"].values())
        yield (
            f"  managed {entry['managed']} · planned {planned} · applied {applied} · "
            f"failed {last['failed']} · drift {last['drift']} · deferred {last['deferred']} · "
            f"foreign {last['foreign']} · invalid {last['invalid']}"
        )
        if last["held"]:
            yield click.style(f"  held: {last['held']} deletes: {last['held_reason']}", fg="red")
        if last["error"]:
            yield click.style(f"  ! could not be observed: {last['error']}", fg="red")
    record = entry["health"]
    if record is not None:
        health = Health(
            failing_passes=record["failing_passes"],
            since=record["failing_since"],
            until=record["quarantined_until"],
            quarantines=record["quarantines"],
            error=record["error"],
        )
        yield click.style(f"  ! {health_line(health)}", fg="yellow")
    for failure in entry["failures"][:20]:
        retry = time.strftime("%H:%M:%S", time.localtime(failure["next_try"]))
        yield (
            f"  waiting: {failure['person']} failed {failure['failures']}x, next try {retry}: "
            f"{failure['error']}"
        )
    if len(entry["failures"]) > 20:
        yield f"  … and {len(entry['failures']) - 20} more waiting"


async def _adopt(
    options: Options, targets: tuple[str, ...], only: frozenset[str] | None, *, yes: bool
) -> int:
    async with composition.open_app(
        options.settings, desired_path=options.file, targets=targets
    ) as app:
        found = await cycle.adopt(app, only=only, commit=False)
        for adoption in found:
            echo(click.style(adoption.target, bold=True))
            if adoption.error is not None:
                echo(click.style(f"  ! {adoption.error}", fg="red"))
                continue
            for pid in adoption.adopted:
                echo(click.style(f"  + {pid}  adopt", fg="green"))
            if adoption.left:
                echo(
                    f"  {len(adoption.left)} foreign person(s) no desired person declares in "
                    f"this target's scope, left alone: {', '.join(adoption.left[:10])}"
                    + (" …" if len(adoption.left) > 10 else "")
                )
            if not adoption.adopted and not adoption.left:
                echo("  nothing foreign")
        count = sum(len(a.adopted) for a in found)
        if not count:
            echo("\nNothing to adopt.")
            return ExitCode.ERROR if any(a.error for a in found) else ExitCode.OK
        if not yes and not click.confirm(f"\nAdopt {count} person(s)?", default=False):
            echo("Adoption cancelled; nothing was changed.", err=True)
            return ExitCode.ERROR
        done = await cycle.adopt(app, only=only)
    adopted = sum(len(a.adopted) for a in done)
    echo(
        f"\nAdopted {adopted} person(s). `reconciler plan` now shows the updates that bring "
        "them to their desired state."
    )
    return ExitCode.ERROR if any(a.error for a in done) else ExitCode.OK


async def _apply(
    options: Options, saved: Mapping[str, Any] | None, *, yes: bool, release: bool, dry_run: bool
) -> int:
    async with (
        composition.open_app(
            options.settings, desired_path=options.file, targets=options.targets
        ) as app,
        # The targets' writer locks from planning to the end of the apply: no daemon replica
        # writes them in between, so what was shown is what is applied.
        nullcontext(frozenset[str]())
        if dry_run
        else app.store.writer(app.targets, wait=options.settings.lock_wait),
    ):
        computed = await cycle.plan(app, only=options.only, recall=True)
        if saved is not None:
            check_fresh(saved, computed)
        if release:
            computed = release_held(computed, app)
        render(computed)
        if dry_run or not computed.has_changes:
            if not dry_run and computed.has_upkeep:
                # Ledger upkeep only (records the targets already hold, persons gone from
                # both sides): nothing is sent, so there is nothing to confirm.
                await cycle.apply(app, computed)
            return plan_exit(computed, detailed=False)
        if not yes and not click.confirm("\nApply these changes?", default=False):
            echo("Apply cancelled; nothing was changed.", err=True)
            return ExitCode.ERROR
        report = await cycle.apply(app, computed)
    structlog.get_logger("reconciler").info(
        "pass.finished", result=report.result, applied=report.applied, failed=report.failed
    )
    echo("")
    for target_report in report.targets:
        line = f"{target_report.target}: {target_report.applied} applied"
        if target_report.failures:
            line += f", {len(target_report.failures)} failed"
            for failure in target_report.failures[:20]:
                line += f"\n    {failure.action.value} {failure.person_id}: {failure.error}"
            if len(target_report.failures) > 20:
                line += f"\n    … and {len(target_report.failures) - 20} more (see the logs)"
        if target_report.skipped:
            line += f" (skipped: {target_report.skipped})"
        echo(line)
    if report.failed or computed.has_errors:
        return ExitCode.ERROR
    return ExitCode.HELD if computed.has_held else ExitCode.OK


def release_held(plan: Plan, app: composition.App) -> Plan:
    """--allow-mass-delete: the held deletes go ahead, after everything else."""
    targets = {
        name: dataclasses.replace(
            t,
            changes=t.changes + t.held,
            held=(),
            held_reason="",
            departments=t.departments + t.held_departments,
            held_departments=(),
        )
        for name, t in plan.targets.items()
    }
    return dataclasses.replace(
        plan,
        targets=targets,
        fingerprint=changes.fingerprint(plan.desired_digest, targets.values(), app.hasher),
    )


def plan_exit(plan: Plan, *, detailed: bool) -> int:
    if plan.has_errors:
        return ExitCode.ERROR
    if plan.has_held:
        return ExitCode.HELD
    if detailed and plan.has_changes:
        return ExitCode.CHANGES
    return ExitCode.OK


# -- saved plans ------------------------------------------------------------------------------


def save_plan(plan: Plan, path: Path) -> None:
    """The plan document, written atomically; it holds no secret and no sensitive value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    document = logs.redact(changes.document(plan))
    temporary.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    temporary.replace(path)


def load_plan(path: Path) -> Mapping[str, Any]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the plan file {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{path} is not a plan document (not JSON: {exc.msg})") from exc
    if not isinstance(document, dict) or document.get("format_version") != changes.FORMAT_VERSION:
        raise UsageError(
            f"{path} is not a plan document of format_version {changes.FORMAT_VERSION}"
        )
    if not isinstance(document.get("fingerprint"), str):
        raise UsageError(f"{path} has no fingerprint")
    return document


def check_fresh(saved: Mapping[str, Any], current: Plan) -> None:
    if saved["fingerprint"] == current.fingerprint:
        return
    reasons = []
    if saved.get("desired_digest") != current.desired_digest:
        reasons.append("the desired state changed")
    saved_targets = saved.get("targets") or {}
    if set(saved_targets) != set(current.targets):
        reasons.append("a different set of targets was selected")
    changed = [
        name
        for name, target in current.targets.items()
        if name in saved_targets
        and saved_targets[name].get("observed_digest") != target.observed_digest
    ]
    if changed:
        reasons.append(f"target {', '.join(changed)} changed")
    raise StalePlanError(
        "the saved plan is stale: "
        + ("; ".join(reasons) or "the plan would differ")
        + " since it was made. Nothing was applied; run `reconciler plan --out FILE` again."
    )


# -- rendering --------------------------------------------------------------------------------


def render(plan: Plan) -> None:
    """The plan as text, Terraform-like, on stdout."""
    for target_plan in plan.targets.values():
        for line in target_lines(target_plan):
            echo(line)
        echo("")
    echo(summary_line(plan))


def target_lines(t: TargetPlan) -> Iterator[str]:
    header = click.style(f"{t.target}", bold=True) + f" ({t.kind})"
    if t.suspended:
        header += click.style("  suspended: planned, never applied", fg="yellow")
    yield header
    if not t.health.healthy:
        yield click.style(f"  ! {health_line(t.health)}", fg="yellow")
    if t.error is not None:
        yield click.style(f"  ! could not be observed: {t.error}", fg="red")
        return
    if t.write_only:
        yield (
            f"  (write-only: {t.kind} cannot list persons; planned from the ledger, "
            "drift on the target cannot be seen)"
        )
    if not t.changes and not t.held and not t.departments and not t.held_departments:
        yield "  no changes"
    for department in t.departments:
        symbol, color = SYMBOLS[department.action]
        detail = (
            f"  {department.action.value} ({department.reason.value})"
            if department.action is Action.DELETE
            else f"  {department.action.value} ({department.reason.value}) "
            f"{department.name!r}" + (f" under {department.parent}" if department.parent else "")
        )
        yield click.style(f"  {symbol} department {department.department_id}", fg=color) + detail
    for change in t.changes:
        yield from change_lines(change)
    for invalid in t.invalid:
        yield click.style(f"  ! {invalid.person_id}: {invalid.error}", fg="red")
    if t.held:
        yield click.style(f"  held: {len(t.held)} deletes: {t.held_reason}", fg="red", bold=True)
        for change in t.held:
            yield click.style(f"      - {change.person_id}", fg="red")
    if t.held_departments:
        yield click.style(
            f"  held: {len(t.held_departments)} department deletes: {t.held_reason}", fg="red"
        )
    if t.foreign:
        shown = ", ".join(t.foreign[:10]) + (" …" if len(t.foreign) > 10 else "")
        yield (
            f"  {len(t.foreign)} foreign person{'s' if len(t.foreign) != 1 else ''} on the "
            f"target (not in the ledger, never touched): {shown}"
        )


def health_line(health: Health, now: float | None = None) -> str:
    """A failing or quarantined target in one line (core.quarantine)."""
    now = time.time() if now is None else now
    line = f"failing for {health.failing_passes} passes in a row ({health.error})"
    if health.quarantined(now):
        assert health.until is not None
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(health.until))
        line += f"; quarantined until {until}: the daemon leaves it alone until then"
    return line


def change_lines(change: changes.Change) -> Iterator[str]:
    symbol, color = SYMBOLS[change.action]
    note = "  periodic re-push: the target cannot be read" if change.resync else ""
    yield click.style(f"  {symbol} {change.person_id}", fg=color, bold=True) + (
        f"  {change.action.value} ({change.reason.value}){note}"
    )
    width = max((len(f.field) for f in change.fields), default=0)
    for field in change.fields:
        yield f"      {field.field.ljust(width)}  {field_text(field, change.action)}"


def field_text(field: FieldChange, action: Action) -> str:
    if field.sensitive:
        return "(sensitive value)" if action is Action.CREATE else "(sensitive value changes)"
    new = value_text(field.new)
    if field.write_only:
        return f"{new}  (write-only)" if action is Action.CREATE else f"→ {new}  (write-only)"
    if action is Action.CREATE:
        return new
    return f"{value_text(field.old)} → {new}"


def value_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and value.startswith("sha256:") and len(value) > 19:
        return value[:19] + "…"  # a photo's content hash: enough to tell photos apart
    return orjson.dumps(value).decode()


def summary_line(plan: Plan) -> str:
    counts = plan.summary()
    if not plan.has_changes:
        text = "No changes. The targets match the desired state."
    else:
        text = (
            f"Plan: {counts['create']} to create, {counts['update']} to update, "
            f"{counts['replace']} to replace, {counts['delete']} to delete."
        )
    departments = sum(len(t.departments) for t in plan.targets.values())
    if departments:
        text += f" {departments} department change{'s' if departments != 1 else ''}."
    held = sum(len(t.held) for t in plan.targets.values())
    if held:
        text += f" {held} deletes held by a safety guard."
    failed = [t.target for t in plan.targets.values() if t.error]
    if failed:
        text += f" Not observed: {', '.join(failed)}."
    return text


def full_schema() -> dict[str, Any]:
    """The file's schema, with each available kind's target settings merged in."""
    document = document_schema()
    variants = []
    for name, entry in sorted(KINDS.items()):
        kind_schema = entry.settings.model_json_schema(mode="validation")
        definitions = kind_schema.pop("$defs", {})
        document.setdefault("$defs", {}).update(definitions)
        kind_schema["properties"] = {"kind": {"const": name}, **kind_schema.get("properties", {})}
        kind_schema["required"] = ["kind", *kind_schema.get("required", [])]
        kind_schema["additionalProperties"] = False
        kind_schema["title"] = f"{name} target"
        document["$defs"][f"Target_{name}"] = kind_schema
        variants.append({"$ref": f"#/$defs/Target_{name}"})
    document["$defs"]["Target"] = {"oneOf": variants}
    return document


# -- the entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI; every expected failure becomes one line on stderr and an exit code."""
    try:
        result = cli.main(args=argv, prog_name="reconciler", standalone_mode=False)
        code = int(result) if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        echo("Aborted; nothing was changed.", err=True)
        code = ExitCode.ERROR
    except click.UsageError as exc:
        exc.show()
        code = ExitCode.USAGE
    except click.ClickException as exc:
        exc.show()
        code = ExitCode.ERROR
    except UsageError as exc:
        echo(f"Error: {exc}", err=True)
        code = ExitCode.USAGE
    except ReconcilerError as exc:
        echo(f"Error: {exc}", err=True)
        code = ExitCode.ERROR
    with suppress(Exception):
        sys.stdout.flush()
    sys.exit(code)
