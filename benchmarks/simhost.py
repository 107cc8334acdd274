"""The simulators of a benchmark run, in a process of their own, steered over a pipe.

Run as `python -m benchmarks.simhost`: reads one JSON command per line on stdin and answers one
JSON line on stdout. Keeping the simulators out of the measured processes means their CPU time is
not charged to the product (the machine has two cores: one serves, one reconciles). `SimHost` is
the orchestrator's side. I/O: loopback sockets, the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import selectors
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from reconciler.daemon.server import Listening
from reconciler.simulators.base import Simulator, serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.siteserver import SiteServerSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.simulators.sophon_sight import SophonSightSimulator

#: How each kind's simulator is built for a benchmark; `size` raises capacities above it.
BUILD: dict[str, Callable[[int], Simulator]] = {
    "nebula_pass": lambda size: NebulaPassSimulator(max_users=max(100_000, size)),
    "sophon_fog": lambda size: SophonFogSimulator(capacity=max(50_000, size)),
    "sophon_sight": lambda size: SophonSightSimulator(time_window=None),
    "siteserver": lambda size: SiteServerSimulator(),
}
#: The target settings that log in to each kind's simulator, and keep the simulator's limits.
LOGIN: dict[str, Mapping[str, Any]] = {
    "nebula_pass": dict(NebulaPassSimulator.LOGIN),
    "sophon_fog": dict(SophonFogSimulator.LOGIN),
    "sophon_sight": {**SophonSightSimulator.LOGIN, "default_department": "HQ"},
    "siteserver": {**SiteServerSimulator.LOGIN, "initial_password": "Bench-pw-1"},
}


class _PreciseSelector(selectors.EpollSelector):
    """epoll, waiting with select()'s microsecond timeout on the epoll descriptor itself.

    epoll_wait counts whole milliseconds, rounded up, so a device told to answer 20 ms after a
    request answered 20.6-20.9 ms after it (the median), and that wait was charged to the client
    measured. select() sleeps to the microsecond; asyncio still never runs a timer early.
    """

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            select.select([self.fileno()], [], [], timeout)  # readable once an event is ready
            timeout = 0
        return super().select(timeout)


class _Host:
    def __init__(self) -> None:
        self.simulators: list[Simulator] = []
        self.served: list[Listening] = []

    async def start(self, kind: str, count: int, size: int) -> dict[str, Any]:
        first = len(self.simulators)
        urls = []
        for _ in range(count):
            simulator = BUILD[kind](size)
            served = await serve(simulator)
            self.simulators.append(simulator)
            self.served.append(served)
            urls.append(served.url)
        return {"first": first, "urls": urls}

    def _chosen(self, indices: Sequence[int] | None) -> list[Simulator]:
        return self.simulators if indices is None else [self.simulators[i] for i in indices]

    def latency(self, indices: Sequence[int] | None, seconds: float) -> dict[str, Any]:
        for simulator in self._chosen(indices):
            simulator.faults.latency = seconds
        # While a device answers late the cyclic collector is paused: a full collection over
        # 100 000 simulated users took 25-95 ms and held back every call in flight, a pause of
        # the simulator's that was charged to the client measured.
        if any(simulator.faults.latency > 0 for simulator in self.simulators):
            gc.disable()
        else:
            gc.enable()
        return {}

    def stats(self, indices: Sequence[int] | None) -> dict[str, Any]:
        """Requests by kind of call since the last clear, summed over the chosen simulators."""
        routes: Counter[str] = Counter()
        writes = items = requests = 0
        busy = 0.0
        spans: list[float] = []
        first, last = float("inf"), float("-inf")
        for simulator in self._chosen(indices):
            for entry in simulator.log.entries:
                requests += 1
                routes[f"{entry.method} {entry.route}"] += 1
                if entry.write:
                    writes += 1
                    items += entry.items or 0
                    busy += entry.done - entry.at
                    spans.append(entry.done - entry.at)
                    first, last = min(first, entry.at), max(last, entry.done)
        return {
            "requests": requests,
            "writes": writes,
            "items": items,
            "routes": dict(routes),
            # Write requests the simulators were answering at once, on average, from the first
            # write's arrival to the last one's answer: how well a client keeps them in flight.
            "writes_in_flight": busy / (last - first) if writes and last > first else 0.0,
            # Seconds a write took at the simulator, arrival to answer (median).
            "write_seconds": statistics.median(spans) if spans else 0.0,
            # time.monotonic() of the first write's arrival and the last one's answer, which
            # the measured process compares with its own clock (the same clock, machine-wide).
            "first_write": first if writes else None,
            "last_write": last if writes else None,
        }

    def clear(self, indices: Sequence[int] | None) -> dict[str, Any]:
        for simulator in self._chosen(indices):
            simulator.log.clear()
        return {}

    def clone(self, source: int, into: Sequence[int]) -> dict[str, Any]:
        """Give other devices of a kind the same persons (shared, never edited in place)."""
        original = self.simulators[source]
        for index in into:
            copy = self.simulators[index]
            if isinstance(original, NebulaPassSimulator) and isinstance(copy, NebulaPassSimulator):
                copy.users = dict(original.users)
                copy.touched()
            else:
                raise ValueError("clone is only needed (and written) for nebula_pass")
        return {}

    def edit(self, index: int, person_ids: Sequence[str], remark: str) -> dict[str, Any]:
        """Persons edited at the device's own screen, behind reconciler's back (drift)."""
        simulator = self.simulators[index]
        if not isinstance(simulator, NebulaPassSimulator):
            raise ValueError("edit is only written for nebula_pass")
        for pid in person_ids:
            simulator.edit_user(pid, remark=remark)
        return {}

    def count(self, index: int) -> dict[str, Any]:
        return {"persons": len(self.simulators[index].person_names())}

    async def close(self) -> None:
        for served in self.served:
            await served.close()


async def _main() -> None:
    host = _Host()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    try:
        while line := await reader.readline():
            command = orjson.loads(line)
            op = command.pop("op")
            try:
                if op == "quit":
                    out.write(b"{}\n")
                    out.flush()
                    break
                if op == "start":
                    answer = await host.start(**command)
                else:
                    answer = getattr(host, op)(**command)
            except Exception as exc:  # the orchestrator shows it and stops
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(orjson.dumps(answer) + b"\n")
            out.flush()
    finally:
        await host.close()


class SimHost:
    """The orchestrator's handle on a simhost process."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.simhost"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        stdin: IO[bytes] | None = self._process.stdin
        stdout: IO[bytes] | None = self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(orjson.dumps({"op": op, **arguments}) + b"\n")
        stdin.flush()
        answer: dict[str, Any] = orjson.loads(stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"simhost {op}: {answer['error']}")
        return answer

    def start(self, kind: str, count: int = 1, size: int = 0) -> tuple[int, list[str]]:
        answer = self.call("start", kind=kind, count=count, size=size)
        return answer["first"], answer["urls"]

    def stats(self, indices: Sequence[int] | None = None) -> dict[str, Any]:
        return self.call("stats", indices=indices)

    def clear(self, indices: Sequence[int] | None = None) -> None:
        self.call("clear", indices=indices)

    def latency(self, seconds: float, indices: Sequence[int] | None = None) -> None:
        self.call("latency", indices=indices, seconds=seconds)

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.call("quit")
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> SimHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def precise_loop() -> asyncio.AbstractEventLoop:
    """The simulator host's event loop: its timers fire within microseconds, not a millisecond."""
    return asyncio.SelectorEventLoop(_PreciseSelector())


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=precise_loop) as runner:
        runner.run(_main())
