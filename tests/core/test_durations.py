"""Durations as operators write them: one reading for targets' and persons_from's settings."""

from __future__ import annotations

import pytest

from reconciler.core import durations


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        (" 2.5 m ", 150.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
    ],
)
def test_a_duration_reads_as_seconds(written: object, seconds: float) -> None:
    assert durations.seconds(written) == seconds


@pytest.mark.parametrize("written", ["", "m", "-5s", "5 minutes", "1e3", "5w", True, None, [5]])
def test_anything_else_is_no_duration(written: object) -> None:
    assert durations.seconds(written) is None
