"""What code produced a result kept between processes: a digest of source files and versions.

A cache entry keyed on it misses after any edit or upgrade, however small. Reads the files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def code_digest(label: bytes, modules: Iterable[Path], versions: Iterable[str] = ()) -> bytes:
    """SHA-256 of a label, each module's name and bytes, and the versions given, in order."""
    digest = hashlib.sha256(label)
    for module in modules:
        try:
            digest.update(module.name.encode() + b"\0" + module.read_bytes())
        except OSError:
            # Installed without its sources (a zip): no version to trust, so nothing hits.
            digest.update(os.urandom(16))
    for version in versions:
        digest.update(version.encode() + b"\0")
    return digest.digest()
