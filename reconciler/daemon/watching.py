"""Watch the desired state's files and request a pass when their content changes.

watchfiles reports events on the folder that holds the desired state, which catches an editor's
save-by-rename and a Kubernetes ConfigMap's symlink swap (events on `..data`, not on the file).
Events only wake us up: a pass is requested when the content signature actually changed, so a
`touch` or an unrelated file costs nothing. File system I/O (inotify, or polling as fallback).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
import watchfiles

from reconciler.daemon.trigger import Trigger
from reconciler.errors import DesiredError
from reconciler.sources import yamlfile

log = structlog.get_logger("reconciler.daemon")

#: Milliseconds of quiet before a burst of events counts: editors write in several steps.
DEBOUNCE_MS = 300


def watched_folder(desired: Path) -> tuple[Path, bool]:
    """Where to watch, and whether recursively.

    A directory of YAML files is watched itself, with its subfolders (ConfigMap's timestamped
    copies live there); a single file through its folder, not recursively. Never through the
    resolved symlink: under a ConfigMap that is a timestamped folder the next update replaces.
    """
    if desired.is_dir():
        return desired.absolute(), True
    return desired.absolute().parent, False


async def watch(desired: Path, trigger: Trigger, stop: asyncio.Event) -> None:
    """Request a pass whenever the desired files' signature changes; ends when `stop` is set."""
    folder, recursive = watched_folder(desired)
    last = _signature(desired)
    log.info("watch.started", folder=str(folder))
    async for _changes in watchfiles.awatch(
        folder, stop_event=stop, debounce=DEBOUNCE_MS, recursive=recursive, rust_timeout=1000
    ):
        current = _signature(desired)
        if current != last:
            last = current
            log.info("desired.changed", folder=str(folder))
            trigger.request("desired-changed")


def _signature(desired: Path) -> str | None:
    try:
        return yamlfile.signature(desired)
    except DesiredError:
        return None  # unreadable now: the pass that follows reports why
