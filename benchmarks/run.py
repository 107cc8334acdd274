"""The benchmark orchestrator: `python -m benchmarks [--sizes 1000,10000,100000] [--scale ...]`.

For each size it stands the simulators up in their own process (benchmarks.simhost), runs every
measurement in a fresh worker process (benchmarks.worker, or the `reconciler` CLI), counts calls
from the simulators' request logs and peak RSS from wait4(), and prints one Markdown table with
the goals of issue 6 beside the figures. I/O: a work directory, subprocesses, loopback sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks import data
from benchmarks.simhost import SimHost
from benchmarks.worker import target_values

LATENCY = 0.02
#: The checkout: workers run in the work directory but import `benchmarks` from here.
ROOT = Path(__file__).resolve().parents[1]
#: Write calls the API needs at least, for `upserts` creates/updates and no deletes.
MINIMUM: dict[str, Callable[[int], int]] = {
    "nebula_pass": lambda upserts: math.ceil(upserts / 100),
    "sophon_fog": lambda upserts: upserts,
    "sophon_sight": lambda upserts: upserts,
    "siteserver": lambda upserts: upserts,
}
#: The scale scenarios of issue 6: a campus and an enterprise, a million person-target pairs each.
FULL_SCALE = "100x10000,10x100000"
OTHER_KINDS = ("sophon_fog", "sophon_sight", "siteserver")


@dataclass
class Measured:
    """What a subprocess returned, how long it took and its peak resident memory."""

    result: Any
    seconds: float
    peak_mib: float
    code: int = 0


def run_process(argv: Sequence[str], *, log: Path, cwd: Path, env: Mapping[str, str]) -> Measured:
    started = time.perf_counter()
    with log.open("ab") as err:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
            list(argv), stdout=subprocess.PIPE, stderr=err, cwd=cwd, env=dict(env)
        )
        assert process.stdout is not None
        with process.stdout:
            out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    return Measured(out, seconds, usage.ru_maxrss / 1024, process.returncode)


@dataclass
class Bench:
    workdir: Path
    host: SimHost
    log: Path
    #: First syncs (and bare clients) measured at each size for the throughput: the median shows.
    syncs: int = 3
    #: size -> measure -> value; "scale" and "kinds" hold the scenarios that are not per size.
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def worker(self, job: Mapping[str, Any]) -> Measured:
        measured = run_process(
            [sys.executable, "-m", "benchmarks.worker", orjson.dumps(job).decode()],
            log=self.log,
            cwd=self.workdir,
            env=_with_root(os.environ),
        )
        if measured.code != 0:
            raise RuntimeError(f"worker {job['job']} failed ({measured.code}); see {self.log}")
        measured.result = orjson.loads(measured.result.strip().splitlines()[-1])
        return measured

    def cli(self, folder: Path, *args: str) -> Measured:
        env = {**_with_root(os.environ), "RECONCILER_STATE_DIR": str(folder / "state")}
        measured = run_process(
            [sys.executable, "-m", "reconciler", "--log-format", "json", *args],
            log=self.log,
            cwd=folder,
            env=env,
        )
        if measured.code not in (0, 2):
            raise RuntimeError(
                f"reconciler {' '.join(args)} exited {measured.code}; see {self.log}"
            )
        return measured

    # -- one size: a nebula_pass device of `size` persons ------------------------------------

    def size(self, size: int) -> None:
        out: dict[str, Any] = {}
        self.results[str(size)] = out
        folder = self.workdir / f"n{size}"
        folder.mkdir(parents=True)
        state = folder / "daemon-state"
        index, urls = self.host.start("nebula_pass", 1, size)
        device = [index]
        targets = {"lobby": target_values("nebula_pass", urls[0])}
        job = {"job": "passes", "state": str(state), "size": size, "targets": targets}

        # First syncs, against devices that answer every request 20 ms late: the device measured
        # next, then fresh ones. One sample moved by 10 points from run to run: the median shows.
        samples = [self._first_sync(size, index, job)]
        for n in range(1, self.syncs):
            extra, extra_urls = self.host.start("nebula_pass", 1, size)
            samples.append(
                self._first_sync(
                    size,
                    extra,
                    {
                        **job,
                        "state": str(folder / f"sync-{n}"),
                        "targets": {"lobby": target_values("nebula_pass", extra_urls[0])},
                    },
                )
            )
        ordered = sorted(samples, key=lambda sample: sample["apply_rate"])
        out.update(ordered[(len(ordered) - 1) // 2])
        out["apply_rates"] = [s["apply_rate"] for s in samples]
        out["first_sync_minimum"] = MINIMUM["nebula_pass"](size)
        # The same calls from a bare aiohttp client, into a device of its own: what this
        # simulator, loopback and machine allow any client.
        bare_rates = []
        for _ in range(self.syncs):
            bare_index, bare_urls = self.host.start("nebula_pass", 1, size)
            self.host.latency(LATENCY, [bare_index])
            bare = self.worker({"job": "bare_batches", "url": bare_urls[0], "size": size})
            out["apply_bare_calls"] = self.host.stats([bare_index])["writes"]
            self.host.latency(0.0, [bare_index])  # the simulator host's collector runs again
            bare_rates.append(out["apply_bare_calls"] / bare.result["seconds"])
        out["apply_bare_rate"] = statistics.median_low(bare_rates)
        out["apply_bare_rates"] = bare_rates

        # The CLI: a cold plan (desired files never seen: no cache, the ledger kept), then warm.
        cli = folder / "cli"
        (cli / "state").mkdir(parents=True)
        data.write_yaml(cli / "desired.yaml", size, 0, targets)
        for name in ("reconciler.sqlite3", "reconciler.sqlite3-wal"):
            if (state / name).exists():
                shutil.copy(state / name, cli / "state" / name)
        # Cold means nothing remembered: no settled plan either (the cold plan makes one, which
        # the warm plan recalls).
        with contextlib.closing(sqlite3.connect(cli / "state" / "reconciler.sqlite3")) as db, db:
            db.execute("DELETE FROM settled_plans")
        bare = self.worker({"job": "bare_yaml", "path": str(cli / "desired.yaml")})
        out["bare_yaml"] = bare.result["seconds"]
        for label in ("cold", "warm"):
            plan = self.cli(cli, "plan", "--detailed-exitcode")
            _check(plan.code == 0, f"{label} plan found changes on a converged device")
            out[f"{label}_plan"] = plan.seconds
            out[f"{label}_plan_mib"] = plan.peak_mib
        out["validate"] = self.cli(cli, "validate").seconds

        # The daemon: a restart (nothing in memory), then no-op passes; the bare listing read.
        self.host.clear(device)
        passes = self.worker(
            {
                **job,
                "listing": urls[0],
                "phases": [
                    {"label": "restart", "version": 0},
                    {"label": "noop", "version": 0, "repeat": 5},
                ],
            }
        )
        stats = self.host.stats(device)
        out["listing"] = passes.result["listing"]["median"]
        out["restart_pass"] = passes.result["restart"][0]["total"]
        out["noop_pass"] = statistics.median(p["total"] for p in passes.result["noop"])
        out["noop_changes"] = sum(p["changes"] for p in passes.result["noop"])
        out["noop_writes"] = stats["writes"]
        out["noop_routes"] = stats["routes"]
        out["daemon_mib"] = passes.peak_mib

        # The whole-snapshot DeepDiff peer plans the 1 % change (it only reads).
        deep = self.worker({"job": "deepdiff", "url": urls[0], "size": size, "version": 1})
        out["deepdiff_plan"] = deep.result["seconds"]
        out["deepdiff_diff"] = deep.result["diff"]
        out["deepdiff_changes"] = deep.result["changes"]

        # Our pass with 1 % of persons changed, after a restart pass; then passes after it.
        self.host.clear(device)
        changed = self.worker(
            {
                **job,
                "phases": [
                    {"label": "restart", "version": 0},
                    {"label": "change", "version": 1},
                    {"label": "after", "version": 1, "repeat": 2},
                ],
            }
        )
        stats = self.host.stats(device)
        change = changed.result["change"][0]
        expected = data.changed_count(size)
        _check(change["applied"] == expected, f"1 % pass applied {change}, not {expected}")
        _check(
            deep.result["changes"] == expected, f"DeepDiff found {deep.result['changes']} changes"
        )
        out["changed"] = expected
        out["change_plan"] = change["plan"]
        out["change_apply"] = change["apply"]
        out["change_writes"] = stats["writes"]
        out["change_minimum"] = MINIMUM["nebula_pass"](expected)
        out["after_changes"] = sum(p["changes"] for p in changed.result["after"])

        # The naive full push, last: it rewrites every person.
        self.host.clear(device)
        naive = self.worker({"job": "naive_push", "url": urls[0], "size": size, "version": 1})
        out["naive_seconds"] = naive.result["seconds"]
        out["naive_writes"] = self.host.stats(device)["writes"]

    # -- every kind: write calls against the minimum ------------------------------------------

    def kinds(self, size: int) -> None:
        found: dict[str, Any] = {}
        self.results.setdefault("kinds", {})[str(size)] = found
        for kind in OTHER_KINDS:
            index, urls = self.host.start(kind, 1, size)
            state = self.workdir / f"{kind}-{size}"
            targets = {"box": target_values(kind, urls[0])}
            job = {"job": "passes", "state": str(state), "size": size, "targets": targets}
            calls = {}
            for label, version in (("sync", 0), ("noop", 0), ("change", 1)):
                self.host.clear([index])
                ran = self.worker({**job, "phases": [{"label": label, "version": version}]})
                done = ran.result[label][0]
                _check(not done["failed"] and not done["errors"], f"{kind} {label}: {done}")
                calls[label] = {
                    "writes": self.host.stats([index])["writes"],
                    "applied": done["applied"],
                    "seconds": done["total"],
                    # Persons the kind refuses (sophon_sight takes no visitors) cost nothing;
                    # departments cost one call each.
                    "minimum": MINIMUM[kind](done["applied"]) + done["departments_applied"],
                }
            _check(calls["noop"]["applied"] == 0, f"{kind}: the no-op pass applied something")
            _check(
                calls["change"]["applied"] == data.changed_count(size),
                f"{kind}: the 1 % pass applied {calls['change']['applied']}",
            )
            found[kind] = calls

    def _first_sync(self, size: int, index: int, job: Mapping[str, Any]) -> dict[str, Any]:
        """A first sync of `size` persons into device `index`, which answers LATENCY late."""
        self.host.latency(LATENCY, [index])
        self.host.clear([index])
        first = self.worker({**job, "phases": [{"label": "sync", "version": 0}]})
        stats = self.host.stats([index])
        self.host.latency(0.0, [index])
        sync = first.result["sync"][0]
        _check(sync["applied"] == size and not sync["failed"], f"first sync: {sync}")
        return {
            "apply_seconds": sync["apply"],
            "apply_calls": stats["writes"],
            "apply_rate": stats["writes"] / sync["apply"],
            "apply_persons_rate": size / sync["apply"],
            "apply_in_flight": stats["writes_in_flight"],
            "apply_call_ms": stats["write_seconds"] * 1000,
            # Before the first write: the plan's log lines, the write-ahead rows; then the rate
            # between the first write's arrival and the last one's answer.
            "apply_lead": stats["first_write"] - sync["apply_started"],
            "apply_sustained": stats["writes"] / (stats["last_write"] - stats["first_write"]),
        }

    # -- throughput when every person is one call ----------------------------------------------

    def throughput(self, persons: int) -> None:
        """A first sync of a sophon_fog box (no batch API: one POST per person) answering every
        request LATENCY late."""
        index, urls = self.host.start("sophon_fog", 1, persons)
        state = self.workdir / f"throughput-{persons}"
        targets = {"box": target_values("sophon_fog", urls[0])}
        self.host.latency(LATENCY, [index])
        self.host.clear([index])
        ran = self.worker(
            {
                "job": "passes",
                "state": str(state),
                "size": persons,
                "targets": targets,
                "phases": [{"label": "sync", "version": 0}],
            }
        )
        sync = ran.result["sync"][0]
        stats = self.host.stats([index])
        self.host.latency(0.0, [index])
        writes = stats["writes"]
        _check(sync["applied"] == persons and writes == persons, f"throughput sync: {sync}")
        # The same calls from a bare aiohttp client: what this simulator and loopback allow.
        bare_index, bare_urls = self.host.start("sophon_fog", 1, persons)
        self.host.latency(LATENCY, [bare_index])
        bare = self.worker({"job": "bare_calls", "url": bare_urls[0], "persons": persons})
        self.host.latency(0.0, [bare_index])
        self.results["throughput"] = {
            "kind": "sophon_fog",
            "persons": persons,
            "calls": writes,
            "apply": sync["apply"],
            "rate": writes / sync["apply"],
            "in_flight": stats["writes_in_flight"],
            "call_ms": stats["write_seconds"] * 1000,
            "bare_rate": persons / bare.result["seconds"],
        }

    # -- many targets ---------------------------------------------------------------------------

    def scale(self, targets: int, size: int) -> None:
        label = f"{targets}x{size}"
        first, urls = self.host.start("nebula_pass", targets, size)
        devices = list(range(first, first + targets))
        state = self.workdir / f"scale-{label}"
        names = [f"t{n:03d}" for n in range(targets)]
        configured = {
            name: target_values("nebula_pass", url) for name, url in zip(names, urls, strict=True)
        }
        job = {"job": "passes", "state": str(state), "size": size}
        seeded = self.worker(
            {
                **job,
                "targets": {names[0]: configured[names[0]]},
                "phases": [{"label": "sync", "version": 0}],
            }
        )
        _check(seeded.result["sync"][0]["applied"] == size, f"seeding {label}")
        # The other devices hold the same persons, and the ledger says we put them there.
        self.host.call("clone", source=first, into=devices[1:])
        self.worker(
            {"job": "copy_ledger", "state": str(state), "source": names[0], "into": names[1:]}
        )
        self.host.clear(devices)
        ran = self.worker(
            {
                **job,
                "targets": configured,
                "phases": [
                    {"label": "restart", "version": 0},
                    {"label": "noop", "version": 0, "repeat": 3},
                ],
            }
        )
        stats = self.host.stats(devices)
        self.results.setdefault("scale", {})[label] = {
            "targets": targets,
            "size": size,
            "restart": ran.result["restart"][0]["total"],
            "noop": statistics.median(p["total"] for p in ran.result["noop"]),
            "changes": sum(p["changes"] for p in ran.result["noop"]),
            "errors": [e for p in ran.result["noop"] for e in p["errors"]],
            "writes": stats["writes"],
            "peak_mib": ran.peak_mib,
        }


def _with_root(env: Mapping[str, str]) -> dict[str, str]:
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def _median_of(rates: Sequence[float]) -> str:
    """Which samples the median shown was taken from, as shares of concurrency / latency."""
    if len(rates) < 2:
        return ""
    shown = ", ".join(f"{rate / (4 / LATENCY):.0%}" for rate in sorted(rates))
    return f" (median of {len(rates)}: {shown})"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark precondition failed: {message}")


# -- the table ------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 10:
        return f"{value:.1f} s"
    return f"{value:.2f} s"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def _rounds(calls: int, concurrency: int) -> str:
    """What whole rounds of calls allow: 10 calls, 4 at a time, take 3 latencies, not 2.5."""
    ceiling = calls / (math.ceil(calls / concurrency) * concurrency)
    return f" (whole rounds of {concurrency} allow at most {ceiling:.0%})" if ceiling < 1 else ""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text(encoding="utf-8").split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def table(results: Mapping[str, Any]) -> str:
    sizes = sorted((k for k in results if k.isdigit()), key=int)
    largest = sizes[-1] if sizes else None
    rows: list[tuple[str, list[str], str, str]] = []

    def placed(size: int, text: str) -> list[str]:
        """A figure in the column of its size (the first column when it has none)."""
        column = sizes.index(str(size)) if str(size) in sizes else 0
        return [text if n == column else "" for n in range(len(sizes))]

    def per_size(
        label: str,
        cell: Callable[[Mapping[str, Any]], str],
        goal: str = "",
        met: Callable[[Mapping[str, Any]], bool | None] | None = None,
    ) -> None:
        verdict = ""
        if met is not None and largest is not None:
            outcome = met(results[largest])
            verdict = "—" if outcome is None else "yes" if outcome else "**no**"
        rows.append((label, [cell(results[s]) for s in sizes], goal, verdict))

    per_size("cold `plan` (CLI: parse, read, plan)", lambda r: _s(r["cold_plan"]))
    per_size(
        "warm `plan` (CLI, nothing changed: the feed read, the settled plan recalled)",
        lambda r: _s(r["warm_plan"]),
        "< 3 s at 100 000",
        lambda r: r["warm_plan"] < 3.0,
    )
    per_size(
        "`validate` (parse + check) / bare C loader, gc paused",
        lambda r: f"{_s(r['validate'])} / {_s(r['bare_yaml'])}",
        "parse never slower than the C loader",
        lambda r: r["validate"] <= r["bare_yaml"],
    )
    per_size("reading the target: listing fetch + decode", lambda r: _s(r["listing"]))
    per_size("daemon pass after a restart (full read)", lambda r: _s(r["restart_pass"]))
    per_size(
        "no-op daemon pass (x the listing read)",
        lambda r: f"{_s(r['noop_pass'])} ({r['noop_pass'] / r['listing']:.2f}x)",
        "≤ 1.5x the listing read",
        lambda r: r["noop_pass"] <= 1.5 * r["listing"],
    )
    per_size(
        "no-op pass: write calls",
        lambda r: str(r["noop_writes"]),
        "0",
        lambda r: r["noop_writes"] == 0 and r["noop_changes"] == 0,
    )
    per_size(
        "1 % changed: plan + apply",
        lambda r: f"{_s(r['change_plan'])} + {_s(r['change_apply'])}",
    )
    per_size(
        "1 % changed: write calls per changed person (x minimum)",
        lambda r: (
            f"{r['change_writes'] / r['changed']:.2f} "
            f"({r['change_writes'] / r['change_minimum']:.2f}x)"
        ),
        "1.00x the minimum",
        lambda r: r["change_writes"] == r["change_minimum"],
    )
    per_size(
        "first sync: write calls (x minimum)",
        lambda r: f"{r['apply_calls']} ({r['apply_calls'] / r['first_sync_minimum']:.2f}x)",
        "1.00x the minimum",
        lambda r: r["apply_calls"] == r["first_sync_minimum"],
    )
    per_size(
        f"apply throughput, {LATENCY * 1000:.0f} ms latency, concurrency 4, 100 persons per call "
        "(nebula_pass first sync): calls/s (persons/s)",
        lambda r: (
            f"{r['apply_rate']:.0f} ({r['apply_persons_rate']:.0f}) = "
            f"{r['apply_rate'] / (4 / LATENCY):.0%}{_median_of(r['apply_rates'])}; "
            f"{r['apply_lead']:.2f} s before the first "
            f"write, then {r['apply_sustained']:.0f} = {r['apply_sustained'] / (4 / LATENCY):.0%}; "
            f"in flight {r['apply_in_flight']:.2f} of 4, {r['apply_call_ms']:.1f} ms a call at "
            f"the target; a bare aiohttp client: {r['apply_bare_rate']:.0f} = "
            f"{r['apply_bare_rate'] / (4 / LATENCY):.0%}{_median_of(r['apply_bare_rates'])}"
            f"{_rounds(r['apply_calls'], 4)}"
        ),
        f"≥ 90 % of {4 / LATENCY:.0f} calls/s",
        lambda r: r["apply_rate"] >= 0.9 * 4 / LATENCY,
    )
    throughput = results.get("throughput")
    if throughput is not None:
        rate = throughput["rate"]
        rows.append(
            (
                f"apply throughput, {LATENCY * 1000:.0f} ms latency, concurrency 4, one call per "
                f"person ({throughput['kind']}, {throughput['persons']:,} creates): calls/s",
                placed(
                    throughput["persons"],
                    f"{rate:.0f} = {rate / (4 / LATENCY):.0%}; in flight "
                    f"{throughput['in_flight']:.2f} of 4, {throughput['call_ms']:.1f} ms a call "
                    f"at the target; a bare aiohttp client: {throughput['bare_rate']:.0f} = "
                    f"{throughput['bare_rate'] / (4 / LATENCY):.0%}",
                ),
                f"≥ 90 % of {4 / LATENCY:.0f} calls/s",
                "yes" if rate >= 0.9 * 4 / LATENCY else "**no**",
            )
        )
    per_size("peak RSS of the daemon process, one target", lambda r: f"{r['daemon_mib']:.0f} MiB")
    per_size(
        "peer: naive full push, write calls (ours / theirs)",
        lambda r: f"{r['naive_writes']} (1/{r['naive_writes'] / max(r['change_writes'], 1):.0f})",
        "≥ 50x fewer",
        lambda r: r["naive_writes"] >= 50 * r["change_writes"],
    )
    per_size(
        "peer: whole-snapshot DeepDiff planner, plan (x ours)",
        lambda r: f"{_s(r['deepdiff_plan'])} ({_x(r['deepdiff_plan'] / r['change_plan'])})",
        "ours ≥ 30x faster",
        lambda r: r["deepdiff_plan"] >= 30 * r["change_plan"],
    )

    for size_label, found in sorted(results.get("kinds", {}).items(), key=lambda i: int(i[0])):
        for kind, calls in found.items():
            parts = []
            ok = True
            for phase in ("sync", "change", "noop"):
                entry = calls[phase]
                ok = ok and entry["writes"] == entry["minimum"]
                parts.append(f"{phase} {entry['writes']}/{entry['minimum']}")
            rows.append(
                (
                    f"{kind}, {int(size_label):,} persons: write calls / minimum",
                    placed(int(size_label), ", ".join(parts)),
                    "1.00x, no-op 0",
                    "yes" if ok else "**no**",
                )
            )
    for entry in results.get("scale", {}).values():
        targets, size = entry["targets"], entry["size"]
        summary = (
            f"no-op pass {_s(entry['noop'])} (after a restart {_s(entry['restart'])}), "
            f"{entry['writes']} writes, peak {entry['peak_mib']:.0f} MiB"
        )
        goal = verdict = ""
        if (targets, size) == (100, 10_000):
            goal = "no-op pass < 30 s"
            verdict = "yes" if entry["noop"] < 30 and not entry["writes"] else "**no**"
        elif (targets, size) == (10, 100_000):
            goal = "peak < 1 GiB"
            verdict = "yes" if entry["peak_mib"] < 1024 and not entry["writes"] else "**no**"
        rows.append(
            (f"{targets} targets x {size:,} persons each", placed(size, summary), goal, verdict)
        )
    header = [
        "measure",
        *(f"{int(s):,} persons" for s in sizes),
        "goal (at the largest size)",
        "met",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells, goal, verdict in rows:
        lines.append("| " + " | ".join([label, *cells, goal, verdict]) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def work_directory(given: Path | None) -> Iterator[Path]:
    """The directory given (emptied first and kept), or a temporary one removed afterwards."""
    if given is not None:
        shutil.rmtree(given, ignore_errors=True)
        given.mkdir(parents=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as folder:
        yield Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000", help="persons, comma-separated")
    parser.add_argument(
        "--kinds-at",
        help="sizes at which every kind's write calls are checked, comma-separated "
        "(default: 10000 when measured, else the largest size; '' skips)",
    )
    parser.add_argument(
        "--scale",
        help=f"TARGETSxPERSONS scenarios, comma-separated (default: {FULL_SCALE} when "
        "100000 persons are measured, else none; '' skips)",
    )
    parser.add_argument(
        "--throughput",
        type=int,
        default=1000,
        help="persons of the one-call-per-person throughput run (0 skips)",
    )
    parser.add_argument(
        "--syncs",
        type=int,
        default=3,
        help="first syncs measured at each size for the apply throughput (the median is shown)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the work files here (default: temporary)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.kinds_at is None:
        args.kinds_at = "10000" if 10_000 in sizes else str(max(sizes, default=""))
    if args.scale is None:
        args.scale = FULL_SCALE if max(sizes, default=0) >= 100_000 else ""
    kinds_at = [int(s) for s in args.kinds_at.split(",") if s.strip()]
    scale = [tuple(int(n) for n in s.split("x")) for s in args.scale.split(",") if s.strip()]

    with work_directory(args.workdir) as workdir, SimHost() as host:
        bench = Bench(workdir=workdir, host=host, log=workdir / "bench.log", syncs=args.syncs)
        started = time.perf_counter()
        for size in sizes:
            print(f"… {size:,} persons", file=sys.stderr, flush=True)
            bench.size(size)
        if args.throughput:
            print(f"… throughput, {args.throughput:,} calls", file=sys.stderr, flush=True)
            bench.throughput(args.throughput)
        for size in kinds_at:
            print(f"… every kind at {size:,} persons", file=sys.stderr, flush=True)
            bench.kinds(size)
        for targets, size in scale:
            print(f"… {targets} targets x {size:,} persons", file=sys.stderr, flush=True)
            bench.scale(targets, size)
        elapsed = time.perf_counter() - started
        if args.json:
            args.json.write_bytes(orjson.dumps(bench.results, option=orjson.OPT_INDENT_2))
    print(f"Measured on {machine()}, in {elapsed / 60:.1f} min.\n")
    print(table(bench.results))
    return 0
