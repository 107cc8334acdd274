"""Leadership over the PostgreSQL store: fair shares, disjoint owners, takeover when a replica
leaves, rebalancing when one arrives, no flapping, and busy targets skipped; on SQLite one
replica owns everything."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from reconciler.daemon.leadership import Leadership
from reconciler.store.base import Holding
from reconciler.store.postgres import PostgresStore
from reconciler.store.sqlite import SqliteStore

TARGETS = [f"t{n}" for n in range(8)]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as opened:
        yield opened


async def replica(stack: AsyncExitStack, url: str, name: str) -> Leadership:
    store = await PostgresStore.open(url, replica=name)
    stack.push_async_callback(store.aclose)
    return Leadership(store)


def owners(leaders: list[Leadership]) -> dict[str, str]:
    """target -> the replica owning it; fails if two own one."""
    found: dict[str, str] = {}
    for leader in leaders:
        for target in leader.store.owned():
            assert target not in found, (
                f"{target} owned by {found[target]} and {leader.store.replica}"
            )
            found[target] = leader.store.replica
    return found


async def rounds(leaders: list[Leadership], count: int = 3) -> None:
    """Every replica balances between passes, `count` times round."""
    for _ in range(count):
        for leader in leaders:
            await leader.balance(TARGETS, release=True)


async def test_replicas_share_the_targets_out_and_take_over_a_leavers(
    postgres_schema: Callable[[], str], stack: AsyncExitStack
) -> None:
    url = postgres_schema()
    leaders = [await replica(stack, url, name) for name in ("a", "b", "c")]
    for leader in leaders:
        await leader.store.join("daemon")
    await rounds(leaders)
    assert set(owners(leaders)) == set(TARGETS)
    assert sorted(len(leader.store.owned()) for leader in leaders) == [2, 3, 3]

    # Stable membership: more rounds move nothing.
    before = owners(leaders)
    await rounds(leaders, count=5)
    assert owners(leaders) == before

    # c leaves (its session ends, as with kill -9): a and b take its targets between passes,
    # without waiting to release anything.
    gone = leaders.pop()
    left = gone.store.owned()
    await gone.store.aclose()
    gained: set[str] = set()
    for leader in leaders:
        gained |= await leader.balance(TARGETS, release=False)
    assert gained == left
    assert set(owners(leaders)) == set(TARGETS)
    assert sorted(len(leader.store.owned()) for leader in leaders) == [4, 4]
    # Only the leaver's targets moved.
    assert {t: r for t, r in owners(leaders).items() if t not in left} == {
        t: r for t, r in before.items() if t not in left
    }

    # A newcomer gets a fair share once the others release theirs at their next pass.
    newcomer = await replica(stack, url, "d")
    await newcomer.store.join("daemon")
    leaders.append(newcomer)
    await rounds(leaders)
    assert set(owners(leaders)) == set(TARGETS)
    assert sorted(len(leader.store.owned()) for leader in leaders) == [2, 3, 3]


async def test_a_pass_holds_the_owned_targets_nobody_else_writes(
    postgres_schema: Callable[[], str], stack: AsyncExitStack
) -> None:
    url = postgres_schema()
    leader = await replica(stack, url, "a")
    operator = await PostgresStore.open(url, replica="operator")
    stack.push_async_callback(operator.aclose)
    async with operator.writer(["t1"]):
        held = await leader.hold(["t0", "t1", "t2"])
        assert held == frozenset(
            {"t0", "t2"}
        )  # alone: every target is its share; t1 is being applied
        assert (await operator.holders(["t0"]))["t0"] == Holding(owner="a", writer="a")
        await leader.let_go(["t0", "t1", "t2"])
    assert leader.view.replicas == ("a",)
    assert leader.view.held == {"t0", "t2"}
    assert leader.view.holders == {
        "t0": Holding(owner="a"),
        "t1": Holding(owner="a", writer="operator (a command)"),
        "t2": Holding(owner="a"),
    }
    # The writer locks went with the pass; ownership stays.
    assert (await operator.holders(["t0"]))["t0"] == Holding(owner="a")


async def test_a_dry_run_replica_owns_and_locks_nothing(
    postgres_schema: Callable[[], str], stack: AsyncExitStack
) -> None:
    store = await PostgresStore.open(postgres_schema(), replica="shadow")
    stack.push_async_callback(store.aclose)
    leader = Leadership(store, active=False)
    assert await leader.hold(TARGETS) is None
    await leader.let_go(TARGETS)
    assert store.owned() == frozenset()
    assert await store.replicas() == []


async def test_with_sqlite_one_replica_owns_every_target(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.sqlite3", replica="solo")
    try:
        leader = Leadership(store)
        assert await leader.hold(TARGETS) == frozenset(TARGETS)
        await leader.let_go(TARGETS)
        assert leader.view.held == set(TARGETS)
        assert leader.view.holders["t0"] == Holding(owner="solo")
        # A target gone from the desired state is let go.
        assert await leader.hold(TARGETS[:2]) == frozenset(TARGETS[:2])
        await leader.let_go(TARGETS[:2])
        assert store.owned() == set(TARGETS[:2])
    finally:
        await store.aclose()
