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
