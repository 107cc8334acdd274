"""The Target protocol every kind implements, the settings all kinds share, and outcomes.

A target observes (one bulk or paged read, never one GET per person) and applies changes,
yielding outcomes batch by batch as the target confirms them, so the executor can record each
confirmed batch in the ledger at once. No I/O here.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from reconciler.core.changes import Change, DepartmentChange
from reconciler.core.persons import PersonType
from reconciler.core.planning import Observed, Prune, Select, TargetSpec
from reconciler.core.safety import DeleteLimit

_In = TypeVar("_In")
_Out = TypeVar("_Out")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> Any:
    """Seconds, or a number with a unit: 90, "90s", "30m", "24h", "7d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("must be seconds or a number with s, m, h or d (e.g. 24h)")
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
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
        self, changes: Sequence[Change], *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[list[Outcome]]:
        """Send the changes; yield the outcomes of each batch as soon as it is confirmed.

        Once `stop` is set, no new batch starts; batches in flight finish and are yielded.
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


def chunks(items: Sequence[_In], size: int) -> Iterable[Sequence[_In]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def bounded(
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
    iterator = iter(items)
    pending: set[asyncio.Future[_Out]] = set()
    ready: collections.deque[asyncio.Future[_Out]] = collections.deque()
    arrived = asyncio.Event()
    exhausted = False

    def start() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < limit and len(pending) + len(ready) < 2 * limit:
            if stop is not None and stop.is_set():
                exhausted = True
                break
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                break
            task = asyncio.ensure_future(work(item))
            pending.add(task)
            task.add_done_callback(finished)

    def finished(task: asyncio.Future[_Out]) -> None:
        nonlocal exhausted
        pending.discard(task)
        ready.append(task)
        if not task.cancelled() and task.exception() is not None:
            exhausted = True
        # The next request first, then the caller: its first steps are queued ahead of the
        # caller's wake-up, so recording a result never holds back a send.
        start()
        arrived.set()

    try:
        start()
        while pending or ready:
            if not ready:
                arrived.clear()
                await arrived.wait()
                continue
            task = ready.popleft()
            start()  # a result taken: room for one more
            yield task.result()
    finally:
        exhausted = True
        for task in pending:
            task.remove_done_callback(finished)
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
