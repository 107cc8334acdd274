"""The composition root: settings + desired state -> targets, store and hasher, opened together.

Validates each target's settings with its kind's model (placing errors at file:line:column of the
desired state) and builds the adapters. I/O only through the pieces it opens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, SecretStr, ValidationError

from reconciler import logs
from reconciler.core.records import Hasher
from reconciler.core.redaction import url_secrets
from reconciler.errors import ConfigError, DesiredError, Problem, UsageError
from reconciler.settings import Settings
from reconciler.sources import sql, yamlfile
from reconciler.sources.parsed import ParsedCache
from reconciler.sources.yamlfile import Loaded, RawTarget
from reconciler.store.base import Store
from reconciler.store.sqlite import SqliteStore
from reconciler.targets import KINDS
from reconciler.targets.base import Target, TargetSettings
from reconciler.targets.http import Backoff, identify


class Environment(Mapping[str, str]):
    """`${NAME}` values: the process environment, then systemd credentials.

    Under systemd, `LoadCredential=NAME:/path` puts a secret in `$CREDENTIALS_DIRECTORY/NAME`,
    readable only by the service and never in its environment (which /proc exposes more widely).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def __getitem__(self, name: str) -> str:
        if name in self._environ:
            return self._environ[name]
        folder = self._environ.get("CREDENTIALS_DIRECTORY")
        if folder and "/" not in name and name not in ("", ".", ".."):
            try:
                return (Path(folder) / name).read_text(encoding="utf-8").rstrip("\n")
            except OSError:
                pass
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


@dataclass(frozen=True, slots=True, kw_only=True)
class Validated:
    """A desired state whose persons and target settings are all valid."""

    loaded: Loaded
    targets: Mapping[str, TargetSettings]


@dataclass(kw_only=True)
class App:
    """Everything one pass needs, opened together and closed together."""

    settings: Settings
    desired: Validated
    targets: dict[str, Target]
    store: Store
    hasher: Hasher
    backoff: Backoff | None = None
    #: The targets selected with --target; None: every target of the desired state.
    selected: frozenset[str] | None = None
    #: Where reloads of the desired state find the files parsed before.
    parsed: ParsedCache | None = None

    def __post_init__(self) -> None:
        _check_complete(self.desired)

    async def replace_desired(self, desired: Validated) -> None:
        """Switch to a new (valid) desired state; rebuild only targets whose settings changed,
        so an edit to persons never costs the terminals a new login."""
        _check_complete(desired)
        old = self.desired
        for name in list(self.targets):
            same_kind = (
                name in desired.targets
                and desired.loaded.targets[name].kind == old.loaded.targets[name].kind
            )
            if not same_kind or desired.targets[name] != old.targets[name]:
                await self.targets.pop(name).aclose()
        for name in sorted(desired.targets):
            if name not in self.targets and (self.selected is None or name in self.selected):
                self.targets[name] = build_target(desired, name, self.backoff)
        self.desired = desired

    async def aclose_targets(self) -> None:
        for target in self.targets.values():
            await target.aclose()
        self.targets.clear()


def _check_complete(desired: Validated) -> None:
    if not desired.loaded.complete:
        # A bug, not bad input: planning from it would delete every person of the sources.
        raise RuntimeError("the persons_from sources of this desired state have not been read")


def build_target(desired: Validated, name: str, backoff: Backoff | None) -> Target:
    return KINDS[desired.loaded.targets[name].kind].build(name, desired.targets[name], backoff)


def validate(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    hasher: Hasher | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    cache: ParsedCache | None = None,
) -> Validated:
    """Load the desired state and validate every target's settings. No network, no store: the
    persons_from sources are not read yet (read_sources does that)."""
    # validate needs no stable key: a digest it computes is never compared with anything.
    hasher = hasher or Hasher(os.urandom(32))
    loaded = yamlfile.load(
        path, env=Environment() if env is None else env, hasher=hasher, cache=cache
    )
    problems: list[Problem] = []
    settings: dict[str, TargetSettings] = {}
    for name, raw in loaded.targets.items():
        try:
            settings[name] = target_settings(raw, (overrides or {}).get(name, {}))
        except DesiredError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DesiredError(problems)
    logs.protect(secret for target in settings.values() for secret in secrets_of(target))
    logs.protect(secret for source in loaded.persons_from for secret in sql.secrets_of(source))
    return Validated(loaded=loaded, targets=settings)


async def read_sources(
    validated: Validated, *, hasher: Hasher | None = None, reader: sql.Reader | None = None
) -> Validated:
    """The desired state with the persons of its persons_from sources, read now (again, if
    they were before): queries the databases.

    Raises DesiredError naming each source that could not be read and each bad row.
    """
    if not validated.loaded.persons_from:
        return validated
    loaded = await (reader or sql.Reader()).read(validated.loaded, hasher or Hasher(os.urandom(32)))
    return dataclasses.replace(validated, loaded=loaded)


