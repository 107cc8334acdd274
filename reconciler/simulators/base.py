"""What every vendor simulator shares: fault knobs, a request log, the middleware and `serve()`.

The simulators keep their state in memory; `serve()` is the only I/O, a listening socket.
"""

from __future__ import annotations

import abc
import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import ClassVar

from aiohttp import web

from reconciler.daemon.server import Listening, serve_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Set by a write handler: how many persons the request carried, copied into its log entry.
ITEMS = web.RequestKey("items", int)

#: Set when the server shuts down, so requests hanging on purpose give up instead of holding it.
_CLOSING = web.AppKey("closing", asyncio.Event)

#: Largest request body: vendors take photos inline as base64, far above aiohttp's 1 MiB default.
_CLIENT_MAX_SIZE = 256 * 1024 * 1024


@dataclass
class Faults:
    """Fault knobs, all off by default; tests and `reconciler simulate` change them at run time.

    Rates are probabilities per request. `fail_next` is consumed first, one status per request,
    for tests that need a deterministic sequence. `seed` makes the random draws reproducible.
    """

    #: Seconds from a request's arrival to its answer, at the least: a device that takes this
    #: long per call, its own work included (the simulator's work is not added on top).
    latency: float = 0.0
    #: Probability of answering 503.
    error_rate: float = 0.0
    #: Probability of answering 429 with `Retry-After: <retry_after>`.
    throttle_rate: float = 0.0
    #: Seconds; written as a decimal when fractional, so tests can keep their waits short.
    retry_after: float = 1.0
    #: Probability of waiting `hang_seconds` before handling the request, to trip client timeouts.
    timeout_rate: float = 0.0
    hang_seconds: float = 30.0
    #: Probability of answering 200 with a body that is not JSON (truncated, HTML or empty).
    malformed_rate: float = 0.0
    #: Probability of dropping the connection instead of answering. The request is handled
    #: first (a write takes effect), so the client cannot tell whether it happened.
    reset_rate: float = 0.0
    #: HTTP statuses the next requests answer with, one each, before any random fault.
    fail_next: list[int] = field(default_factory=list)
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def roll(self, rate: float) -> bool:
        """Whether a fault with probability `rate` happens now."""
        # A knob that is off draws nothing: a seeded sequence depends only on the knobs that are on.
        return rate > 0.0 and self.rng.random() < rate


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One request as the simulator answered it."""

    method: str
    #: The route template (`/v1/user/id/{id}`); the path itself when no route matched.
    route: str
    path: str
    status: int
    #: time.monotonic() when the request arrived.
    at: float
    #: time.monotonic() when its answer was ready (so requests in flight can be counted).
    done: float = 0.0
    #: How many persons a write carried; None for reads and for requests a fault answered.
    items: int | None = None
    #: Whether the route changes the vendor's state (login is never one).
    write: bool = False
    #: The connection was dropped (`Faults.reset_rate`): the client never saw `status`.
    reset: bool = False
    #: The client's User-Agent: reconciler names its replica there.
    client: str | None = None


class RequestLog:
    """Every request a simulator received, in arrival order of their answers."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def record(self, entry: Entry) -> None:
        self.entries.append(entry)

    def count(self, method: str | None = None, route: str | None = None) -> int:
        """Requests matching `method` and `route` (a template); None matches any."""
        return sum(
            1
            for entry in self.entries
            if (method is None or entry.method == method)
            and (route is None or entry.route == route)
        )

    def writes(self) -> int:
        """Requests to routes the simulator declares as writes, whatever their answer."""
        return sum(1 for entry in self.entries if entry.write)

    def resets(self) -> int:
        """Requests whose connection was dropped instead of answered."""
        return sum(1 for entry in self.entries if entry.reset)

    def clear(self) -> None:
        self.entries.clear()


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of a simulator, with what the middleware needs to know about it."""

    method: str
    path: str
    handler: Handler
    #: Counted by `RequestLog.writes()`.
    write: bool = False
    #: Never subject to faults (an unauthenticated heartbeat, say).
    exempt: bool = False


class Answer(Exception):
    """Raised anywhere inside a handler to answer with `response` at once, e.g. a refusal."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def note_items(request: web.Request, count: int) -> None:
    """Record in the request's log entry how many persons a write carried."""
    request[ITEMS] = count


