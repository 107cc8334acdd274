"""One measurement, in a process of its own: `python -m benchmarks.worker '<json job>'`.

Prints its result as one JSON line on stdout; the orchestrator reads the process's peak RSS from
wait4(). The product runs here exactly as the daemon runs it (cycle.plan, then cycle.apply, with
the desired state in memory); the peers (a naive full push, a whole-snapshot DeepDiff planner)
run here too, against the same simulators. I/O: the simulators over loopback, the state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from deepdiff import DeepDiff

from benchmarks import data
from benchmarks.simhost import LOGIN
from reconciler import cycle, logs
from reconciler.app import App, build_target
from reconciler.core.records import Hasher
from reconciler.settings import Settings
from reconciler.store.sqlite import SqliteStore
from reconciler.targets import nebula_pass

#: Settings every benchmark target shares: no rate limit (the simulators are local), the
#: largest batches the APIs take, the default concurrency.
COMMON: Mapping[str, Any] = {"rate_limit": None, "concurrency": 4}
BATCH: Mapping[str, Mapping[str, Any]] = {"nebula_pass": {"batch_size": 100}}
#: Requests in flight for the peers: the same as the product's default concurrency.
PEER_CONCURRENCY = 4
PAGE = 100


def target_values(kind: str, url: str) -> dict[str, Any]:
    return {"kind": kind, "url": url, **LOGIN[kind], **COMMON, **BATCH.get(kind, {})}


@contextlib.asynccontextmanager
async def bench_app(
    state: Path, size: int, version: int, targets: Mapping[str, Mapping[str, Any]]
) -> AsyncIterator[App]:
    store = await SqliteStore.open(state / "reconciler.sqlite3")
    app: App | None = None
    try:
        hasher = Hasher(await store.fingerprint_key())
        validated = data.validated(size, version, targets, hasher)
        app = App(
            settings=Settings(state_dir=state),
            desired=validated,
            targets={name: build_target(validated, name, None) for name in sorted(targets)},
            store=store,
            hasher=hasher,
        )
        yield app
    finally:
        if app is not None:
            await app.aclose_targets()
        await store.aclose()


async def one_pass(app: App) -> dict[str, Any]:
    """A daemon pass: plan (with back-off) and apply, each timed."""
    started = time.perf_counter()
    plan = await cycle.plan(app, backoff=True)
    planned = time.perf_counter()
    # The simulators' request log keeps time.monotonic(): the moment apply began, on that clock.
    apply_started = time.monotonic()
    report = await cycle.apply(app, plan)
    applied = time.perf_counter()
    return {
        "plan": planned - started,
        "apply": applied - planned,
        "apply_started": apply_started,
        "total": applied - started,
        "changes": sum(plan.summary().values()),
        "applied": report.applied,
        "departments_applied": sum(sum(t.departments_applied.values()) for t in report.targets),
        "failed": report.failed,
        "errors": [t.error for t in plan.targets.values() if t.error],
    }


async def job_passes(job: Mapping[str, Any]) -> dict[str, Any]:
    """Passes over the targets, in phases: [{"label", "version", "repeat"}]; a phase whose
    version differs from the loaded one switches the desired state first, as a reload does."""
    state = Path(job["state"])
    size = job["size"]
    targets = job["targets"]
    phases = job["phases"]
    results: dict[str, Any] = {}
    if job.get("listing"):
        results["listing"] = await listing_baseline(job["listing"], job.get("listing_repeat", 3))
    async with bench_app(state, size, phases[0]["version"], targets) as app:
        version = phases[0]["version"]
        for phase in phases:
            if phase["version"] != version:
                version = phase["version"]
                await app.replace_desired(data.validated(size, version, targets, app.hasher))
            results[phase["label"]] = [await one_pass(app) for _ in range(phase.get("repeat", 1))]
    return results


async def job_copy_ledger(job: Mapping[str, Any]) -> dict[str, Any]:
    """Give other targets the ledger of one (their devices were cloned from its device)."""
    store = await SqliteStore.open(Path(job["state"]) / "reconciler.sqlite3")
    try:
        entries = list((await store.ledger(job["source"])).values())
        for name in job["into"]:
            await store.record(name, entries)
    finally:
        await store.aclose()
    return {"entries": len(entries)}


# -- the cost of reading a target: the floor a no-op pass is measured against -----------------


async def _login(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    body = {**NEBULA_LOGIN, "validTime": 60}
    async with session.post(url + "/v1/auth/login", json=body) as response:
        token = orjson.loads(await response.read())["data"]["token"]
    return {"Authorization": f"Bearer {token}"}


NEBULA_LOGIN = dict(LOGIN["nebula_pass"])


async def _listing(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    """Every page of the listing, PEER_CONCURRENCY in flight, each decoded: the bare read."""

    async def page(offset: int) -> Any:
        async with session.get(f"{url}/v1/user/offset/{offset}/limit/{PAGE}", headers=headers) as r:
            return orjson.loads(await r.read())["data"]

    first = await page(0)
    offsets = iter(range(PAGE, first["total"], PAGE))
    count = len(first["items"])

    async def worker() -> int:
        read = 0
        for offset in offsets:
            read += len((await page(offset))["items"])
        return read

    counts = await asyncio.gather(*(worker() for _ in range(PEER_CONCURRENCY)))
    return count + sum(counts)


async def listing_baseline(url: str, repeat: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=PEER_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = await _login(session, url)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            count = await _listing(session, url, headers)
            times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "times": times, "persons": count}


# -- the peers ----------------------------------------------------------------------------------


def _device_items(size: int, version: int) -> list[dict[str, Any]]:
    """Every person as the device takes it: what a naive script sends (no photos here)."""
    settings = nebula_pass.Settings(url="http://unused", **NEBULA_LOGIN)
    items = []
    for person in data.persons(size, version).values():
        record = nebula_pass.render(person, settings)
        assert isinstance(record, dict)
        item = {"user_id": person.id, **record}
        del item["avatar"]
        item["guest_time_start"] = item["guest_time_start"] or 0
        item["guest_time_end"] = item["guest_time_end"] or 0
        items.append(item)
    return items


async def job_naive_push(job: Mapping[str, Any]) -> dict[str, Any]:
    """What cron scripts do today: log in, re-push every person in batches, every run."""
    url = job["url"]
    started = time.perf_counter()
    items = _device_items(job["size"], job["version"])
    batches = iter(range(0, len(items), PAGE))
    connector = aiohttp.TCPConnector(limit=PEER_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = await _login(session, url)

        async def worker() -> int:
            calls = 0
            for start in batches:
                body = {"user_list": items[start : start + PAGE]}
                async with session.post(url + "/v2/user", json=body, headers=headers) as r:
                    answer = orjson.loads(await r.read())
                    if answer["data"]["errors"]:
                        raise RuntimeError(f"naive push refused: {answer['data']['errors'][:1]}")
                calls += 1
            return calls

        calls = sum(await asyncio.gather(*(worker() for _ in range(PEER_CONCURRENCY))))
    return {"seconds": time.perf_counter() - started, "calls": calls}


async def job_deepdiff(job: Mapping[str, Any]) -> dict[str, Any]:
    """A planner that reads the whole listing and DeepDiffs the whole snapshot against the
    whole desired snapshot, then reads the changed persons off the diff."""
    url = job["url"]
    started = time.perf_counter()
    listed: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=PEER_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = await _login(session, url)

        async def page(offset: int) -> dict[str, Any]:
            path = f"{url}/v1/user/offset/{offset}/limit/{PAGE}"
            async with session.get(path, headers=headers) as r:
                answer: dict[str, Any] = orjson.loads(await r.read())["data"]
                listed.extend(answer["items"])
                return answer

        offsets = iter(range(PAGE, (await page(0))["total"], PAGE))

        async def worker() -> None:
            for offset in offsets:
                await page(offset)

        await asyncio.gather(*(worker() for _ in range(PEER_CONCURRENCY)))
    read = time.perf_counter()
    desired = {item["user_id"]: item for item in _device_items(job["size"], job["version"])}
    fields = set(next(iter(desired.values()))) if desired else set()
    observed = {u["user_id"]: {k: v for k, v in u.items() if k in fields} for u in listed}
    diff = DeepDiff(observed, desired, view="tree")
    changed = set()
    for items in diff.values():
        for item in items:
            path = item.path(output_format="list")
            if path:
                changed.add(str(path[0]))
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "read": read - started,
        "diff": finished - read,
        "changes": len(changed),
    }


async def job_bare_calls(job: Mapping[str, Any]) -> dict[str, Any]:
    """The ceiling of the throughput run: a bare aiohttp client enrolling as many persons in
    a sophon_fog box, PEER_CONCURRENCY at a time, without retries, ledger or logs."""
    url = job["url"] + "/SophonFogSys/api/users"
    persons = iter(range(job["persons"]))
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=PEER_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in persons:
                body = {
                    "identity_id": f"bare{n}",
                    "group_name": "default_group",
                    "ignore_exist": True,
                    "need_bring_pic": False,
                    "info": {"name": f"bare {n}", "type": 1, "permission_ids": ["0"]},
                }
                async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(f"bare call refused: HTTP {r.status}")
                    await r.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(PEER_CONCURRENCY)))
    return {"seconds": time.perf_counter() - started}


async def job_bare_batches(job: Mapping[str, Any]) -> dict[str, Any]:
    """The ceiling of the batch throughput run: a bare aiohttp client upserting the same persons
    into a nebula_pass device, PAGE a call and PEER_CONCURRENCY calls at a time, the bodies
    built before the clock starts: no planning, write-ahead, ledger or logs."""
    url = job["url"]
    items = _device_items(job["size"], 0)
    bodies = iter(
        [orjson.dumps({"user_list": items[s : s + PAGE]}) for s in range(0, len(items), PAGE)]
    )
    connector = aiohttp.TCPConnector(limit=PEER_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {**await _login(session, url), "Content-Type": "application/json"}

        async def worker() -> None:
            for body in bodies:
                async with session.post(url + "/v2/user", data=body, headers=headers) as r:
                    answer = orjson.loads(await r.read())
                    if r.status != 200 or answer["data"]["errors"]:
                        raise RuntimeError(f"bare batch refused: HTTP {r.status} {answer}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(PEER_CONCURRENCY)))
    return {"seconds": time.perf_counter() - started}


async def job_bare_yaml(job: Mapping[str, Any]) -> dict[str, Any]:
    """Seconds PyYAML's C loader takes for the file with the collector paused: the floor a
    cold parse is held to."""
    text = await asyncio.to_thread(Path(job["path"]).read_bytes)
    gc.disable()
    try:
        started = time.perf_counter()
        yaml.load(text, Loader=yaml.CSafeLoader)
        return {"seconds": time.perf_counter() - started}
    finally:
        gc.enable()


JOBS = {
    "passes": job_passes,
    "copy_ledger": job_copy_ledger,
    "naive_push": job_naive_push,
    "deepdiff": job_deepdiff,
    "bare_yaml": job_bare_yaml,
    "bare_calls": job_bare_calls,
    "bare_batches": job_bare_batches,
}


def main() -> None:
    job = orjson.loads(sys.argv[1])
    logs.configure("json")
    result = asyncio.run(JOBS[job["job"]](job))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
