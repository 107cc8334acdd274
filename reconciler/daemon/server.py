"""The daemon's HTTP endpoints (DESIGN A4): /healthz, /readyz, /metrics, /status, POST /reconcile.

The one home of the aiohttp server in the product. I/O: a listening socket on LISTEN. Handlers
only read the Status and the Metrics, and raise the Trigger; a pass never runs in a handler.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from reconciler import logs, progress
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.status import Status
from reconciler.daemon.trigger import Trigger
from reconciler.errors import ConfigError

log = structlog.get_logger("reconciler.daemon.server")

#: Largest POST /reconcile body: a GitHub push event is well below; larger is refused with 413.
MAX_BODY = 1024 * 1024

#: How long close() lets in-flight requests finish; every handler answers at once.
_SHUTDOWN_TIMEOUT = 5.0
#: How long a refused upload is read and discarded so its client still sees our answer; short,
#: since aiohttp's 10 s default would outlast the shutdown timeout and delay every stop.
_LINGERING = 1.0

_SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_PREFIX = "sha256="
_UNAUTHORIZED = "missing or invalid credentials"
_OFF = "POST /reconcile is off: set RECONCILER_WEBHOOK_SECRET"


@dataclass(frozen=True, slots=True)
class _Webhook:
    # repr=False: an app dump in a debugger or a log must not show the secret.
    secret: bytes | None = field(repr=False)


_STATUS = web.AppKey("status", Status)
_TRIGGER = web.AppKey("trigger", Trigger)
_METRICS = web.AppKey("metrics", Metrics)
_WEBHOOK = web.AppKey("webhook", _Webhook)


def make_app(
    status: Status, trigger: Trigger, metrics: Metrics, *, webhook_secret: str | None
) -> web.Application:
    """The endpoints over `status`, `metrics` and `trigger`; POST /reconcile is off (404) when
    `webhook_secret` is None or empty, since an empty secret would accept `Bearer ` alone."""
    # client_max_size bounds what request.read() buffers when the length is not declared.
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[_STATUS] = status
    app[_TRIGGER] = trigger
    app[_METRICS] = metrics
    app[_WEBHOOK] = _Webhook(webhook_secret.encode() if webhook_secret else None)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    app.router.add_post("/reconcile", _reconcile)
    return app


class Listening:
    """The endpoints served on a socket; `close()` (or leaving `async with`) stops them."""

    def __init__(self, *, url: str, port: int, runner: web.AppRunner) -> None:
        self.url = url
        self.port = port
        self._runner = runner

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Listening:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start(app: web.Application, listen: str) -> Listening:
    """Serve `app` on `listen` (`host:port`, IPv6 as `[::1]:9180`, port 0 picks a free one).

    Raises ConfigError when `listen` is malformed or cannot be bound.
    """
    host, port = parse_listen(listen)
    try:
        return await serve_app(app, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc


async def serve_app(
    app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> Listening:
    """Serve `app` on host:port (0 picks a free one), over TLS when given a context: the
    daemon's endpoints, and the bundled simulators (simulators.base.serve)."""
    # access_log=None: aiohttp's access log can be configured to print headers, and the
    # Authorization header must never reach a log.
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT, lingering_time=_LINGERING
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    netloc = f"[{host}]" if ":" in host else host
    return Listening(url=f"{scheme}://{netloc}:{bound}", port=bound, runner=runner)


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); raises ConfigError when malformed."""
    host, sep, port_text = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"LISTEN {listen!r}: write an IPv6 address in brackets, as [::1]:9180")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"LISTEN {listen!r} is not host:port (as 127.0.0.1:9180)")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"LISTEN {listen!r}: port {port} is out of range")
    return host, port


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is JSON, router errors included; a bug is logged, never shown to clients."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        allow = exc.headers.get(hdrs.ALLOW)
        headers = None if allow is None else {"Allow": allow}
        return _json({"error": exc.reason.lower()}, exc.status, headers=headers)
    except Exception:
        log.exception("http.failed", method=request.method, path=request.path)
        return _json({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)


async def _healthz(request: web.Request) -> web.Response:
    alive, reason = request.app[_STATUS].liveness(progress.steps(), time.monotonic())
    if alive:
        return _json({"status": "alive"})
    return _json({"status": "stalled", "reason": reason}, HTTPStatus.SERVICE_UNAVAILABLE)


async def _readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[_STATUS].readiness()
    code = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
    return _json({"ready": ready, "reason": reason}, code)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_METRICS].exposition()
    # Set as a header: aiohttp's content_type= argument refuses parameters such as version=.
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


async def _status(request: web.Request) -> web.Response:
    return _json(logs.redact(request.app[_STATUS].document()))


async def _reconcile(request: web.Request) -> web.Response:
    secret = request.app[_WEBHOOK].secret
    if secret is None:
        # DESIGN A4: anything but the secret is 401; without one nothing can give it.
        return _json(
            {"error": _OFF}, HTTPStatus.UNAUTHORIZED, headers={hdrs.WWW_AUTHENTICATE: "Bearer"}
        )
    declared = request.content_length
    if declared is not None and declared > MAX_BODY:
        # Refused before reading: an unauthenticated client must not make us buffer it.
        return _json(
            {"error": f"request body larger than {MAX_BODY} bytes"},
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    via = None
    if _bearer_ok(request.headers.get(hdrs.AUTHORIZATION), secret):
        via = "bearer"
    else:
        signature = request.headers.get(_SIGNATURE_HEADER)
        # Read only when a signature needs it; client_max_size caps an undeclared length.
        if signature is not None and _signature_ok(signature, await request.read(), secret):
            via = "signature"
    if via is None:
        # Which part was wrong stays unsaid, here and in the log, so guessing learns nothing.
        log.warning("webhook.refused", remote=request.remote)
        return _json(
            {"error": _UNAUTHORIZED},
            HTTPStatus.UNAUTHORIZED,
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )
    request.app[_TRIGGER].request("webhook")
    log.info("webhook.accepted", via=via, remote=request.remote)
    return _json({"queued": True}, HTTPStatus.ACCEPTED)


def _bearer_ok(header: str | None, secret: bytes) -> bool:
    if header is None:
        return False
    scheme, _, token = header.strip().partition(" ")
    # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
    return scheme.lower() == "bearer" and hmac.compare_digest(_bytes(token.strip()), secret)


def _signature_ok(header: str, body: bytes, secret: bytes) -> bool:
    expected = _SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(_bytes(header.strip().lower()), expected.encode())


def _bytes(text: str) -> bytes:
    # Headers may carry undecodable bytes as surrogates; encode them rather than fail.
    return text.encode("utf-8", "surrogatepass")


def _json(
    document: Any, status: int = HTTPStatus.OK, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(document), status=status, content_type="application/json", headers=headers
    )
