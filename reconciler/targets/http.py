"""The HTTP client every adapter uses: the only home of the aiohttp client.

Every call has a timeout; connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff and jitter (tenacity), a Retry-After pauses the whole target, and requests are
bounded by the target's concurrency and token-bucket rate limit. aiohttp's exceptions are mapped
here, once, into TemporaryTargetError / PermanentTargetError. Network I/O.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
import orjson
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from reconciler import __version__, progress
from reconciler.core.planning import TargetSpec
from reconciler.core.records import KindSpec, Render
from reconciler.errors import PermanentTargetError, TemporaryTargetError
from reconciler.targets.base import Feed, TargetSettings

_Settings = TypeVar("_Settings", bound=TargetSettings)

#: Statuses worth retrying: the request may succeed unchanged later.
TEMPORARY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: How much of a vendor's error body goes into a message: enough to act on, never a dump.
BODY_EXCERPT = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Request-tier retry policy."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    #: A request (with its retries) gives up after this long in all.
    budget: float = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes
    #: Lower-cased names.
    headers: Mapping[str, str]
    method: str
    path: str

    def json(self, target: str) -> Any:
        """The decoded body; a malformed one is a permanent error naming the call."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise PermanentTargetError(
                target,
                f"malformed response to {self.method} {self.path} (HTTP {self.status}): "
                f"not JSON ({exc.msg}); body starts {excerpt(self.body)!r}",
            ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """One file of a multipart/form-data upload (an avatar, say)."""

    name: str
    filename: str
    content: bytes
    content_type: str


def excerpt(body: bytes) -> str:
    text = body[:BODY_EXCERPT].decode("utf-8", "replace")
    return text + ("…" if len(body) > BODY_EXCERPT else "")


def ssl_context(tls_verify: bool, ca_file: Path | None) -> ssl.SSLContext | bool:
    if not tls_verify:
        return False
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    return True


def _limiter(rate: float) -> AsyncLimiter:
    """`rate` requests a second; below one, one request every 1/rate seconds (aiolimiter
    refuses a capacity below one request)."""
    return AsyncLimiter(rate, 1.0) if rate >= 1 else AsyncLimiter(1, 1 / rate)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def identify(replica: str) -> None:
    """Name this process in the User-Agent of the sessions opened from now on, so a device's
    logs (and the simulators' request logs) tell which replica sent each request."""
    Client.user_agent = f"reconciler/{__version__} ({replica})"


