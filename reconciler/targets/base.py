"""The Target protocol every kind implements, the settings all kinds share, and outcomes.

A target observes (one bulk or paged read, never one GET per person) and applies changes,
yielding outcomes batch by batch as the target confirms them, so the executor can record each
confirmed batch in the ledger at once. No I/O here.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from reconciler.core import durations
from reconciler.core.changes import Change, DepartmentChange
from reconciler.core.persons import PersonType
from reconciler.core.planning import Observed, Prune, Select, TargetSpec
from reconciler.core.safety import DeleteLimit

#: Awaited with the changes a call will carry, before it is sent (Target.apply).
Before = Callable[[Sequence[Change]], Awaitable[None]]

_In = TypeVar("_In")
_Ready = TypeVar("_Ready")
_Batch = TypeVar("_Batch", bound=Sequence[Change])
_Out = TypeVar("_Out")


def _duration(value: Any) -> Any:
    """Seconds, or a number with a unit: 90, "90s", "30m", "24h", "7d"."""
    if isinstance(value, str):
        found = durations.seconds(value)
        if found is None:
            raise ValueError("must be seconds or a number with ms, s, m, h or d (e.g. 24h)")
        return timedelta(seconds=found)
    return value


#: A duration in settings: 86400, "24h", "30m", "1d".
Duration = Annotated[timedelta, BeforeValidator(_duration)]


class SelectSettings(BaseModel):
    """`select:` of a target: which desired persons it takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    types: list[PersonType] | None = None
    groups: list[str] | None = None
    labels: dict[str, str] | None = None

    def to_core(self) -> Select:
        return Select(
            types=frozenset(self.types) if self.types is not None else None,
            groups=frozenset(self.groups) if self.groups is not None else None,
            labels=dict(self.labels) if self.labels is not None else None,
        )


class TargetSettings(BaseModel):
    """The keys every target accepts in desired.yaml, besides its kind's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Base URL of the target: http://host:port or https://host:port")
    tls_verify: bool = Field(True, description="Verify the server certificate (https)")
    ca_file: Path | None = Field(None, description="PEM bundle to trust instead of the system's")
    select: SelectSettings = Field(default_factory=SelectSettings)
    group_map: dict[str, str] = Field(
        default_factory=dict, description="Our group name -> the target's id; others pass through"
    )
    prune: Prune = Prune.MANAGED
    max_deletes: int | str = Field("10%", description="Mass-delete guard: a count or a percentage")
    concurrency: int = Field(4, ge=1, le=64, description="In-flight requests to this target")
    rate_limit: float | None = Field(20.0, gt=0, description="Requests per second; null: none")
    timeout: float = Field(30.0, gt=0, le=600, description="Seconds for one request")
    suspended: bool = Field(False, description="Observe and plan, never apply")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("max_deletes")
    @classmethod
    def _limit(cls, value: int | str) -> int | str:
        DeleteLimit.parse(value)
        return value

    @property
    def delete_limit(self) -> DeleteLimit:
        return DeleteLimit.parse(self.max_deletes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What the target said about one change."""

    change: Change
    ok: bool
    #: The target's own id, when it assigns one.
    remote_id: str | None = None
    #: Why it failed; never carries a secret or a sensitive value.
    error: str | None = None
    #: False: retrying the same change cannot succeed until the input changes.
    retryable: bool = True
    #: The target's other references for this person (a platform photoId); None keeps the
    #: ledger's, a mapping replaces them.
    refs: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentOutcome:
    """What the target said about one department change."""

    change: DepartmentChange
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Feed:
    """What a target's change feed says of all its persons at once, read without them."""

    #: Equal digests, an unchanged target (as far as the feed tells).
    digest: str
    #: Epoch seconds until which the feed may stand in for reading the target: a snapshot read
    #: now (or a plan made from one) may be reused on this feed's word until then, no later.
    trusted_until: float


