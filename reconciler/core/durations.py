"""Durations as operators write them in YAML: seconds, or a number with a unit ("500ms", "30s",
"30m", "24h", "7d"). Pure: targets' and persons_from's settings read them through here."""

from __future__ import annotations

import re

#: A duration as text; JSON schemas of the settings show this pattern.
PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def seconds(value: object) -> float | None:
    """The seconds a duration stands for (a number is seconds); None when it is none."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (match := PATTERN.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2)]
    return None