def secrets_of(settings: BaseModel) -> Iterator[str]:
    """The secret values a target's settings hold (every SecretStr field): they are kept out
    of every output from here on."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()


def target_settings(raw: RawTarget, override: Mapping[str, Any] | None = None) -> TargetSettings:
    """One target's settings, validated by its kind; errors point into the file."""
    # The file format names exactly the kinds in the registry (a test holds them equal), and
    # the loader has refused any other kind with its position.
    entry = KINDS[raw.kind]
    values = {**raw.settings, **(override or {})}
    try:
        return entry.settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            loc = tuple(error["loc"])
            unknown = error["type"] == "extra_forbidden"
            # An unknown key is wrong where the key is written; a bad value where the value is.
            place = yamlfile.locate(raw.source, ("targets", raw.name, *loc), key=unknown)
            if place is None and loc:
                place = yamlfile.locate(raw.source, ("targets", raw.name))
            line, column = place or (raw.line, None)
            key = ".".join(str(part) for part in loc) or "settings"
            message = error["msg"].removeprefix("Value error, ")
            if unknown:
                message = f"unknown key {key!r} for kind {raw.kind}"
                close = difflib.get_close_matches(key, list(entry.settings.model_fields), n=1)
                if close:
                    message += f" (did you mean {close[0]!r}?)"
            elif error["type"] == "missing":
                message = f"{key} is required for kind {raw.kind}"
            else:
                message = f"{key}: {message}"
            problems.append(
                Problem(
                    source=raw.source,
                    line=line,
                    column=column,
                    message=f"target {raw.name}: {message}",
                )
            )
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise DesiredError(problems) from None


def parsed_cache(
    settings: Settings, desired: Path, *, existing: bool = False
) -> ParsedCache | None:
    """The cache of parsed desired files in the state directory; with existing, None when
    there is no state directory yet (so `validate` in a CI checkout creates nothing)."""
    if existing and not settings.state_dir.is_dir():
        return None
    return ParsedCache(settings.state_dir / "desired-cache", desired)


def store_path(settings: Settings) -> Path:
    """The SQLite store's file (a sqlite:/// store URL)."""
    url = settings.resolved_store_url
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ConfigError(f"RECONCILER_STORE_URL: not a sqlite:/// store: {parsed.scheme}://")
    return (
        Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else Path(parsed.path)
    )


async def connect_store(settings: Settings) -> Store:
    """The store the settings name: sqlite:///PATH (one process) or postgresql://… (replicas)."""
    scheme = urlparse(settings.resolved_store_url).scheme
    if scheme == "sqlite":
        return await SqliteStore.open(store_path(settings), replica=settings.replica_id)
    if scheme in ("postgresql", "postgres"):
        # Its password is hidden wherever it might turn up: a driver's error, a traceback.
        logs.protect(url_secrets(settings.resolved_store_url))
        # Imported here: psycopg takes a tenth of a second to import, which the embedded
        # store (and every command) need not pay.
        from reconciler.store.postgres import PostgresStore

        return await PostgresStore.open(settings.resolved_store_url, replica=settings.replica_id)
    raise ConfigError(
        f"RECONCILER_STORE_URL: use sqlite:///PATH or postgresql://…, not {scheme}://"
    )


def store_location(settings: Settings) -> str:
    """Where the store is, for messages: the SQLite file, or the URL without its password."""
    if urlparse(settings.resolved_store_url).scheme == "sqlite":
        return str(store_path(settings))
    from reconciler.store.postgres import parse_url

    return parse_url(settings.resolved_store_url).shown


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, create: bool = True) -> AsyncIterator[Store | None]:
    """The store alone (for `reconciler status`); None when `create` is false and there is no
    SQLite store yet (nothing has run). A PostgreSQL store is always opened (and migrated)."""
    if urlparse(settings.resolved_store_url).scheme == "sqlite":
        path = store_path(settings)
        if not create and not path.exists():
            yield None
            return
    store = await connect_store(settings)
    try:
        yield store
    finally:
        await store.aclose()


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings,
    *,
    desired_path: Path | None = None,
    targets: Collection[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    backoff: Backoff | None = None,
) -> AsyncIterator[App]:
    """Open the store, load and validate the desired state (its persons_from sources read),
    build the selected targets."""
    store = await connect_store(settings)
    identify(store.replica)
    built: dict[str, Target] = {}
    path = desired_path or settings.desired
    cache = parsed_cache(settings, path)
    try:
        hasher = Hasher(await store.fingerprint_key())
        desired = validate(path, env=env, hasher=hasher, overrides=overrides, cache=cache)
        desired = await read_sources(desired, hasher=hasher)
        names = sorted(desired.targets)
        if targets:
            unknown = sorted(set(targets) - set(names))
            if unknown:
                raise UsageError(
                    f"no target named {', '.join(unknown)} in the desired state "
                    f"(targets: {', '.join(names) or 'none'})"
                )
            names = [n for n in names if n in targets]
        for name in names:
            built[name] = build_target(desired, name, backoff)
        app = App(
            settings=settings,
            desired=desired,
            targets=built,
            store=store,
            hasher=hasher,
            backoff=backoff,
            selected=frozenset(targets) if targets else None,
            parsed=cache,
        )
        yield app
        built = app.targets
    finally:
        for target in built.values():
            await target.aclose()
        await store.aclose()
