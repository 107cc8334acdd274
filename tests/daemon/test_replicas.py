"""Three `reconciler run` replicas on one PostgreSQL store and eight simulated terminals: every
target is written by one replica at a time (the simulators' request logs, by User-Agent), the
targets are spread, all converge; one replica is killed with SIGKILL, the desired state edited,
and the two others converge its targets too. And `apply` waits for a target's writer, then fails
naming it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from reconciler.simulators.base import Entry, Faults, serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.store.postgres import PostgresStore
from tests.daemon.test_run import DEADLINE, PASSWORD, Running, spawn

TARGETS = [f"t{n}" for n in range(8)]
REPLICAS = ("r1", "r2", "r3")
PERSONS = {f"{n:04d}": f"员工 {n}" for n in range(1, 6)}
#: Seconds between a replica's looks for targets nobody owns (5 in production).
CHECK = 0.5


def desired(urls: Mapping[str, str], names: Mapping[str, str]) -> str:
    lines = ["version: 1", "targets:"]
    for target, url in urls.items():
        lines += [
            f"  {target}:",
            "    kind: nebula_pass",
            f"    url: {url}",
            "    username: admin",
            "    password: ${LOBBY_PASSWORD}",
            "    rate_limit: null",
            # One person per write call: a pass makes several, for another writer to land between.
            "    batch_size: 1",
        ]
    lines.append("persons:")
    lines += [f'  - {{id: "{pid}", name: "{name}"}}' for pid, name in names.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def terminals() -> AsyncIterator[dict[str, tuple[NebulaPassSimulator, str]]]:
    async with contextlib.AsyncExitStack() as stack:
        found = {}
        for target in TARGETS:
            simulator = NebulaPassSimulator(
                username="admin", password=PASSWORD, faults=Faults(latency=0.01)
            )
            served = await stack.enter_async_context(await serve(simulator))
            found[target] = (simulator, served.url)
        yield found


def replica_of(entry: Entry) -> str:
    """The replica a request came from, by its User-Agent: `reconciler/<version> (<replica>)`."""
    agent = entry.client or ""
    assert agent.startswith("reconciler/"), agent
    assert agent.endswith(")"), agent
    return agent.rpartition("(")[2].removesuffix(")")


def writer_runs(entries: Sequence[Entry]) -> list[tuple[str, float, float]]:
    """The write requests as runs of one writer: (replica, first arrival, last answer)."""
    writes = sorted((e for e in entries if e.write), key=lambda e: e.at)
    runs = []
    for replica, group in itertools.groupby(writes, key=replica_of):
        run = list(group)
        runs.append((replica, run[0].at, max(e.done for e in run)))
    return runs


def assert_one_writer_at_a_time(target: str, entries: Sequence[Entry]) -> None:
    """A replica's writes to the target end before another's begin: never interleaved."""
    runs = writer_runs(entries)
    for (before, _, ended), (after, began, _) in itertools.pairwise(runs):
        assert ended <= began, (
            f"{target}: {after} began writing {ended - began:.3f} s before {before} finished"
        )


async def status(http: aiohttp.ClientSession, running: Running) -> dict[str, Any]:
    async with http.get(running.url + "/status") as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


async def until(check: Callable[[], bool], what: str, replicas: Sequence[Running]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        for running in replicas:
            if running.process.returncode is not None:
                pytest.fail(f"a replica exited ({running.process.returncode}) awaiting {what}")
        if time.monotonic() > deadline:
            tails = [running.lines[-8:] for running in replicas]
            pytest.fail(f"timed out waiting for {what}; the replicas' last log lines: {tails}")
        await asyncio.sleep(0.05)


async def test_replicas_share_targets_one_writer_each_and_take_over_a_killed_one(
    tmp_path: Path,
    terminals: dict[str, tuple[NebulaPassSimulator, str]],
    postgres_schema: Callable[[], str],
    record_property: Callable[[str, object], None],
) -> None:
    urls = {target: url for target, (_, url) in terminals.items()}
    simulators = {target: simulator for target, (simulator, _) in terminals.items()}
    (tmp_path / "desired.yaml").write_text(desired(urls, PERSONS), encoding="utf-8")
    store_url = postgres_schema()
    replicas: dict[str, Running] = {}
    try:
        for name in REPLICAS:
            replicas[name] = await spawn(
                tmp_path,
                "--interval",
                "3",
                RECONCILER_STORE_URL=store_url,
                RECONCILER_REPLICA_ID=name,
                RECONCILER_LEADERSHIP_CHECK=str(CHECK),
            )
        running = list(replicas.values())

        # 1. Every terminal holds every person, and the targets are spread over all three.
        await until(
            lambda: all(s.person_names() == PERSONS for s in simulators.values()),
            "the first sync",
            running,
        )
        # The others may have synced everything before a slow starter says where it listens.
        await until(lambda: all(r.url for r in running), "every replica listening", running)
        async with aiohttp.ClientSession() as http:
            owners: dict[str, str] = {}

            async def spread() -> bool:
                nonlocal owners
                document = await status(http, replicas["r1"])
                owners = {t: h["owner"] for t, h in document["holders"].items()}
                shares = collections.Counter(owners.values())
                # Each its fair share: ceil(8 / 3) at most, so 3, 3 and 2.
                return (
                    set(owners) == set(TARGETS)
                    and set(shares) == set(REPLICAS)
                    and sorted(shares.values()) == [2, 3, 3]
                )

            deadline = time.monotonic() + DEADLINE
            while not await spread():
                assert time.monotonic() < deadline, f"targets never spread: {owners}"
                await asyncio.sleep(0.2)
            document = await status(http, replicas["r1"])
            assert document["replica"] == "r1"
            assert document["replicas"] == list(REPLICAS)
        for target, simulator in simulators.items():
            assert_one_writer_at_a_time(target, simulator.log.entries)

        # 2. The replica owning the most targets dies without a word: the server drops its
        # session and its locks, and the others own its targets within a check or two.
        victim = max(REPLICAS, key=lambda r: (sum(o == r for o in owners.values()), r))
        orphans = sorted(t for t, o in owners.items() if o == victim)
        survivors = [r for name, r in replicas.items() if name != victim]
        replicas[victim].process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(replicas[victim].process.wait(), DEADLINE) == -9
        killed_at = time.monotonic()
        observer = await PostgresStore.open(store_url, replica="observer")
        try:
            deadline = killed_at + DEADLINE
            while True:
                holders = await observer.holders(orphans)
                if all(h.owner in set(REPLICAS) - {victim} for h in holders.values()):
                    break
                assert time.monotonic() < deadline, f"never taken over: {holders}"
                await asyncio.sleep(0.02)
            owned_at = time.monotonic()
            assert await observer.replicas() == sorted(set(REPLICAS) - {victim})
        finally:
            await observer.aclose()

        # 3. An edit reaches every terminal, the dead replica's through the two others.
        renamed = {pid: f"{name} (v2)" for pid, name in PERSONS.items()}
        (tmp_path / "desired.yaml").write_text(desired(urls, renamed), encoding="utf-8")
        edited_at = time.monotonic()
        await until(
            lambda: all(s.person_names() == renamed for s in simulators.values()),
            "the edit to converge without the killed replica",
            survivors,
        )
        converged_at = time.monotonic()
        for target in orphans:
            after = [e for e in simulators[target].log.entries if e.write and e.at > killed_at]
            assert after, f"{target}: no write after the kill"
            assert {replica_of(e) for e in after} <= set(REPLICAS) - {victim}
        for target, simulator in simulators.items():
            assert_one_writer_at_a_time(target, simulator.log.entries)
        # Measured, never asserted (wall-clock): reported with the test's properties.
        record_property("victim_targets", len(orphans))
        record_property("takeover_seconds", round(owned_at - killed_at, 3))
        record_property("edit_converged_seconds", round(converged_at - edited_at, 3))

        # The survivors stop cleanly, releasing their locks.
        for survivor in survivors:
            survivor.process.send_signal(signal.SIGTERM)
        for survivor in survivors:
            assert await survivor.exited() == 0
    finally:
        for replica in replicas.values():
            await replica.close()


async def test_apply_waits_for_the_writer_then_fails_naming_it(
    tmp_path: Path,
    terminals: dict[str, tuple[NebulaPassSimulator, str]],
    postgres_schema: Callable[[], str],
) -> None:
    urls = {target: url for target, (_, url) in terminals.items()}
    (tmp_path / "desired.yaml").write_text(desired(urls, PERSONS), encoding="utf-8")
    store_url = postgres_schema()
    holder = await PostgresStore.open(store_url, replica="replica-x")
    try:
        await holder.join("daemon")
        async with holder.writer(["t3"]):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reconciler",
                "--target",
                "t2",
                "--target",
                "t3",
                "apply",
                "--yes",
                cwd=tmp_path,
                env={
                    **os.environ,
                    "LOBBY_PASSWORD": PASSWORD,
                    "RECONCILER_STORE_URL": store_url,
                    "RECONCILER_LOCK_WAIT": "1",
                    "RECONCILER_LOG_FORMAT": "json",
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
        assert process.returncode == 1, err.decode()[-2000:]
        assert (
            "target t3 is being written by replica-x (waited 1 s); try again when it has "
            "finished, or raise RECONCILER_LOCK_WAIT"
        ) in err.decode()
        # Nothing was written anywhere, t2 (whose lock it had taken) included.
        assert all(s.log.writes() == 0 for s, _ in terminals.values())
        assert PASSWORD not in (out + err).decode()
        # Once the writer is done, the same apply goes through.
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler",
            "--target",
            "t3",
            "apply",
            "--yes",
            cwd=tmp_path,
            env={
                **os.environ,
                "LOBBY_PASSWORD": PASSWORD,
                "RECONCILER_STORE_URL": store_url,
                "RECONCILER_LOG_FORMAT": "json",
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(done.communicate(), DEADLINE)
        assert done.returncode == 0, err.decode()[-2000:]
        assert terminals["t3"][0].person_names() == PERSONS
        assert {replica_of(e) for e in terminals["t3"][0].log.entries if e.write} == {
            f"{socket.gethostname()}-{done.pid}"
        }
        # `reconciler status` reads the same store.
        shown = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler",
            "status",
            "--json",
            cwd=tmp_path,
            env={**os.environ, "RECONCILER_STORE_URL": store_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shown.communicate(), DEADLINE)
        assert shown.returncode == 0, err.decode()[-2000:]
        document = orjson.loads(out)
        assert document["store"] == store_url  # no password in it to mask
        assert document["targets"]["t3"]["managed"] == len(PERSONS)
    finally:
        await holder.aclose()
