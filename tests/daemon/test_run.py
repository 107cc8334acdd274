"""`reconciler run` end to end: a subprocess against a simulator on loopback, with a test-owned
NOTIFY_SOCKET standing in for systemd. Converges, follows edits, refuses an invalid edit and keeps
running, answers the webhook, reports on /status and /metrics, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from reconciler.simulators.nebula_pass import NebulaPassSimulator
from tests import lobby

PASSWORD = lobby.PASSWORD
SECRET = "webhook-secret-4242"
#: Every wait in this file ends: a condition that never comes true fails the test by this time.
DEADLINE = 30.0


def desired(url: str, persons: dict[str, str]) -> str:
    return lobby.desired(url, lobby.persons(persons, pin="7391"))


class Running:
    """A `reconciler run` subprocess, its log events, its HTTP endpoint and its notifications."""

    def __init__(
        self, process: asyncio.subprocess.Process, notify: socket.socket | None = None
    ) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.notifications: list[str] = []
        self.url = ""
        self._tasks = [asyncio.create_task(self._read_logs())]
        if notify is not None:
            self._tasks.append(asyncio.create_task(self._read_notify(notify)))

    async def _read_logs(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode()
            self.lines.append(line)
            if line.startswith("{"):
                event = orjson.loads(line)
                self.events.append(event)
                if event["event"] == "daemon.started":
                    self.url = event["listen"]

    async def _read_notify(self, notify: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(notify, 4096)
            self.notifications.extend(data.decode().splitlines())

    async def until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not check():
            if self.process.returncode is not None:
                pytest.fail(f"the daemon exited ({self.process.returncode}) waiting for {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; last log lines: {self.lines[-5:]}")
            await asyncio.sleep(0.05)

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e["event"] == event)

    def passes(self, result: str | None = None) -> int:
        return sum(
            1
            for e in self.events
            if e["event"] == "pass.finished" and (result is None or e["result"] == result)
        )

    async def exited(self) -> int:
        """The exit code, once the process has ended and all it logged is read."""
        code = await asyncio.wait_for(self.process.wait(), DEADLINE)
        await asyncio.wait_for(self._tasks[0], DEADLINE)
        return code

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def spawn(
    tmp_path: Path, *args: str, notify: socket.socket | None = None, **env: str
) -> Running:
    """`reconciler run ARGS` in tmp_path, logging JSON; env adds to (or, with "", removes from)
    the test's environment."""
    environ = {
        **os.environ,
        "LOBBY_PASSWORD": PASSWORD,
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
        "RECONCILER_LISTEN": "127.0.0.1:0",
        "RECONCILER_LOG_FORMAT": "json",
        **env,
    }
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        if not env.get(name):
            environ.pop(name, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reconciler",
        "run",
        *args,
        cwd=tmp_path,
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Running(process, notify)


@pytest.fixture
async def daemon(
    tmp_path: Path, nebula: NebulaPassSimulator, nebula_url: str
) -> AsyncIterator[Running]:
    (tmp_path / "desired.yaml").write_text(desired(nebula_url, {"1": "one", "2": "two"}))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    running = await spawn(
        tmp_path,
        "--interval",
        "2",
        notify=notify,
        RECONCILER_WEBHOOK_SECRET=SECRET,
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        WATCHDOG_USEC="400000",
    )
    try:
        yield running
    finally:
        await running.close()
        notify.close()


async def test_the_daemon_end_to_end(
    daemon: Running, nebula: NebulaPassSimulator, nebula_url: str, tmp_path: Path
) -> None:
    # Converges, then tells systemd it is ready, and keeps the watchdog fed.
    await daemon.until(lambda: "READY=1" in daemon.notifications, "READY=1")
    assert {u: nebula.users[u]["name"] for u in nebula.users} == {"1": "one", "2": "two"}
    await daemon.until(lambda: daemon.notifications.count("WATCHDOG=1") >= 2, "WATCHDOG=1 pings")

    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, Any]:
            async with http.get(daemon.url + path) as response:
                body = await response.read()
                return response.status, body

        assert (await get("/healthz"))[0] == 200
        assert (await get("/readyz"))[0] == 200

        # An edit converges within a few intervals (the watcher usually makes it at once).
        (tmp_path / "desired.yaml").write_text(desired(nebula_url, {"1": "one", "3": "three"}))
        await daemon.until(lambda: set(nebula.users) == {"1", "3"}, "the edit to converge")

        # An invalid edit changes nothing and the daemon keeps running on the last good state.
        writes = nebula.log.writes()
        broken = desired(nebula_url, {"1": "one"}) + '  - {id: "4", name: four, emial: x}\n'
        (tmp_path / "desired.yaml").write_text(broken)
        await daemon.until(
            lambda: any(e["event"] == "desired.invalid" for e in daemon.events), "desired.invalid"
        )
        invalid = next(e for e in daemon.events if e["event"] == "desired.invalid")
        assert any("desired.yaml:11:" in p and "emial" in p for p in invalid["problems"]), invalid
        status, body = await get("/readyz")
        assert status == 503
        assert b"emial" in body
        passes = daemon.passes()
        await daemon.until(lambda: daemon.passes() >= passes + 1, "another pass")
        assert set(nebula.users) == {"1", "3"}
        assert nebula.log.writes() == writes
        loads = daemon.count("desired.loaded")
        (tmp_path / "desired.yaml").write_text(desired(nebula_url, {"1": "one", "3": "three"}))
        await daemon.until(lambda: daemon.count("desired.loaded") > loads, "the repaired file")

        # The webhook: 401 without the secret, a pass with it (bearer or GitHub HMAC).
        async with http.post(daemon.url + "/reconcile") as response:
            assert response.status == 401
        body = b'{"ref": "refs/heads/main"}'
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        before = daemon.passes()
        async with http.post(
            daemon.url + "/reconcile", data=body, headers={"X-Hub-Signature-256": signature}
        ) as response:
            assert response.status == 202
        await daemon.until(
            lambda: any(
                e["event"] == "pass.started" and "webhook" in e["reasons"] for e in daemon.events
            ),
            "a pass for the webhook",
        )
        await daemon.until(lambda: daemon.passes() > before, "the webhook's pass to finish")

        # /status and /metrics report the passes.
        status, body = await get("/status")
        document = orjson.loads(body)
        assert document["passes"] >= 3
        assert document["targets"]["lobby"]["managed"] == 2
        assert document["last_pass"]["result"] == "ok"
        status, body = await get("/metrics")
        assert b'reconciler_passes_total{result="ok"}' in body
        assert b'reconciler_persons_managed{target="lobby"} 2.0' in body

    # SIGTERM: STOPPING=1, exit 0.
    daemon.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.process.wait(), DEADLINE) == 0
    await daemon.until(lambda: "STOPPING=1" in daemon.notifications, "STOPPING=1")
    everything = "".join(daemon.lines)
    for secret in (PASSWORD, SECRET, "7391"):
        assert secret not in everything


