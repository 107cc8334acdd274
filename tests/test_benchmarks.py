"""The benchmark harness at a tiny size, so that it cannot rot: structure and call counts only
(never times: a shared machine makes them meaningless here)."""

from __future__ import annotations

import asyncio
import gc
import math
from pathlib import Path

import aiohttp
import orjson
import pytest

from benchmarks import data, run, simhost
from reconciler.core.records import Hasher
from reconciler.simulators.base import serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.sources import yamlfile

SIZE = 200


def test_the_generated_yaml_loads_into_the_desired_state_built_in_memory(tmp_path: Path) -> None:
    hasher = Hasher(b"b" * 32)
    targets = {"lobby": {"kind": "nebula_pass", "url": "http://127.0.0.1:9", "rate_limit": None}}
    for version in (0, 1):
        path = tmp_path / f"v{version}.yaml"
        data.write_yaml(path, SIZE, version, targets)
        loaded = yamlfile.load(path, env={}, hasher=hasher).desired
        built = data.desired(SIZE, version, hasher)
        assert loaded.persons == built.persons
        assert loaded.departments == built.departments
        assert loaded.digest == built.digest
    changed = [
        pid for pid, person in data.persons(SIZE, 1).items() if person != data.persons(SIZE, 0)[pid]
    ]
    assert len(changed) == data.changed_count(SIZE) == SIZE // 100


@pytest.mark.timeout(300)
def test_the_harness_runs_end_to_end_and_prints_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    code = run.main(
        [
            "--sizes",
            str(SIZE),
            "--kinds-at",
            str(SIZE),
            "--scale",
            f"3x{SIZE}",
            "--throughput",
            "20",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(results),
        ]
    )
    assert code == 0
    found = orjson.loads(results.read_bytes())

    measured = found[str(SIZE)]
    changed = data.changed_count(SIZE)
    # The product's calls, counted by the simulators: the minimum the API allows, and none
    # at all when nothing changed.
    assert measured["apply_calls"] == measured["first_sync_minimum"] == math.ceil(SIZE / 100)
    assert measured["noop_writes"] == measured["noop_changes"] == 0
    assert measured["changed"] == changed
    assert measured["change_writes"] == measured["change_minimum"] == 1
    assert measured["after_changes"] == 0
    # The peers ran against the same device: the naive push rewrote everyone, the DeepDiff
    # planner found the same changes as ours.
    assert measured["naive_writes"] == math.ceil(SIZE / 100)
    assert measured["apply_bare_calls"] == math.ceil(SIZE / 100)  # the bare client's ceiling
    # Throughput is the median of three first syncs, each into a device of its own.
    assert len(measured["apply_rates"]) == len(measured["apply_bare_rates"]) == 3
    assert measured["apply_rate"] == sorted(measured["apply_rates"])[1]
    assert measured["deepdiff_changes"] == changed
    for kind, calls in found["kinds"][str(SIZE)].items():
        for phase, entry in calls.items():
            assert entry["writes"] == entry["minimum"], (kind, phase, entry)
        assert calls["noop"]["writes"] == 0
    assert found["throughput"]["calls"] == found["throughput"]["persons"] == 20
    scale = found["scale"][f"3x{SIZE}"]
    assert scale["writes"] == scale["changes"] == 0
    assert scale["errors"] == []

    table = capsys.readouterr().out
    assert table.startswith("Measured on ")
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| measure | 200 persons |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    rows = (
        "warm `plan`",
        "no-op daemon pass",
        "naive full push",
        "DeepDiff",
        "3 targets",
        "one call per",
    )
    for row in rows:
        assert any(row in line for line in lines), row


def test_the_table_names_the_samples_a_median_was_taken_from() -> None:
    assert run._median_of([170.0, 182.0, 176.0]) == " (median of 3: 85%, 88%, 91%)"
    assert run._median_of([176.0]) == ""


def test_the_table_says_what_whole_rounds_of_calls_allow() -> None:
    # 10 calls, 4 at a time, take 3 latencies: at most 10 / 12 of concurrency / latency.
    assert run._rounds(10, 4) == " (whole rounds of 4 allow at most 83%)"
    assert run._rounds(1000, 4) == ""


def test_the_simulator_host_never_answers_before_the_latency_it_was_given() -> None:
    # Its loop waits to the microsecond; a device must still never answer early.
    async def exercise() -> list[float]:
        simulator = NebulaPassSimulator()
        simulator.faults.latency = 0.0123
        async with await serve(simulator) as served, aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(served.url + "/v1/user/offset/0/limit/10") as response:
                    assert response.status == 401  # no token: answered, late all the same
        return [entry.done - entry.at for entry in simulator.log.entries]

    with asyncio.Runner(loop_factory=simhost.precise_loop) as runner:
        spans = runner.run(exercise())
    assert len(spans) == 5
    assert all(span >= 0.0123 for span in spans), spans


def test_the_simulator_host_pauses_its_collector_while_a_device_answers_late() -> None:
    host = simhost._Host()
    host.simulators += [NebulaPassSimulator(), NebulaPassSimulator()]
    try:
        host.latency([0], 0.02)
        assert not gc.isenabled()
        host.latency([1], 0.0)  # the other device still answers late
        assert not gc.isenabled()
        host.latency(None, 0.0)
        assert gc.isenabled()
    finally:
        gc.enable()
