"""Parsed desired files kept in the state directory, by content, so a load re-parses only edits.

I/O: reads and writes its own folder (<state_dir>/desired-cache/). Each entry holds one valid file's
persons, departments and targets as written (before ${NAME} is replaced), encrypted with a key
derived from the file's bytes: only someone who has the file, and so its values, can read it.
It also keeps the desired digest of recent loads, by a keyed hash of what determines it.
Anything wrong with an entry makes it a miss, never an error; the cache is an optimisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pydantic_core
import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from reconciler import provenance
from reconciler.core import persons, records
from reconciler.sources import document

#: A person as the cache keeps it: the fields of a person's entry in the file, in order, and
#: the line it starts on. valid_from / valid_until are ISO 8601 text (which
#: datetime.fromisoformat reads back exactly), `photo` the path as written in the file.
PERSON_FIELDS = (*document.Person.model_fields, "line")
#: Bump when the meaning of an entry changes in a way the code digest below cannot see.
_FORMAT = b"reconciler parsed desired file 1"
_MAGIC = b"RPD1"
_NONCE = 12
#: Folders of desired paths not loaded for this long are removed.
_UNUSED_FOLDER_SECONDS = 7 * 24 * 3600
#: Temporary files older than this are a crashed writer's, not one in progress.
_STALE_TMP_SECONDS = 3600
#: A photo modified this recently may change again within the file system's timestamp
#: granularity without its stat changing, so its hash is not remembered (re-read next time).
_SETTLED_NS = 2_000_000_000
_TMP_SUFFIX = ".tmp"
#: Entries are named by 32 hex digits; anything else in the folder is not an entry.
_ENTRY_NAME = 32
_DIGESTS = "digests"
#: Desired digests kept: a few, so that `validate` (a throwaway key) does not evict `plan`'s.
_DIGESTS_KEPT = 4


@dataclass(frozen=True, slots=True)
class PhotoSeen:
    """A photo's hash, and the stat of the file it was read from: while the stat is the same,
    the hash is. The inode and ctime (which no tool can set back) catch a same-size rewrite
    with a restored mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    digest: str
    media_type: str

    @staticmethod
    def settled(info: os.stat_result, digest: str, media_type: str) -> PhotoSeen | None:
        """What to remember of a photo just read, or None while it is too fresh to trust."""
        if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) < _SETTLED_NS:
            return None
        return PhotoSeen(
            device=info.st_dev,
            inode=info.st_ino,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            ctime_ns=info.st_ctime_ns,
            digest=digest,
            media_type=media_type,
        )

    def matches(self, info: os.stat_result) -> bool:
        return (
            stat.S_ISREG(info.st_mode)
            and info.st_dev == self.device
            and info.st_ino == self.inode
            and info.st_size == self.size
            and info.st_mtime_ns == self.mtime_ns
            and info.st_ctime_ns == self.ctime_ns
        )


@dataclass(slots=True, kw_only=True)
class Content:
    """What one valid desired file declares, as cached.

    persons: one row per person (PERSON_FIELDS); departments: (id, name, parent, line) rows;
    targets (name -> settings) and persons_from as written, ${NAME} not yet replaced, so no
    secret is cached; source_lines: the line of each persons_from entry.
    photos: absolute path -> what was last seen of each photo the file names.
    """

    persons: list[tuple[Any, ...]]
    departments: list[tuple[str, str, str, int | None]]
    targets: dict[str, Any]
    target_lines: dict[str, int]
    persons_from: list[Any]
    source_lines: list[int | None]
    photos: dict[str, PhotoSeen]

    def encode(self) -> bytes | None:
        """The entry's plain text; None when some value would not survive JSON unchanged."""
        if not (_json_safe(self.targets) and _json_safe(self.persons_from)):
            return None
        body = {
            "persons": self.persons,
            "departments": self.departments,
            "targets": self.targets,
            "target_lines": self.target_lines,
            "persons_from": self.persons_from,
            "source_lines": self.source_lines,
            "photos": {
                path: [
                    seen.device,
                    seen.inode,
                    seen.size,
                    seen.mtime_ns,
                    seen.ctime_ns,
                    seen.digest,
                    seen.media_type,
                ]
                for path, seen in self.photos.items()
            },
        }
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError:
            return None

    @staticmethod
    def decode(data: bytes) -> Content:
        """Raises ValueError, TypeError or KeyError when data is not an entry of this format."""
        body = orjson.loads(data)
        persons = body["persons"]
        if not isinstance(persons, list) or any(
            not isinstance(row, list) or len(row) != len(PERSON_FIELDS) for row in persons
        ):
            raise ValueError("malformed persons")
        return Content(
            persons=persons,
            departments=[(d[0], d[1], d[2], d[3]) for d in body["departments"]],
            targets=dict(body["targets"]),
            target_lines=dict(body["target_lines"]),
            persons_from=list(body["persons_from"]),
            source_lines=list(body["source_lines"]),
            photos={path: PhotoSeen(*seen) for path, seen in body["photos"].items()},
        )


