"""`reconciler apply` killed with SIGKILL at several points of a first sync of four kinds, then
run again until nothing is planned: every target holds exactly the desired persons once each,
the ledger owns exactly them, and nothing confirmed before the kill is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from reconciler.simulators.base import Faults, Handler, Simulator
from reconciler.simulators.siteserver import SiteServerSimulator
from tests.reliability import (
    CMS,
    FOG,
    NEBULA,
    SECRETS,
    SIGHT,
    Kind,
    Spec,
    assert_holds_exactly,
    target_settings,
    write_desired,
)

PERSONS = [
    Spec(
        id=f"k{n:03d}",
        name=f"员工 {n}",
        email=f"k{n:03d}@example.com",
        department=("HQ", "D01", "D02")[n % 3],
        photo=f"k{n:03d}.jpg" if n % 3 == 0 else None,
    )
    for n in range(1, 61)
]
PHOTOS = sum(1 for spec in PERSONS if spec.photo)
#: Write calls of the whole first sync: nebula_pass in batches of 5; one call per person (and
#: per photo) elsewhere; sophon_sight also one per department.
FIRST_SYNC = (
    len(PERSONS) // 5 + len(PERSONS) + (len(PERSONS) + PHOTOS + 3) + (len(PERSONS) + PHOTOS)
)
#: Seconds each simulator takes per request: a first sync takes seconds, long enough to aim at.
LATENCY = 0.05
#: Bounds on waiting; the test's own timeout (60 s) is the backstop.
START_LIMIT = 30.0
RUN_LIMIT = 40.0
POLL = 0.005
#: Runs of `apply` after the kill before the targets must have converged.
MAX_RUNS = 3
#: Kill points: the write calls the simulators answered before the SIGKILL (0: none yet; the
#: process is observing the targets).
KILL_POINTS = {
    "before-first-write": 0,
    "after-first-write": 1,
    "mid-way": FIRST_SYNC // 2,
    "near-the-end": FIRST_SYNC - 10,
}
KINDS: tuple[Kind, ...] = (NEBULA, FOG, SIGHT, CMS)


@dataclass(frozen=True, slots=True)
class Write:
    """One write request as a simulator received it."""

    path: str
    body: bytes


@dataclass
class Target:
    """One kind's simulator on loopback, with every write it received."""

    name: str
    simulator: Simulator
    url: str = ""
    written: list[Write] = field(default_factory=list)


@contextlib.asynccontextmanager
async def served(name: str, simulator: Simulator) -> AsyncIterator[Target]:
    """Serve `simulator` on 127.0.0.1, recording the body of every write it receives."""
    target = Target(name=name, simulator=simulator)

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in ("POST", "PUT", "DELETE"):
            # read() keeps the bytes, so the simulator's handler reads them again; a multipart
            # upload (an avatar) is left to the handler: its path names the person.
            is_json = request.content_type == "application/json"
            body = await request.read() if is_json else b""
            target.written.append(Write(path=request.path, body=body))
        return await handler(request)

    app = simulator.app()
    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        target.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield target
    finally:
        await runner.cleanup()


def persons_written(target: Target, writes: Iterable[Write]) -> set[str]:
    """The person ids that write requests carried (departments are not persons)."""
    found: set[str] = set()
    for write in writes:
        body = orjson.loads(write.body) if write.body else {}
        if not isinstance(body, dict):
            continue
        for key in ("user_id", "identity_id", "thirdId", "userName"):
            if isinstance(body.get(key), str) and "syncdept" not in write.path:
                found.add(body[key])
        for key in ("ids", "identity_ids", "thirdIds"):
            if isinstance(body.get(key), list) and "syncdept" not in write.path:
                found.update(str(i) for i in body[key])
        for item in body.get("user_list") or []:
            found.add(str(item["user_id"]))
        if isinstance(body.get("photoName"), str):
            found.add(body["photoName"].rsplit(".", 1)[0])
        simulator = target.simulator
        match = re.match(r"^/api/v1/users/(\d+)", write.path)
        if match is not None and isinstance(simulator, SiteServerSimulator):
            user = simulator.users.get(int(match.group(1)))
            found.add(user["userName"] if user is not None else f"cms-id:{match.group(1)}")
    return found


def ledger(state: Path) -> dict[tuple[str, str], str]:
    """(target, person) -> fingerprint, read from the store file as it is on disk."""
    path = state / "reconciler.sqlite3"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT target, person_id, fingerprint FROM ledger").fetchall()
    return {(target, pid): fingerprint for target, pid, fingerprint in rows}


def department_ledger(state: Path) -> set[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(state / "reconciler.sqlite3")) as db:
        rows = db.execute("SELECT target, department_id FROM department_ledger").fetchall()
    return {(target, department) for target, department in rows}


