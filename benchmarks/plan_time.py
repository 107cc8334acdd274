"""How long `reconciler plan` takes for N persons against a nebula_pass simulator on loopback.

A rough figure for the walking skeleton (the full benchmark suite comes later). Runs by hand:
    .venv/bin/python benchmarks/plan_time.py [N]
It times the whole `reconciler plan` command (a subprocess: start-up, parse, observe, plan,
render) twice: against an empty device (every person a create) and after applying (no changes).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from reconciler.simulators.base import serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator


def desired_yaml(url: str, count: int) -> str:
    lines = [
        "version: 1",
        "targets:",
        "  lobby:",
        "    kind: nebula_pass",
        f"    url: {url}",
        "    username: admin",
        "    password: ${BENCH_PASSWORD}",
        "    rate_limit: null",
        "    batch_size: 100",
        "persons:",
    ]
    for n in range(count):
        lines += [
            f'  - id: "{100000 + n}"',
            f"    name: person {n}",
            f'    job_number: "{n}"',
            f'    card: "{n:08d}"',
            "    groups: [hq]",
        ]
    return "\n".join(lines) + "\n"


async def command(root: Path, *args: str) -> tuple[float, int]:
    env = {**os.environ, "BENCH_PASSWORD": "bench-pw", "RECONCILER_STATE_DIR": str(root / "state")}
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reconciler",
        "--log-format",
        "json",
        *args,
        cwd=root,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    code = await asyncio.wait_for(process.wait(), 600)
    return time.perf_counter() - started, code


async def main(count: int) -> None:
    simulator = NebulaPassSimulator(password="bench-pw")
    served = await serve(simulator)
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "desired.yaml").write_text(desired_yaml(served.url, count), encoding="utf-8")
            empty, code = await command(root, "plan")
            print(f"plan, {count} persons, empty device (all creates): {empty:.2f} s (exit {code})")
            applied, code = await command(root, "apply", "--yes")
            print(
                f"apply, {count} creates: {applied:.2f} s (exit {code}), "
                f"{simulator.log.count('POST', '/v2/user')} POST /v2/user calls"
            )
            converged, code = await command(root, "plan")
            print(f"plan, {count} persons, converged (no changes): {converged:.2f} s (exit {code})")
    finally:
        await served.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