def _json_safe(value: Any) -> bool:
    """Whether value comes back from JSON exactly as it went in (YAML also yields dates,
    sets, binary, non-string keys and infinities, which JSON would change silently)."""
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_safe(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    return False


@dataclass(frozen=True, slots=True)
class Key:
    """Where one file content's entry lives, and the key that seals it."""

    name: str
    secret: bytes


def _code_version() -> bytes:
    """The loader's code and the libraries that shape what it produces: any change is a miss."""
    modules = [*sorted(Path(__file__).parent.glob("*.py"))]
    # How Persons are built and digested, for the digests kept.
    modules += [Path(module.__file__ or "") for module in (persons, records)]
    versions = (
        sys.version,
        yaml.__version__,
        str(getattr(yaml, "__with_libyaml__", False)),
        pydantic_core.__version__,
    )
    return provenance.code_digest(_FORMAT, modules, versions)


class ParsedCache:
    """The entries of one desired path (a file or a directory) in a folder of the state dir."""

    def __init__(self, folder: Path, desired: Path) -> None:
        self.root = folder
        # One sub-folder per desired path, so that a `plan -f other.yaml` beside the daemon
        # does not evict the daemon's entries.
        scope = hashlib.blake2b(os.path.abspath(desired).encode(), digest_size=8).hexdigest()
        self.folder = folder / scope
        self._version: bytes | None = None

    def key(self, data: bytes) -> Key:
        """The entry name and key for a file's bytes (one SHA-256 pass over them)."""
        if self._version is None:
            self._version = _code_version()
        material = HKDF(algorithm=SHA256(), length=48, salt=self._version, info=_FORMAT).derive(
            hashlib.sha256(data).digest()
        )
        return Key(name=material[:16].hex(), secret=material[16:])

    def get(self, key: Key) -> Content | None:
        """The entry for key, or None if it is absent, foreign, damaged or unreadable."""
        try:
            sealed = (self.folder / key.name).read_bytes()
        except OSError:
            return None
        if not sealed.startswith(_MAGIC):
            return None
        nonce = sealed[len(_MAGIC) : len(_MAGIC) + _NONCE]
        try:
            plain = AESGCM(key.secret).decrypt(
                nonce, sealed[len(_MAGIC) + _NONCE :], key.name.encode()
            )
            return Content.decode(plain)
        except (InvalidTag, ValueError, TypeError, KeyError, IndexError):
            return None

    def put(self, key: Key, content: Content) -> bool:
        """Store content under key, atomically; False when it could not be (never raises)."""
        plain = content.encode()
        if plain is None:
            return False
        # A nonce per write: the same file's entry is rewritten when its photos change.
        nonce = os.urandom(_NONCE)
        sealed = _MAGIC + nonce + AESGCM(key.secret).encrypt(nonce, plain, key.name.encode())
        return self._write(key.name, sealed)

    def digest(self, identity: str) -> str | None:
        """The desired digest kept for identity (see remember_digest), if any."""
        for known, digest in self._digests():
            if known == identity:
                if self._digests()[-1][0] != identity:
                    self.remember_digest(identity, digest)
                return digest
        return None

    def remember_digest(self, identity: str, digest: str) -> None:
        """Keep digest for identity: a keyed hash of everything the digest is a function of
        (the entries' names, which cover the files' bytes and the code, and the photos'
        hashes), so a digest is only ever found again for the same inputs and key."""
        kept = [(known, value) for known, value in self._digests() if known != identity]
        kept = [*kept[-(_DIGESTS_KEPT - 1) :], (identity, digest)]
        self._write(_DIGESTS, orjson.dumps(kept))

    def _digests(self) -> list[tuple[str, str]]:
        try:
            kept = orjson.loads((self.folder / _DIGESTS).read_bytes())
            return [(str(identity), str(digest)) for identity, digest in kept]
        except (OSError, ValueError, TypeError):
            return []

    def _write(self, name: str, data: bytes) -> bool:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.folder.mkdir(mode=0o700, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(
                dir=self.folder, prefix=f".{name}.", suffix=_TMP_SUFFIX
            )
        except OSError:
            return False
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
            # Readers see the old file or the new one, never a part; a torn write after a
            # crash fails authentication (or JSON) and is a miss.
            os.replace(temporary, self.folder / name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return False
        return True

    def retain(self, names: Collection[str]) -> None:
        """Drop this desired path's entries other than names (files edited or removed since),
        and the folders of desired paths not loaded for a week. Never raises."""
        now = time.time()
        with contextlib.suppress(OSError):
            for entry in _scan(self.folder):
                if entry.name.endswith(_TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                            os.unlink(entry.path)
                elif len(entry.name) == _ENTRY_NAME and entry.name not in names:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            os.utime(self.folder)
        with contextlib.suppress(OSError):
            for entry in _scan(self.root):
                if entry.path == str(self.folder) or not entry.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > _UNUSED_FOLDER_SECONDS:
                        shutil.rmtree(entry.path, ignore_errors=True)


def _scan(folder: Path) -> Iterable[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return list(entries)