class Simulator(abc.ABC):
    """A vendor API in memory: subclasses declare routes and the vendor's error shape.

    `app()` builds a fresh aiohttp Application each time, so one simulator's state can be served
    again after a previous server closed.
    """

    #: The target settings that log in to a fresh simulator, with its defaults (none: no login).
    #: Well known on purpose: `reconciler simulate` prints them for users to put in a file.
    LOGIN: ClassVar[Mapping[str, str]] = {}

    #: Bodies a malformed answer picks from: none of them parses as JSON.
    malformed_bodies: tuple[bytes, ...] = (
        b'{"code": 200, "msg": "OK", "data": {"ite',
        b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        b"",
    )

    def __init__(self, *, faults: Faults | None = None) -> None:
        self.faults = faults if faults is not None else Faults()
        self.log = RequestLog()

    @abc.abstractmethod
    def routes(self) -> Iterable[Route]:
        """The vendor's endpoints."""

    @abc.abstractmethod
    def error_response(self, status: int, message: str) -> web.Response:
        """The vendor's answer for an HTTP error (faults, unknown routes, oversized bodies)."""

    def response_headers(self) -> Mapping[str, str]:
        """Headers the vendor puts on every response."""
        return {}

    # The same view of every vendor's state, for the cross-kind contract tests and the demo.

    @abc.abstractmethod
    def add_person(self, person_id: str, name: str) -> None:
        """Put a person on the target directly, as if enrolled by hand (never by reconciler)."""

    @abc.abstractmethod
    def person_names(self) -> dict[str, str]:
        """Our person id -> the name the target stores, for everyone on it."""

    @abc.abstractmethod
    def photo_of(self, person_id: str) -> bytes | None:
        """The face photo the target holds for a person, if any."""

    def app(self) -> web.Application:
        """A new Application serving this simulator's state, log and faults."""
        routes = list(self.routes())
        by_template = {(route.method, route.path): route for route in routes}

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else request.path
            route = by_template.get((request.method, template))
            arrived = time.monotonic()
            # Exempt routes (an unauthenticated heartbeat, say) see no fault and no latency.
            faulty = route is None or not route.exempt
            status = HTTPStatus.INTERNAL_SERVER_ERROR.value
            reset = False
            try:
                response = await self._answer(request, handler, faulty)
                if faulty and self.faults.latency > 0.0:
                    await asyncio.sleep(self.faults.latency - (time.monotonic() - arrived))
                response.headers.update(self.response_headers())
                status = response.status
                if faulty and self.faults.roll(self.faults.reset_rate):
                    reset = _drop(request)
                return response
            finally:
                self.log.record(
                    Entry(
                        method=request.method,
                        route=template,
                        path=request.path,
                        status=status,
                        at=arrived,
                        done=time.monotonic(),
                        items=request.get(ITEMS),
                        write=route is not None and route.write,
                        reset=reset,
                        client=request.headers.get("User-Agent"),
                    )
                )

        app = web.Application(middlewares=[middleware], client_max_size=_CLIENT_MAX_SIZE)
        app[_CLOSING] = asyncio.Event()
        app.on_shutdown.append(_release_hanging)
        for route in routes:
            app.router.add_route(route.method, route.path, route.handler)
        return app

    async def _answer(
        self, request: web.Request, handler: Handler, faulty: bool
    ) -> web.StreamResponse:
        try:
            if faulty:
                fault = await self._fault(request)
                if fault is not None:
                    return fault
            return await handler(request)
        except Answer as answer:
            return answer.response
        except web.HTTPException as exc:
            # The router's 404/405 and aiohttp's 413 for an oversized body, in the vendor's shape.
            return self.error_response(exc.status, exc.reason)

    async def _fault(self, request: web.Request) -> web.Response | None:
        faults = self.faults
        if faults.fail_next:
            return self._failure(faults.fail_next.pop(0))
        if faults.roll(faults.timeout_rate) and not await _hang(request, faults.hang_seconds):
            return self._failure(HTTPStatus.SERVICE_UNAVAILABLE)
        if faults.roll(faults.error_rate):
            return self._failure(HTTPStatus.SERVICE_UNAVAILABLE)
        if faults.roll(faults.throttle_rate):
            return self._failure(HTTPStatus.TOO_MANY_REQUESTS)
        if faults.roll(faults.malformed_rate):
            body = faults.rng.choice(self.malformed_bodies)
            return web.Response(body=body, content_type="application/json")
        return None

    def _failure(self, status: int) -> web.Response:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Injected Fault"
        response = self.error_response(status, reason)
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            response.headers["Retry-After"] = f"{self.faults.retry_after:g}"
        return response


def _drop(request: web.Request) -> bool:
    """Close the connection before the answer is written: the client sees it disconnect.

    aiohttp then fails to write the response and treats it as a client that went away."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    transport.close()
    return True


async def _hang(request: web.Request, seconds: float) -> bool:
    """Wait `seconds`; False when the server began shutting down first."""
    try:
        await asyncio.wait_for(request.app[_CLOSING].wait(), timeout=seconds)
    except TimeoutError:
        return True
    return False


async def _release_hanging(app: web.Application) -> None:
    app[_CLOSING].set()


async def serve(
    simulator: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> Listening:
    """Serve `simulator` on host:port (0 picks a free port), over TLS when given a context."""
    return await serve_app(simulator.app(), host, port, ssl_context=ssl_context)
