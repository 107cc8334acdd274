"""The JSON log line as written: its timestamp, and the redactor on the way out."""

from __future__ import annotations

import io
import re
import sys
from datetime import UTC, datetime

import orjson
import pytest
import structlog

from reconciler import logs
from reconciler.core.changes import Action, Change, FieldChange, Reason, change_document


def test_the_timestamp_is_iso_utc_to_the_microsecond() -> None:
    before = datetime.now(UTC)
    stamp = logs._stamp(None, "info", {})["timestamp"]
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before.replace(microsecond=0) <= datetime.fromisoformat(stamp) <= after


def test_a_json_line_is_redacted_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(out))
    monkeypatch.setattr(logs, "_redactor", logs._redactor)  # protect() below is undone after
    logs.configure("json")
    logs.protect(["lobby-pw-4471"])
    try:
        structlog.get_logger("test").info(
            "change.applied", person="1", error="echoed lobby-pw-4471", password="pw", pin=1234
        )
    finally:
        structlog.reset_defaults()
    line = orjson.loads(out.getvalue())
    assert line["error"] == "echoed [redacted]"
    assert line["password"] == line["pin"] == "[redacted]"
    assert line["event"] == "change.applied"


def test_change_lines_written_together_read_as_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`logs.change_lines` writes what structlog would, line for line, redacted the same way:
    a known secret in a field's value, a secret key in the context."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(out))
    monkeypatch.setattr(logs, "_redactor", logs._redactor)
    logs.configure("json")
    logs.protect(["lobby-pw-4471"])
    changes = [
        Change(
            action=Action.CREATE,
            person_id="1",
            reason=Reason.NEW,
            fields=(FieldChange(field="pin", new="1234", sensitive=True),),
        ),
        Change(
            action=Action.UPDATE,
            person_id="2",
            reason=Reason.DRIFT,
            fields=(FieldChange(field="note", old="x", new="lobby-pw-4471"),),
        ),
        Change(action=Action.DELETE, person_id="3", reason=Reason.REMOVED),
    ]
    structlog.contextvars.bind_contextvars(token="t0k3n-in-context")
    try:
        for change in changes:
            structlog.get_logger("test").bind(target="lobby").info(
                "change.applied", **change_document(change)
            )
        logs.change_lines("test", "change.applied", changes, target="lobby")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    written = [orjson.loads(line) for line in out.getvalue().splitlines()]
    one_by_one, together = written[:3], written[3:]
    assert len(together) == 3
    for line in written:
        del line["timestamp"]
    assert together == one_by_one
    assert list(together[0]) == list(one_by_one[0])  # the same order of keys too
    assert together[0]["fields"]["pin"] == {"sensitive": True}
    assert together[1]["fields"]["note"]["to"] == "[redacted]"
    assert together[2]["token"] == "[redacted]"
    assert b"1234" not in out.getvalue()


def test_change_lines_go_through_structlog_when_it_is_not_ours() -> None:
    """Captured (or console) logging sees every line, as if logged one by one."""
    logs.configure("json")
    changes = [
        Change(action=Action.DELETE, person_id=pid, reason=Reason.REMOVED) for pid in ("1", "2")
    ]
    try:
        with structlog.testing.capture_logs() as captured:
            logs.change_lines("test", "change.planned", changes, target="t")
    finally:
        structlog.reset_defaults()
    assert [(c["event"], c["person"], c["target"]) for c in captured] == [
        ("change.planned", "1", "t"),
        ("change.planned", "2", "t"),
    ]
