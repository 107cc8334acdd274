"""The cyclic garbage collector held off for work that builds a great many lasting objects.

Parsing the desired state, reading targets and planning build snapshots that all survive;
applying allocates briskly beside them. No I/O: only the interpreter's collector is touched.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for a while, for work that builds a great many objects that all
    survive (parsing, reading and planning snapshots): collections would only rescan them, again
    and again, as they grow. Re-entrant: only the outermost pause resumes it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """What exists now (the desired state, the plan, the snapshots) left out of the collector's
    scans for a while (gc.freeze), for work that allocates briskly beside a large heap: applying
    a plan. The collector still runs, over what is new; afterwards it sees everything again."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
