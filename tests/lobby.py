"""The lobby terminal as the CLI, cycle and daemon tests declare it: one nebula_pass target at a
simulator's URL (the conftest `nebula` fixture), its password read from ${LOBBY_PASSWORD}."""

from __future__ import annotations

from collections.abc import Mapping

PASSWORD = "s3cret-lobby-pw"


def desired(
    url: str, persons: str, *, max_deletes: str | None = None, extra_target: str | None = None
) -> str:
    """desired.yaml text: the lobby target (its mass-delete guard when given), `extra_target`
    (more YAML under `targets:`, on a line of its own when given), then `persons` (YAML list
    items, see persons())."""
    lines = [
        "version: 1",
        "targets:",
        "  lobby:",
        "    kind: nebula_pass",
        f"    url: {url}",
        "    username: admin",
        "    password: ${LOBBY_PASSWORD}",
    ]
    if max_deletes is not None:
        lines.append(f'    max_deletes: "{max_deletes}"')
    lines.append("    rate_limit: null")
    if extra_target is not None:
        lines.append(extra_target)
    lines.append("persons:")
    return "\n".join(lines) + "\n" + persons


def persons(names: Mapping[str, str], **fields: str) -> str:
    """One flow-style list item per person id with its name, and `fields` for every one."""
    more = "".join(f', {key}: "{value}"' for key, value in fields.items())
    return "".join(f'  - {{id: "{pid}", name: "{name}"{more}}}\n' for pid, name in names.items())