async def test_a_pass_that_stands_still_stops_the_watchdog_and_fails_healthz(
    tmp_path: Path, nebula: NebulaPassSimulator, nebula_url: str
) -> None:
    """A pass that finishes no request for stall_timeout seconds is hung: no more WATCHDOG=1
    (systemd restarts the process), /healthz 503 (so does a liveness probe); once requests
    finish again, both come back."""
    (tmp_path / "desired.yaml").write_text(desired(nebula_url, {"1": "one"}))
    nebula.faults.latency = 4.0  # every answer 4 s late (the request timeout is 30 s)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.setblocking(False)
        running = await spawn(
            tmp_path,
            notify=notify,
            NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
            WATCHDOG_USEC="400000",
            RECONCILER_STALL_TIMEOUT="0.5",
        )
        try:
            await running.until(lambda: running.count("daemon.stalled") > 0, "daemon.stalled")
            # 0.5 s is shorter than one request may take: said at start, and obeyed.
            (short,) = [e for e in running.events if e["event"] == "settings.stall_timeout_short"]
            assert short["step"] == "a request to target lobby, with its back-off"
            assert short["longest_step"] == 30.0 + 30.0
            stalled = next(e for e in running.events if e["event"] == "daemon.stalled")
            assert "finished no step for" in stalled["reason"]
            async with aiohttp.ClientSession() as http:
                async with http.get(running.url + "/healthz") as response:
                    assert response.status == 503
                    assert (await response.json())["status"] == "stalled"
                nebula.faults.latency = 0.0
                await running.until(lambda: running.passes("ok") > 0, "the pass to finish")
                await running.until(
                    lambda: "STATUS=moving again" in running.notifications, "moving again"
                )
                async with http.get(running.url + "/healthz") as response:
                    assert response.status == 200
            # In the order sent: from the stall until it moves again, not one ping.
            sent = running.notifications
            begin = next(n for n, line in enumerate(sent) if line.startswith("STATUS=stalled"))
            end = sent.index("STATUS=moving again", begin)
            assert "WATCHDOG=1" in sent[:begin]
            assert "WATCHDOG=1" not in sent[begin:end]
            await running.until(
                lambda: "WATCHDOG=1" in running.notifications[end:], "WATCHDOG=1 again"
            )
        finally:
            await running.close()