class Target(Protocol):
    """One configured system instance, speaking one kind."""

    @property
    def spec(self) -> TargetSpec: ...

    @property
    def settings(self) -> TargetSettings: ...

    async def observe(self) -> Observed | None:
        """Everything the target reports; None for a kind that cannot list."""
        ...

    async def feed(self) -> Feed | None:
        """The change feed's word on the whole target, when the kind has one and it can be
        trusted now; None otherwise. An observe() right after it reads from the same feed."""
        ...

    def apply(
        self,
        changes: Sequence[Change],
        *,
        stop: asyncio.Event | None = None,
        before: Before | None = None,
    ) -> AsyncIterator[list[Outcome]]:
        """Send the changes; yield the outcomes of each batch as soon as it is confirmed.

        The changes come in the plan's order (upserts by person id, then deletes), which the
        calls keep: a kind need not sort them again. Once `stop` is set, no new batch starts;
        batches in flight finish and are yielded. `before(batch)` is awaited before the first
        call carrying those changes is sent (the executor's write-ahead), ideally while earlier
        calls are in flight.
        """
        ...

    async def aclose(self) -> None: ...


class DepartmentTarget(Target, Protocol):
    """A kind with departments (KindSpec.departments): synced before persons, deleted after."""

    async def apply_departments(
        self, changes: Sequence[DepartmentChange]
    ) -> list[DepartmentOutcome]:
        """Send the changes in the order given (parents first, or children first for deletes)."""
        ...


async def announce(before: Before | None, changes: Sequence[Change]) -> None:
    """Await `before` for these changes, if the caller gave one (a prepare stage's first step)."""
    if before is not None:
        await before(changes)


def announcing(before: Before | None) -> Callable[[_Batch], Awaitable[_Batch]]:
    """A `pipelined` prepare stage that only announces a batch of changes."""

    async def prepare(batch: _Batch) -> _Batch:
        await announce(before, batch)
        return batch

    return prepare


def announcing_each(before: Before | None) -> Callable[[Change], Awaitable[Change]]:
    """A `pipelined` prepare stage that only announces one change (one call per change)."""

    async def prepare(change: Change) -> Change:
        await announce(before, (change,))
        return change

    return prepare