class Client:
    """One target's HTTP client: a pooled session, limits, retries and error mapping."""

    #: Sent with every request (see identify()).
    user_agent: ClassVar[str] = f"reconciler/{__version__}"

    def __init__(
        self,
        target: str,
        base_url: str,
        *,
        timeout: float,
        concurrency: int,
        rate_limit: float | None,
        tls_verify: bool = True,
        ca_file: Path | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.target = target
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = ssl_context(tls_verify, ca_file)
        self._concurrency = asyncio.Semaphore(concurrency)
        self._limiter = _limiter(rate_limit) if rate_limit else None
        self._backoff = backoff or Backoff()
        self._exponential = wait_exponential_jitter(
            multiplier=self._backoff.initial,
            max=self._backoff.maximum,
            jitter=self._backoff.initial,
        )
        self._paused_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._connections = concurrency
        #: Requests sent, by method: the executor and benchmarks count write calls with it.
        self.sent: dict[str, int] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": self.user_agent},
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        multipart: Sequence[Part] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Response:
        """Send one request, retrying temporary failures; 4xx other than 408/429 are returned.

        The body is `json` (serialised here), `data` (sent byte for byte: what a signature
        covers) or `multipart` parts, at most one of them. Adapters interpret the returned
        status: what a 404 means differs per vendor.
        """
        if sum(part is not None for part in (json, data, multipart)) > 1:
            raise ValueError("give at most one of json, data and multipart")
        body: bytes | tuple[Part, ...] | None = data
        if json is not None:
            body = orjson.dumps(json)
        elif multipart is not None:
            body = tuple(multipart)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._backoff.attempts if retry else 1)
            | stop_after_delay(self._backoff.budget),
            wait=self._wait,
            retry=retry_if_exception_type(TemporaryTargetError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send(method, path, body, params, headers)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._exponential(state)
        error = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(error, "retry_after", None)
        return max(backoff, hint) if hint is not None else backoff

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | tuple[Part, ...] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> Response:
        session = self._open()
        send_headers = {"Content-Type": "application/json"} if isinstance(body, bytes) else {}
        if headers:
            send_headers.update(headers)
        payload_body: io.BytesIO | aiohttp.FormData | None = None
        if isinstance(body, bytes):
            # A file-like body: aiohttp warns about large raw bytes (photos make megabytes).
            payload_body = io.BytesIO(body)
        elif isinstance(body, tuple):
            # A FormData is consumed by sending it: each attempt builds its own.
            payload_body = aiohttp.FormData()
            for part in body:
                payload_body.add_field(
                    part.name,
                    io.BytesIO(part.content),
                    filename=part.filename,
                    content_type=part.content_type,
                )
        async with self._concurrency:
            await self._wait_for_pause()
            if self._limiter is not None:
                await self._limiter.acquire()
            self.sent[method] = self.sent.get(method, 0) + 1
            try:
                async with session.request(
                    method,
                    self.base_url + path,
                    data=payload_body,
                    params=dict(params) if params else None,
                    headers=send_headers,
                ) as raw:
                    payload = await raw.read()
                    response = Response(
                        status=raw.status,
                        body=payload,
                        headers={k.lower(): v for k, v in raw.headers.items()},
                        method=method,
                        path=path,
                    )
            except aiohttp.ClientConnectorCertificateError as exc:
                raise PermanentTargetError(
                    self.target,
                    f"TLS certificate of {self.base_url} was not accepted "
                    f"({exc.certificate_error}); set ca_file to the CA that signed it, "
                    "or tls_verify: false on a trusted LAN",
                ) from exc
            except aiohttp.ClientSSLError as exc:
                raise PermanentTargetError(
                    self.target, f"TLS handshake with {self.base_url} failed: {exc}"
                ) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = (
                    "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
                )
                raise TemporaryTargetError(self.target, f"{method} {path}: {detail}") from exc
            finally:
                progress.step()  # answered or failed, the pass moved
        if response.status in TEMPORARY_STATUSES:
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if retry_after:
                # Heeded up to the longest back-off: an hour's hint must not hold the pass (and
                # the daemon's stall clock) for an hour.
                retry_after = min(retry_after, self._backoff.maximum)
                self._pause(retry_after)
            raise TemporaryTargetError(
                self.target,
                f"{method} {path}: HTTP {response.status} {excerpt(response.body)!r}",
                retry_after=retry_after,
            )
        return response

    def _pause(self, seconds: float) -> None:
        """A Retry-After speaks for the whole target: every request waits it out."""
        until = asyncio.get_running_loop().time() + seconds
        self._paused_until = max(self._paused_until, until)

    async def _wait_for_pause(self) -> None:
        delay = self._paused_until - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)


class HttpTarget(Generic[_Settings]):
    """What every adapter shares: its settings, its planning spec, and one Client to talk with."""

    def __init__(
        self,
        name: str,
        settings: _Settings,
        *,
        kind: KindSpec,
        render: Render,
        backoff: Backoff | None = None,
        resync_every: float | None = None,
    ) -> None:
        self._settings = settings
        self._spec = TargetSpec(
            name=name,
            kind=kind,
            render=render,
            select=settings.select.to_core(),
            prune=settings.prune,
            suspended=settings.suspended,
            resync_every=resync_every,
        )
        self.client = Client(
            name,
            settings.url,
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            rate_limit=settings.rate_limit,
            tls_verify=settings.tls_verify,
            ca_file=settings.ca_file,
            backoff=backoff,
        )

    @property
    def spec(self) -> TargetSpec:
        return self._spec

    @property
    def settings(self) -> _Settings:
        return self._settings

    @property
    def name(self) -> str:
        return self._spec.name

    async def feed(self) -> Feed | None:
        """Most kinds have no change feed: only observe() tells what the target holds."""
        return None

    async def aclose(self) -> None:
        await self.client.aclose()