async def test_dry_run_plans_every_pass_and_applies_nothing(
    tmp_path: Path, nebula: NebulaPassSimulator, nebula_url: str
) -> None:
    (tmp_path / "desired.yaml").write_text(desired(nebula_url, {"1": "one"}))
    running = await spawn(tmp_path, "--dry-run", "--interval", "60")
    process = running.process
    try:
        await running.until(lambda: running.passes() >= 1, "the first pass")
        process.send_signal(signal.SIGHUP)
        await running.until(lambda: running.passes() >= 2, "a pass for SIGHUP")
        started = [e for e in running.events if e["event"] == "pass.started"]
        assert started[1]["reasons"] == ["sighup"]
        planned = [e for e in running.events if e["event"] == "change.planned"]
        assert [(e["action"], e["person"]) for e in planned] == [("create", "1")] * 2
        assert nebula.users == {}
        assert nebula.log.writes() == 0
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), DEADLINE) == 0
    finally:
        await running.close()


async def test_an_invalid_desired_state_at_start_up_exits_1(
    tmp_path: Path, nebula_url: str
) -> None:
    (tmp_path / "desired.yaml").write_text(desired(nebula_url, {"1": "one"}) + "  - {id: 2}\n")
    running = await spawn(tmp_path)
    try:
        assert await running.exited() == 1
    finally:
        await running.close()
    err = "".join(running.lines).encode()
    assert b"desired.yaml:11" in err
    assert b"missing required key 'name'" in err


async def test_sigterm_mid_apply_lets_batches_in_flight_finish_and_records_them(
    tmp_path: Path, nebula: NebulaPassSimulator, nebula_url: str
) -> None:
    import sqlite3

    persons = {f"{n:03d}": f"p{n}" for n in range(60)}
    text = desired(nebula_url, persons).replace(
        "    rate_limit: null\n", "    rate_limit: null\n    batch_size: 5\n    concurrency: 2\n"
    )
    (tmp_path / "desired.yaml").write_text(text)
    nebula.faults.latency = 0.3  # 12 batches, 2 at a time: about 2 s of applying
    running = await spawn(tmp_path)
    process = running.process
    try:
        await running.until(lambda: running.count("change.applied") >= 5, "the first batch")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), DEADLINE) == 0
        await running.until(lambda: running.count("daemon.stopped") == 1, "daemon.stopped")
    finally:
        await running.close()
    on_device = set(nebula.users)
    assert 5 <= len(on_device) < len(persons), "the stop came mid-apply"
    with sqlite3.connect(tmp_path / "state" / "reconciler.sqlite3") as db:
        confirmed = {
            pid for (pid,) in db.execute("SELECT person_id FROM ledger WHERE fingerprint != ''")
        }
    assert confirmed == on_device  # every batch the device confirmed is recorded; none lost
    assert running.count("change.applied") == len(on_device)