def chunks(items: Sequence[_In], size: int) -> Iterable[Sequence[_In]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Writes:
    """Requests of this event loop started less than two turns ago: aiohttp on Python 3.11
    writes a request from a task of its own, which the send's first step queues, so until then
    its bytes may not be out."""

    def __init__(self) -> None:
        self.pending = 0
        self.done = asyncio.Event()
        self.done.set()

    def begun(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pending += 1
        self.done.clear()
        # Its first step runs next turn and queues the write; this runs after that write.
        loop.call_soon(loop.call_soon, self._settled)

    def _settled(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.done.set()


_WRITES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writes] = weakref.WeakKeyDictionary()


def _writes() -> _Writes:
    loop = asyncio.get_running_loop()
    writes = _WRITES.get(loop)
    if writes is None:
        writes = _WRITES[loop] = _Writes()
    return writes


async def after_writes() -> None:
    """Returns once the requests `pipelined` started in this event loop are written out.

    Sends go first: work that is not a send (a batch's prepare, the executor recording what a
    target confirmed) waits here, so that it never runs between a request and its write, while
    a slot of the target stands idle.
    """
    writes = _writes()
    while writes.pending:
        await writes.done.wait()


def writes_pending() -> bool:
    """Whether a request started in this event loop may not be written out yet."""
    return _writes().pending > 0


def bounded(
    items: Iterable[_In],
    work: Callable[[_In], Awaitable[_Out]],
    limit: int,
    *,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[_Out]:
    """Run `work` over items with at most `limit` in flight; yield results as they complete.

    Work is started lazily so a long list never builds every request body up front, and the
    moment a piece completes the next one starts, whatever the caller is doing with earlier
    results (writing the ledger, logging): `limit` requests stay in flight. At most `limit`
    finished results wait for the caller before new work waits too. Once `stop` is set nothing
    new starts, but what is in flight finishes and is yielded (a shutdown must record what the
    target confirmed). If one piece of work raises, nothing new starts and the rest is
    cancelled.
    """
    return pipelined(items, None, work, limit, stop=stop)


async def pipelined(
    items: Iterable[_In],
    prepare: Callable[[_In], Awaitable[_Ready]] | None,
    send: Callable[[_Ready], Awaitable[_Out]],
    limit: int,
    *,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[_Out]:
    """`bounded`, with each item first prepared (a request body built, its write-ahead
    written), up to `limit` items ahead of the sends: a slot that frees is taken at once by a
    prepared item. A prepared item is sent only if `stop` is still clear when a slot is free
    for it; a prepare that raises is raised as a send would be.

    Without `prepare` the items are sent as they are.

    Each of `limit` senders sends one item after another: the next item goes out in the same
    step as the answer to the last comes in, not a turn of the event loop later, behind
    whatever else is due (a task per send took that turn). And sends go first
    (`after_writes`): a prepare (0.4 ms for a batch) or the caller's work on a result that ran
    between a send and its write held the request back, so neither starts while a send started
    less than two loop turns ago: time enough for a send that writes its request at once, as
    one with a connection at hand does.
    """
    iterator = iter(items)
    #: Prepared (or being prepared) items, in order; a sender takes the first once it is done.
    preparing: collections.deque[asyncio.Future[Any]] = collections.deque()
    #: Finished sends, in the order they finished: each a result, or the error to raise.
    ready: collections.deque[asyncio.Future[Any]] = collections.deque()
    changed = asyncio.Event()  # wakes the caller and waiting senders: they look again
    halted = False  # nothing new is sent: stopping, a failure, or the caller went away
    drained = False  # every item was taken from `items`
    sending = 0  # sends not yet returned
    loop = asyncio.get_running_loop()
    writes = _writes()

    def prepare_next() -> None:
        # Called as a send starts; prepare_after_writes lets its write go first.
        nonlocal drained
        while not halted and not drained and len(preparing) < limit:
            try:
                item = next(iterator)
            except StopIteration:
                drained = True
                changed.set()  # a sender waiting for more may end now
                break
            if prepare is None:
                future: asyncio.Future[Any] = loop.create_future()
                future.set_result(item)
            else:
                future = asyncio.ensure_future(prepare_after_writes(item))
                future.add_done_callback(lambda _: changed.set())
            preparing.append(future)

    async def prepare_after_writes(item: Any) -> Any:
        assert prepare is not None
        await after_writes()
        return await prepare(item)

    async def next_item() -> asyncio.Future[Any] | None:
        """The prepared item to send next, once it is prepared and there is room for its
        result; None when nothing more is to be sent."""
        nonlocal halted
        while True:
            if halted:
                return None
            if stop is not None and stop.is_set():
                halted = True
                changed.set()  # the caller may be waiting on a prepare that no longer matters
                return None
            if not preparing:
                return None  # drained: prepare_next keeps `limit` items ahead until then
            # Finished results waiting for the caller hold new sends back, up to `limit`.
            if preparing[0].done() and sending + len(ready) < 2 * limit:
                return preparing.popleft()
            changed.clear()
            await changed.wait()

    async def sender() -> None:
        nonlocal halted, sending
        while (head := await next_item()) is not None:
            if head.cancelled() or head.exception() is not None:
                halted = True
                ready.append(head)  # the caller raises it
                changed.set()
                return
            outcome: asyncio.Future[Any] = loop.create_future()
            sending += 1
            writes.begun(loop)
            prepare_next()
            try:
                outcome.set_result(await send(head.result()))
            except Exception as exc:
                halted = True
                outcome.set_exception(exc)
            except BaseException:  # cancelled: the run is ending
                halted = True
                outcome.cancel()
                raise
            finally:
                sending -= 1
                ready.append(outcome)
                changed.set()

    prepare_next()
    senders = [asyncio.ensure_future(sender()) for _ in range(limit)]
    for task in senders:
        task.add_done_callback(lambda _: changed.set())
    try:
        while True:
            if ready:
                # The caller's work on a result waits for the writes of the sends just started.
                await after_writes()
                outcome = ready.popleft()
                changed.set()  # room for one more
                yield outcome.result()
                continue
            if all(task.done() for task in senders):
                break  # a send cancelled on its own left its outcome cancelled: raised above
            changed.clear()
            await changed.wait()
    finally:
        halted = True
        unfinished = [*senders, *(f for f in preparing if not f.done())]
        for future in unfinished:
            future.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
