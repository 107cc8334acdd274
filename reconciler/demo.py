"""`reconciler demo` and `reconciler simulate`: the product against its bundled simulators.

demo: serves one simulator per target of desired.example.yaml on loopback, points the targets at
them, then plans, applies and plans again (which must show no changes). I/O: sockets on
127.0.0.1, the demo store under <state_dir>/demo, the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from reconciler import app as composition
from reconciler import cycle
from reconciler.core.changes import Plan
from reconciler.daemon.server import Listening
from reconciler.errors import ConfigError
from reconciler.settings import Settings
from reconciler.simulators.base import Simulator, serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.siteserver import SiteServerSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.simulators.sophon_sight import SophonSightSimulator

EXAMPLE = Path("desired.example.yaml")


@dataclass(frozen=True, slots=True, kw_only=True)
class KindSimulator:
    """How to stand up one kind's simulator, and the target settings that log in to it."""

    build: Callable[[Mapping[str, str]], Simulator]
    #: Credential settings the simulator checks, with the well-known values `simulate` uses.
    credentials: Mapping[str, str]


SIMULATORS: dict[str, KindSimulator] = {
    "nebula_pass": KindSimulator(
        build=lambda c: NebulaPassSimulator(username=c["username"], password=c["password"]),
        credentials=NebulaPassSimulator.LOGIN,
    ),
    "siteserver": KindSimulator(
        build=lambda c: SiteServerSimulator(api_key=c["api_key"]),
        credentials=SiteServerSimulator.LOGIN,
    ),
    "sophon_fog": KindSimulator(
        # A box with the permission group desired.example.yaml maps its hq group to.
        build=lambda c: SophonFogSimulator(
            permissions={"HQ doors": "5f1c2a9e-3b7d-4e8a-9c61-2d4f8b0e7a13"}
        ),
        credentials=SophonFogSimulator.LOGIN,
    ),
    "sophon_sight": KindSimulator(
        build=lambda c: SophonSightSimulator(appkey=c["appkey"], secret=c["secret"]),
        credentials=SophonSightSimulator.LOGIN,
    ),
}


def demo_credentials(kind: str) -> dict[str, str]:
    """Fresh credentials for one demo run: generated, never printed."""
    return {
        key: "admin" if key == "username" else secrets.token_hex(8)
        for key in SIMULATORS[kind].credentials
    }


def _seed(simulator: Simulator) -> None:
    """Someone enrolled at a device by hand: the demo shows it is reported, never touched."""
    simulator.add_person("9001", "前台登记")


class DemoEnvironment(Mapping[str, str]):
    """The real environment, with a placeholder for any ${VAR} the example needs but lacks.

    Credentials never come from here: every target's login is overridden with the simulator's.
    """

    def __init__(self, real: Mapping[str, str]) -> None:
        self._real = real

    def __getitem__(self, key: str) -> str:
        # Letters and a digit: a placeholder password must pass a CMS's password rules.
        return self._real.get(key, f"demo-{key.lower()}-0")

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._real)

    def __len__(self) -> int:
        return len(self._real)


def prepare(example: Path = EXAMPLE) -> Settings:
    """Settings for a demo run: a store of its own, emptied, since the simulators start empty."""
    if not example.is_file():
        raise ConfigError(
            f"{example} not found: run `reconciler demo` from the reconciler checkout"
        )
    state = Settings().state_dir / "demo"
    for stale in state.glob("reconciler.sqlite3*"):
        stale.unlink()
    return Settings(state_dir=state, store_url=f"sqlite:///{state / 'reconciler.sqlite3'}")


async def run(
    settings: Settings,
    *,
    render: Callable[[Plan], None],
    keep: bool,
    example: Path = EXAMPLE,
) -> int:
    state = settings.state_dir
    env = DemoEnvironment(os.environ)
    validated = composition.validate(example, env=env)
    kinds = {name: raw.kind for name, raw in validated.loaded.targets.items()}

    async with simulators(kinds) as served:
        overrides: dict[str, dict[str, Any]] = {
            name: {**login, "url": endpoint.url, "tls_verify": True, "ca_file": None}
            for name, (endpoint, login) in served.items()
        }
        async with composition.open_app(
            settings, desired_path=example, env=env, overrides=overrides
        ) as app:
            click.secho("\n== 1. plan: what the simulated targets need", bold=True)
            first = await cycle.plan(app)
            render(first)
            click.secho("\n== 2. apply", bold=True)
            report = await cycle.apply(app, first)
            click.echo(f"applied {report.applied} changes, {report.failed} failed")
            click.secho("\n== 3. plan again: nothing left to do", bold=True)
            second = await cycle.plan(app)
            render(second)
        store = state / "reconciler.sqlite3"
        ledger_query = "'SELECT target, person_id, applied_at FROM ledger'"
        passes_query = "'SELECT * FROM passes'"
        click.echo(
            "\nWhere to look:\n"
            "  the log lines on stderr: plan.computed, then change.applied or change.failed "
            "per person (with what changed)\n"
            f"  the ledger (what reconciler owns): sqlite3 {store} {ledger_query}\n"
            f"  the passes: sqlite3 {store} {passes_query}\n"
            "  your own site: cp desired.example.yaml desired.yaml, edit, then "
            "reconciler validate && reconciler plan"
        )
        if keep:
            click.echo("Simulators keep running; Ctrl-C stops them.")
            await interrupted()
    converged = not second.has_changes and not second.has_errors and report.failed == 0
    return 0 if converged else 1


@contextlib.asynccontextmanager
async def simulators(
    kinds: Mapping[str, str], *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[dict[str, tuple[Listening, dict[str, str]]]]:
    """One simulator per target, each with a fresh login; closed on the way out."""
    served: dict[str, tuple[Listening, dict[str, str]]] = {}
    try:
        for index, (name, kind) in enumerate(sorted(kinds.items())):
            if kind not in SIMULATORS:
                raise ConfigError(f"target {name}: no simulator for kind {kind}")
            login = demo_credentials(kind)
            simulator = SIMULATORS[kind].build(login)
            _seed(simulator)
            endpoint = await serve(simulator, host, port + index if port else 0)
            served[name] = (endpoint, login)
        yield served
    finally:
        for endpoint, _ in served.values():
            await endpoint.close()


async def simulate(kinds: Sequence[str], *, host: str, port: int) -> int:
    """Serve one simulator per kind, on consecutive ports, until interrupted."""
    endpoints: list[Listening] = []
    # Handlers first: a SIGTERM that arrives while the later simulators start still stops cleanly.
    with stop_signals() as stop:
        try:
            for index, kind in enumerate(kinds):
                if kind not in SIMULATORS:
                    raise ConfigError(f"no simulator for kind {kind}")
                entry = SIMULATORS[kind]
                endpoint = await serve(
                    entry.build(entry.credentials), host, port + index if port else 0
                )
                endpoints.append(endpoint)
                login = ", ".join(f"{key}: {value}" for key, value in entry.credentials.items())
                click.echo(f"{kind}: {endpoint.url}  ({login or 'no login'})")
            click.echo("Serving; Ctrl-C stops.")
            await stop.wait()
        finally:
            for endpoint in endpoints:
                await endpoint.close()
    return 0


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def interrupted() -> None:
    """Wait for SIGINT or SIGTERM."""
    with stop_signals() as stop:
        await stop.wait()
