"""The daemon's endpoints over real loopback HTTP: health, readiness, status, metrics, webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from reconciler import progress
from reconciler.core.changes import TargetPlan
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.running import target_pass
from reconciler.daemon.server import MAX_BODY, Listening, make_app, parse_listen, start
from reconciler.daemon.status import (
    FOREIGN_SHOWN,
    DesiredView,
    FailureView,
    LeadershipView,
    PassOutcome,
    Status,
    TargetPass,
)
from reconciler.daemon.trigger import Trigger
from reconciler.errors import ConfigError
from reconciler.store.base import Holding

SECRET = "whk-7f3a9c1e-never-logged"
INTERVAL = 60.0


@dataclass
class Daemon:
    """One served app and a session to call it with."""

    status: Status
    trigger: Trigger
    metrics: Metrics
    listening: Listening
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.listening.url


async def _serve(secret: str | None) -> AsyncIterator[Daemon]:
    status, trigger, metrics = Status(interval=INTERVAL, dry_run=False), Trigger(), Metrics()
    listening = await start(
        make_app(status, trigger, metrics, webhook_secret=secret), "127.0.0.1:0"
    )
    try:
        async with aiohttp.ClientSession() as http:
            yield Daemon(status, trigger, metrics, listening, http)
    finally:
        await listening.close()


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async for served in _serve(SECRET):
        yield served


@pytest.fixture
async def daemon_without_secret() -> AsyncIterator[Daemon]:
    async for served in _serve(None):
        yield served


def a_pass(*, finished_at: float, result: str = "ok", error: str | None = None) -> PassOutcome:
    assert result in ("ok", "partial", "failed")
    lobby = TargetPass(
        target="lobby",
        kind="nebula_pass",
        result="partial",
        planned={"create": 2, "update": 1},
        applied={"create": 2},
        failed={"update": 1},
        drift=1,
        held=3,
        held_reason="more than 10% of the target's persons",
        foreign=4,
        invalid=1,
        managed=20,
        failures=(FailureView(person="1001", action="update", error="HTTP 500"),),
    )
    return PassOutcome(
        number=7,
        started_at=finished_at - 1.5,
        finished_at=finished_at,
        duration=1.5,
        result=result,  # type: ignore[arg-type]
        dry_run=False,
        reasons=("interval",),
        targets={"lobby": lobby},
        plan_fingerprint="sha256:abc",
        error=error,
    )


async def get_json(daemon: Daemon, path: str) -> tuple[int, dict[str, object]]:
    async with daemon.http.get(daemon.url + path) as response:
        assert response.content_type == "application/json"
        document = orjson.loads(await response.read())
        assert isinstance(document, dict)
        return response.status, document


async def post_reconcile(
    daemon: Daemon, body: bytes = b"{}", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], Mapping[str, str]]:
    async with daemon.http.post(daemon.url + "/reconcile", data=body, headers=headers) as response:
        document = orjson.loads(await response.read())
        assert isinstance(document, dict)
        return response.status, document, response.headers


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- health and readiness ---------------------------------------------------------------------


async def test_healthz_says_alive(daemon: Daemon) -> None:
    assert await get_json(daemon, "/healthz") == (200, {"status": "alive"})


async def test_readyz_is_503_before_any_pass(daemon: Daemon) -> None:
    code, document = await get_json(daemon, "/readyz")
    assert code == 503
    assert document == {"ready": False, "reason": "no pass has finished yet"}


async def test_readyz_is_200_after_a_fresh_pass(daemon: Daemon) -> None:
    daemon.status.last_pass = a_pass(finished_at=time.time())
    code, document = await get_json(daemon, "/readyz")
    assert code == 200
    assert document["ready"] is True
    assert str(document["reason"]).startswith("last pass ok")


async def test_readyz_is_503_after_a_stale_or_failed_pass(daemon: Daemon) -> None:
    daemon.status.last_pass = a_pass(finished_at=time.time() - 4 * INTERVAL)
    code, document = await get_json(daemon, "/readyz")
    assert code == 503
    assert "more than 3 intervals" in str(document["reason"])

    daemon.status.last_pass = a_pass(finished_at=time.time(), result="failed", error="store down")
    code, document = await get_json(daemon, "/readyz")
    assert (code, document["reason"]) == (503, "the last pass failed: store down")


async def test_readyz_is_503_with_the_reason_when_a_desired_edit_was_refused(
    daemon: Daemon,
) -> None:
    daemon.status.last_pass = a_pass(finished_at=time.time())
    daemon.status.desired = DesiredView(
        files=("desired.yaml",),
        error="desired state is invalid (1 problem)",
        problems=("desired.yaml:12:7: person 1001: phone is not a phone number",),
    )
    code, document = await get_json(daemon, "/readyz")
    assert code == 503
    assert document["ready"] is False
    assert "desired state refused" in str(document["reason"])
    assert "desired state is invalid (1 problem)" in str(document["reason"])


# --- status and metrics -----------------------------------------------------------------------


async def test_status_is_the_document_with_each_target(daemon: Daemon) -> None:
    daemon.status.last_pass = a_pass(finished_at=time.time())
    daemon.status.passes = 7
    code, document = await get_json(daemon, "/status")
    assert code == 200
    assert document == orjson.loads(orjson.dumps(daemon.status.document()))
    assert set(document) >= {"started_at", "dry_run", "interval", "passes", "ready", "desired"}
    assert document["passes"] == 7
    last = document["last_pass"]
    assert isinstance(last, dict)
    assert (last["number"], last["result"], last["reasons"]) == (7, "ok", ["interval"])
    targets = document["targets"]
    assert isinstance(targets, dict)
    assert list(targets) == ["lobby"]
    lobby = targets["lobby"]
    assert lobby["kind"] == "nebula_pass"
    assert lobby["managed"] == 20
    assert lobby["applied"] == {"create": 2}
    assert lobby["failed"] == {"update": 1}
    assert lobby["held"] == {"deletes": 3, "reason": "more than 10% of the target's persons"}
    assert lobby["failures"] == [{"person": "1001", "action": "update", "error": "HTTP 500"}]


async def test_status_shows_which_replica_holds_which_target(daemon: Daemon) -> None:
    daemon.status.leadership = LeadershipView(
        replica="pod-a",
        replicas=("pod-a", "pod-b"),
        holders={
            "lobby": Holding(owner="pod-a"),
            "gate": Holding(owner="pod-b", writer="ops-host-77 (a command)"),
            "fog": Holding(),
        },
        held=frozenset({"lobby"}),
    )
    code, document = await get_json(daemon, "/status")
    assert code == 200
    assert (document["replica"], document["replicas"]) == ("pod-a", ["pod-a", "pod-b"])
    assert document["holders"] == {
        "fog": {"owner": None, "writer": None},
        "gate": {"owner": "pod-b", "writer": "ops-host-77 (a command)"},
        "lobby": {"owner": "pod-a", "writer": None},
    }


async def test_status_before_any_pass_has_no_targets(daemon: Daemon) -> None:
    code, document = await get_json(daemon, "/status")
    assert code == 200
    assert (document["last_pass"], document["targets"], document["ready"]) == (None, {}, False)


async def test_metrics_serve_the_exposition(daemon: Daemon) -> None:
    daemon.metrics.set_desired(True)
    daemon.metrics.record_pass(a_pass(finished_at=time.time()))
    async with daemon.http.get(daemon.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == daemon.metrics.exposition()[1]
        text = await response.text()
    lines = text.splitlines()
    assert 'reconciler_persons_managed{target="lobby"} 20.0' in lines
    assert 'reconciler_changes_total{action="create",result="applied",target="lobby"} 2.0' in lines
    assert 'reconciler_passes_total{result="ok"} 1.0' in lines
    assert "reconciler_desired_valid 1.0" in lines


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_paths_and_methods_answer_json(daemon: Daemon) -> None:
    code, document = await get_json(daemon, "/nope")
    assert (code, document) == (404, {"error": "not found"})
    async with daemon.http.post(daemon.url + "/healthz") as response:
        assert response.status == 405
        assert response.content_type == "application/json"
        assert "GET" in response.headers["Allow"]
    async with daemon.http.get(daemon.url + "/reconcile") as response:
        assert response.status == 405


async def test_a_bug_answers_500_without_a_stack_trace(daemon: Daemon) -> None:
    # A time the status document cannot render: document() raises inside the handler.
    daemon.status.last_pass = a_pass(finished_at=float("nan"))
    with capture_logs() as logs:
        code, document = await get_json(daemon, "/status")
    assert (code, document) == (500, {"error": "internal error"})
    assert [entry["event"] for entry in logs] == ["http.failed"]


# --- POST /reconcile --------------------------------------------------------------------------


async def test_webhook_is_off_without_a_secret(daemon_without_secret: Daemon) -> None:
    daemon = daemon_without_secret
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {SECRET}"}):
        code, document, answered = await post_reconcile(daemon, headers=headers)
        assert code == 401
        assert answered["WWW-Authenticate"] == "Bearer"
        assert document == {"error": "POST /reconcile is off: set RECONCILER_WEBHOOK_SECRET"}
    assert not daemon.trigger.pending


async def test_an_empty_secret_keeps_the_webhook_off() -> None:
    async for daemon in _serve(""):
        code, _, _ = await post_reconcile(daemon, headers={"Authorization": "Bearer "})
        assert code == 401
        assert not daemon.trigger.pending


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-bearer"),
        pytest.param({"Authorization": f"Bearer {SECRET}x"}, id="bearer-with-suffix"),
        pytest.param({"Authorization": f"Bearer {SECRET[:-1]}"}, id="bearer-prefix"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-token"),
        pytest.param({"Authorization": f"Basic {SECRET}"}, id="other-scheme"),
        pytest.param({"Authorization": f"Bearer {SECRET}\u00e9"}, id="non-ascii-token"),
        pytest.param({"X-Hub-Signature-256": "sha256=" + "0" * 64}, id="bad-hmac"),
        pytest.param({"X-Hub-Signature-256": signature(b"{}")[7:]}, id="hmac-without-prefix"),
        pytest.param({"X-Hub-Signature-256": signature(b'{"x":1}')}, id="hmac-of-another-body"),
        pytest.param({"X-Hub-Signature-256": signature(b"{}", "other")}, id="hmac-other-key"),
        pytest.param({"X-Hub-Signature-256": ""}, id="empty-signature"),
        pytest.param({"X-Hub-Signature": "sha1=" + "0" * 40}, id="sha1-signature"),
    ],
)
async def test_webhook_refuses_anything_but_the_secret(
    daemon: Daemon, headers: dict[str, str]
) -> None:
    with capture_logs() as logs:
        code, document, response_headers = await post_reconcile(daemon, b"{}", headers)
    assert code == 401
    # One answer for every mistake: nothing tells a caller which part was wrong.
    assert document == {"error": "missing or invalid credentials"}
    assert response_headers["WWW-Authenticate"] == "Bearer"
    assert not daemon.trigger.pending
    assert [entry["event"] for entry in logs] == ["webhook.refused"]
    assert SECRET not in repr(logs)


async def test_webhook_accepts_the_bearer_token(daemon: Daemon) -> None:
    with capture_logs() as logs:
        code, document, _ = await post_reconcile(
            daemon, headers={"Authorization": f"Bearer {SECRET}"}
        )
    assert (code, document) == (202, {"queued": True})
    assert daemon.trigger.pending
    assert await daemon.trigger.wait() == ("webhook",)
    assert SECRET not in repr(logs)


async def test_webhook_bearer_scheme_is_case_insensitive(daemon: Daemon) -> None:
    code, _, _ = await post_reconcile(daemon, headers={"Authorization": f"bearer {SECRET}"})
    assert code == 202
    assert daemon.trigger.pending


async def test_webhook_accepts_a_github_signature(daemon: Daemon) -> None:
    body = b'{"ref":"refs/heads/main","after":"0f1e2d"}'
    code, document, _ = await post_reconcile(
        daemon,
        body,
        {"X-Hub-Signature-256": signature(body), "X-GitHub-Event": "push"},
    )
    assert (code, document) == (202, {"queued": True})
    assert daemon.trigger.pending


async def test_a_wrong_bearer_does_not_spoil_a_right_signature(daemon: Daemon) -> None:
    body = b"{}"
    headers = {"Authorization": "Bearer wrong", "X-Hub-Signature-256": signature(body)}
    code, _, _ = await post_reconcile(daemon, body, headers)
    assert code == 202


async def test_requests_collapse_into_one_pending_pass(daemon: Daemon) -> None:
    for _ in range(3):
        code, _, _ = await post_reconcile(daemon, headers={"Authorization": f"Bearer {SECRET}"})
        assert code == 202
    assert await daemon.trigger.wait() == ("webhook",)
    assert not daemon.trigger.pending


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(daemon: Daemon) -> None:
    """Headers only: the server must answer without waiting for 64 MiB that never come."""
    port = daemon.listening.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /reconcile HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n"
            b"Content-Length: " + str(64 * MAX_BODY).encode() + b"\r\n\r\n"
        )
        await writer.drain()
        # The server answers, then hangs up on its own instead of waiting for the body.
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.split()[1] == b"413"
    assert answer.endswith(b'{"error":"request body larger than 1048576 bytes"}')
    assert not daemon.trigger.pending


class Oversized:
    """A chunked body of 64 MiB that counts how much of it was actually sent."""

    def __init__(self) -> None:
        self.total = 64 * MAX_BODY
        self.sent = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        chunk = b"x" * 65536
        while self.sent < self.total:
            self.sent += len(chunk)
            yield chunk


async def test_an_undeclared_oversized_body_is_cut_off(daemon: Daemon) -> None:
    """Chunked, so no length to check first: reading stops at the cap, far before the end."""
    body = Oversized()
    headers = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    async with daemon.http.post(
        daemon.url + "/reconcile", data=body.chunks(), headers=headers
    ) as r:
        code = r.status
    assert code == 413
    assert body.sent < body.total // 4
    assert not daemon.trigger.pending


async def test_an_oversized_body_without_credentials_is_not_read(daemon: Daemon) -> None:
    body = Oversized()
    async with daemon.http.post(daemon.url + "/reconcile", data=body.chunks()) as response:
        code = response.status
    assert code == 401
    assert body.sent < body.total // 4
    assert not daemon.trigger.pending


# --- listening --------------------------------------------------------------------------------


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:9180") == ("127.0.0.1", 9180)
    assert parse_listen("[::1]:9180") == ("::1", 9180)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("9180", ":9180", "::1:9180", "host:", "host:http", "host:70000", "[::1]"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


async def test_start_serves_on_a_free_port_and_maps_a_taken_port() -> None:
    app = make_app(
        Status(interval=INTERVAL, dry_run=False), Trigger(), Metrics(), webhook_secret=None
    )
    async with await start(app, "127.0.0.1:0") as first:
        assert first.port > 0
        assert first.url == f"http://127.0.0.1:{first.port}"
        other = make_app(
            Status(interval=INTERVAL, dry_run=False), Trigger(), Metrics(), webhook_secret=None
        )
        with pytest.raises(ConfigError, match="cannot listen on"):
            await start(other, f"127.0.0.1:{first.port}")


async def test_a_closed_server_refuses_connections() -> None:
    app: web.Application = make_app(
        Status(interval=INTERVAL, dry_run=False), Trigger(), Metrics(), webhook_secret=SECRET
    )
    listening = await start(app, "127.0.0.1:0")
    await listening.close()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(listening.url + "/healthz")


def test_status_lists_the_foreign_persons_it_counts() -> None:
    """Foreign persons are listed by id (up to FOREIGN_SHOWN), so an operator can decide on
    `reconciler adopt` from /status alone."""
    foreign = tuple(f"{n:05d}" for n in range(FOREIGN_SHOWN + 5))
    plan = TargetPlan(target="lobby", kind="nebula_pass", foreign=foreign)
    shown = target_pass(plan, None, 0, dry_run=False)
    assert shown.foreign == FOREIGN_SHOWN + 5
    assert shown.foreign_persons == foreign[:FOREIGN_SHOWN]


def test_liveness_fails_only_while_a_pass_finishes_no_request_for_the_stall_timeout() -> None:
    status = Status(interval=INTERVAL, dry_run=False, stall_timeout=10.0)
    assert status.liveness(steps=5, now=100.0)[0]
    assert status.liveness(steps=5, now=1000.0)[0]  # between passes nothing need move
    status.pass_began(steps=5, now=1000.0)
    assert status.liveness(steps=5, now=1010.0)[0]
    alive, reason = status.liveness(steps=5, now=1010.5)
    assert not alive
    assert reason == "pass 1 has finished no step for 10s (stall_timeout 10s)"
    assert status.liveness(steps=6, now=1011.0)[0]  # a request finished: moving again
    assert status.liveness(steps=6, now=1020.0)[0]
    assert not status.liveness(steps=6, now=1021.5)[0]
    status.in_pass = False
    assert status.liveness(steps=6, now=5000.0)[0]
    never = Status(interval=INTERVAL, dry_run=False, stall_timeout=0.0)
    never.pass_began(steps=0, now=0.0)
    assert never.liveness(steps=0, now=10**6)[0]


async def test_healthz_says_stalled_while_a_pass_stands_still() -> None:
    status = Status(interval=INTERVAL, dry_run=False, stall_timeout=0.01)
    listening = await start(
        make_app(status, Trigger(), Metrics(), webhook_secret=None), "127.0.0.1:0"
    )
    try:
        status.pass_began(progress.steps(), time.monotonic() - 1)
        async with aiohttp.ClientSession() as http, http.get(listening.url + "/healthz") as got:
            assert got.status == 503
            document = orjson.loads(await got.read())
        assert document["status"] == "stalled"
        assert "finished no step" in document["reason"]
    finally:
        await listening.close()
