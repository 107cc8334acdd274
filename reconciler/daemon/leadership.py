"""Leadership: which targets this replica owns and writes, spread over the replicas of a store.

Owners hold a lock the server releases when their connection ends; each replica owns a fair
share, lets its excess go between passes only, and takes orphaned targets every few seconds,
so a dead replica's targets are written again within a check and a pass. With the SQLite store
one replica owns every target. I/O through the store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Callable, Collection

import structlog

from reconciler.daemon.status import LeadershipView
from reconciler.errors import ReconcilerError
from reconciler.store.base import Store

log = structlog.get_logger("reconciler.daemon.leadership")


def rank(replica: str, target: str) -> int:
    """How much `replica` wants `target` (rendezvous hashing): every replica agrees on the
    order without talking, and a replica's arrival or departure moves few targets."""
    digest = hashlib.blake2b(f"{replica}\0{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Leadership:
    """The targets one daemon replica owns and writes.

    A replica owns at most ceil(targets / live replicas), preferring the targets that rank
    highest for it (rendezvous hashing: replicas starting together rarely contend). It gives up
    targets above its share only between passes, never under one, and every `check` seconds
    takes its share of the targets nobody owns, requesting a pass at once. Around each pass it
    holds the writer lock of every target it owns that nobody else (an operator's `apply`) is
    writing, and plans and applies only those.
    """

    def __init__(self, store: Store, *, active: bool = True) -> None:
        self.store = store
        #: A dry-run daemon writes nothing, so it owns nothing: it plans every target.
        self.active = active
        self.view = LeadershipView(replica=store.replica)
        self._lock = asyncio.Lock()
        self._writing: contextlib.AsyncExitStack | None = None
        self._held: frozenset[str] = frozenset()

    async def balance(self, targets: Collection[str], *, release: bool) -> frozenset[str]:
        """Own a fair share of `targets`; returns the targets newly taken.

        With `release` (between passes only), also give up targets above the share and those
        no longer in the desired state.
        """
        async with self._lock:
            store = self.store
            await store.join("daemon")
            live = set(await store.replicas()) | {store.replica}
            wanted = set(targets)
            share = math.ceil(len(wanted) / len(live))
            mine = sorted(wanted, key=lambda t: rank(store.replica, t), reverse=True)
            if release:
                owned = store.owned()
                keep = [t for t in mine if t in owned][:share]
                for target in sorted(owned - set(keep)):
                    await store.release(target)
                    if store.shared:
                        log.info("target.released", target=target, share=share, replicas=len(live))
            gained: set[str] = set()
            for target in mine:
                if len(store.owned() & wanted) >= share:
                    break
                if target not in store.owned() and await store.claim(target):
                    gained.add(target)
            if gained and store.shared:
                log.info("target.claimed", targets=sorted(gained), share=share, replicas=len(live))
            self.view = LeadershipView(
                replica=store.replica,
                replicas=tuple(sorted(live)),
                holders=self.view.holders,
                held=self.view.held,
            )
            return frozenset(gained)

    async def hold(self, targets: Collection[str]) -> frozenset[str] | None:
        """Before a pass: rebalance, then take the writer lock of each owned target nobody else
        writes. The targets to plan and apply, None for all (a dry run, which locks nothing)."""
        if not self.active:
            return None
        await self.balance(targets, release=True)
        owned = self.store.owned() & set(targets)
        stack = contextlib.AsyncExitStack()
        try:
            held = await stack.enter_async_context(self.store.writer(owned, partial=True))
        except BaseException:
            await stack.aclose()
            raise
        self._writing, self._held = stack, held
        busy = owned - held
        if busy:
            holders = await self.store.holders(busy)
            for target in sorted(busy):
                log.warning("target.busy", target=target, writer=holders[target].writer)
        return held

    async def let_go(self, targets: Collection[str]) -> None:
        """After a pass: release the writer locks, and see who holds what (for /status)."""
        stack, self._writing = self._writing, None
        if stack is not None:
            await stack.aclose()
        try:
            holders = await self.store.holders(targets) if self.active else {}
            live = tuple(await self.store.replicas()) if self.active else ()
        except ReconcilerError as exc:
            log.warning("leadership.unknown", error=str(exc))
            return
        self.view = LeadershipView(
            replica=self.store.replica, replicas=live, holders=holders, held=self._held
        )

    async def watch(
        self,
        targets: Callable[[], Collection[str]],
        on_gain: Callable[[], None],
        stop: asyncio.Event,
        every: float,
    ) -> None:
        """Every `every` seconds until `stop`: take a share of the targets nobody owns (a
        replica died or left), and request a pass when any was taken."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
                return
            try:
                gained = await self.balance(targets(), release=False)
            except ReconcilerError as exc:
                log.warning("leadership.failed", error=str(exc))
                continue
            if gained:
                on_gain()