class Command:
    """`python -m reconciler` in a working directory, as an operator (or a timer) runs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = 0

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            **SECRETS,
            "RECONCILER_STATE_DIR": str(self.root / "state"),
            "RECONCILER_LOG_FORMAT": "json",
        }
        env.pop("RECONCILER_DESIRED", None)
        env.pop("RECONCILER_STORE_URL", None)
        return env

    async def start(self, *args: str) -> tuple[asyncio.subprocess.Process, Path]:
        """Start it with output to files: a pipe nobody reads would stall a chatty process."""
        self.runs += 1
        err = self.root / f"run{self.runs}.err"
        with (self.root / f"run{self.runs}.out").open("wb") as out, err.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reconciler",
                *args,
                cwd=self.root,
                env=self.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=errors,
            )
        return process, err

    async def run(self, *args: str) -> tuple[int, str]:
        process, err = await self.start(*args)
        try:
            code = await asyncio.wait_for(process.wait(), RUN_LIMIT)
        finally:
            await reap(process)
        return code, err.read_text(encoding="utf-8")


async def reap(process: asyncio.subprocess.Process) -> None:
    """Never leave a process behind, whatever failed."""
    if process.returncode is None:
        process.kill()
        await asyncio.wait_for(process.wait(), RUN_LIMIT)


def writes_answered(targets: Iterable[Target]) -> int:
    return sum(t.simulator.log.writes() for t in targets)


@pytest.mark.parametrize("kill_after", list(KILL_POINTS.values()), ids=list(KILL_POINTS))
async def test_apply_killed_at_any_point_converges_without_duplicates_or_losses(
    kill_after: int, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        targets = [
            await stack.enter_async_context(
                served(kind.name.replace("_", "-"), kind.simulator(Faults(latency=LATENCY)))
            )
            for kind in KINDS
        ]
        # Two requests in flight per target, small batches: many confirmations to land between.
        write_desired(
            tmp_path,
            {
                t.name: target_settings(kind, t.url, concurrency=2)
                for kind, t in zip(KINDS, targets, strict=True)
            },
            PERSONS,
        )
        command = Command(tmp_path)

        # 1. The first sync, killed once the simulators answered `kill_after` write calls.
        process, err = await command.start("apply", "--yes")
        stack.push_async_callback(reap, process)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_LIMIT
        while True:
            answered = sum(len(t.simulator.log.entries) for t in targets)
            if answered and writes_answered(targets) >= kill_after:
                break
            assert process.returncode is None, (
                f"apply ended before {kill_after} writes: {err.read_text('utf-8')[-2000:]}"
            )
            assert loop.time() < deadline, f"no {kill_after} writes in {START_LIMIT} s"
            await asyncio.sleep(POLL)
        process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), RUN_LIMIT) == -signal.SIGKILL
        killed_at = writes_answered(targets)
        if kill_after == 0:
            assert killed_at == 0, "killed too late: writes had been answered"

        # What the dead process left: the ledger claims nothing the targets do not hold.
        left = ledger(tmp_path / "state")
        confirmed = {key for key, fingerprint in left.items() if fingerprint}
        for name, pid in confirmed:
            target = next(t for t in targets if t.name == name)
            assert pid in target.simulator.person_names(), f"{name} lacks confirmed {pid}"
        before_rerun = {t.name: len(t.written) for t in targets}

        # 2. Run again, as an operator (or a timer) would, until nothing is left to do.
        codes = []
        for _ in range(MAX_RUNS):
            code, errors = await command.run("apply", "--yes")
            codes.append(code)
            assert code in (0, 1), errors[-2000:]
            code, errors = await command.run("plan", "--detailed-exitcode")
            if code == 0:
                break
            assert code == 2, errors[-2000:]
        else:
            pytest.fail(f"not converged after {MAX_RUNS} runs of apply (exit codes {codes})")

        # Every target holds exactly the desired persons, once each.
        for target in targets:
            assert_holds_exactly(target.simulator, PERSONS)
        # The ledger owns exactly them on every target, each confirmed.
        after = ledger(tmp_path / "state")
        wanted = {(t.name, spec.id) for t in targets for spec in PERSONS}
        assert set(after) == wanted
        assert sorted(key for key, fingerprint in after.items() if not fingerprint) == []
        sight = next(t.name for t in targets if t.name == "sophon-sight")
        assert department_ledger(tmp_path / "state") == {
            (sight, department) for department in ("HQ", "D01", "D02")
        }
        # Nothing the killed run confirmed was sent again; only what it left unconfirmed.
        for target in targets:
            again = persons_written(target, target.written[before_rerun[target.name] :])
            mine = {pid for name, pid in confirmed if name == target.name}
            assert again & mine == set(), f"{target.name} re-sent confirmed {sorted(again & mine)}"
            assert len(again) <= len(PERSONS) - len(mine)
            record_property(f"{target.name}_confirmed_at_kill", len(mine))
            record_property(f"{target.name}_persons_resent", len(again))
        record_property("writes_at_kill", killed_at)
        record_property("apply_exit_codes", codes)
        # One run after the crash is enough: the kill left nothing a single pass cannot finish.
        assert codes == [0]
