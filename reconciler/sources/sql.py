"""persons_from (DESIGN A1): persons read with a read-only SQL query from SQLite or PostgreSQL.

I/O: queries the databases (never writing: read-only connections and transactions, one statement,
a timeout) and reads the photos that rows name. Rows become persons through the same model as the
YAML persons (document.Person), after the coercions the README lists. Every problem of every
source is reported at once, naming the declaring file, the source (its URL without password), the
row and the person id. Never cached: the daemon reads the sources again on every pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from reconciler import progress
from reconciler.core.persons import Desired, Origin, Person, Photo
from reconciler.core.records import Hasher, desired_digest
from reconciler.core.redaction import url_secrets, url_shown
from reconciler.errors import DesiredError, Problem
from reconciler.sources import document as doc
from reconciler.sources.yamlfile import Loaded, PersonsSource, read_photo

if TYPE_CHECKING:
    import psycopg

#: Row problems reported per source; a query that is wrong for every row would otherwise bury
#: the first, most useful ones under thousands of the same.
ROW_PROBLEMS_SHOWN = 20
#: groups given as text: a JSON array, or names separated by this.
GROUPS_DELIMITER = ","
#: The columns a query may return: the person fields.
COLUMNS: tuple[str, ...] = tuple(doc.Person.model_fields)
_REQUIRED = tuple(name for name, info in doc.Person.model_fields.items() if info.is_required())
_TEXT = frozenset(
    {
        "id",
        "name",
        "type",
        "job_number",
        "email",
        "phone",
        "department",
        "card",
        "id_number",
        "pin",
        "remark",
        "photo",
    }
)
_BOOLEAN = frozenset({"admin", "protected"})
# SQLite authorizer: what a read needs; anything else (writes, ATTACH, PRAGMA) is refused.
_SQLITE_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
#: SQLite virtual-machine steps between two looks at the clock.
_SQLITE_PROGRESS_STEPS = 1000
_POSTGRES_CONNECT_MIN = 2  # libpq treats a connect_timeout below 2 s as 2 s
_SPACES = re.compile(r"\s+")

#: A photo's path -> the photo, or why it cannot be one (the rest of a sentence).
_PhotoReader = Callable[[Path], Photo | str]


class _Unreadable(Exception):
    """A source could not be read; the message says why (already free of secrets)."""


@dataclass(frozen=True, slots=True)
class _Rows:
    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]


def secrets_of(source: PersonsSource) -> frozenset[str]:
    """The secrets in the source's URL (its password, as written and decoded): never shown."""
    return url_secrets(source.url)


def describe(source: PersonsSource) -> str:
    """persons_from[0] (postgresql://hr@db/hr): how errors and logs name a source."""
    return f"persons_from[{source.index}] ({url_shown(source.url)})"


class Reader:
    """Reads the persons_from sources of a desired state and merges their persons in.

    Remembers each photo's digest by (path, size, modification time), so that a daemon reading
    its sources on every pass hashes a photo again only when the file changed.
    """

    def __init__(self) -> None:
        self._photos: dict[str, tuple[tuple[int, int], Photo | str]] = {}

    async def read(self, loaded: Loaded, hasher: Hasher) -> Loaded:
        """`loaded` with the persons of its sources, read now (again, if they were before);
        DesiredError with every problem found."""
        if not loaded.persons_from:
            return loaded
        fetched = await asyncio.gather(*(_fetch(source) for source in loaded.persons_from))
        progress.step()
        # Validating many thousand rows is CPU work: keep the event loop answering meanwhile.
        return await asyncio.to_thread(self._merge, loaded, fetched, hasher)

    def _merge(self, loaded: Loaded, fetched: Sequence[_Rows | Problem], hasher: Hasher) -> Loaded:
        problems: list[Problem] = []
        inline = loaded.inline if loaded.inline is not None else loaded.desired
        persons = dict(inline.persons)
        # Where each id came from, for duplicates across sources.
        where: dict[str, str] = {pid: str(p.origin) for pid, p in persons.items() if p.origin}
        departments = {d.id for d in inline.departments}
        photos: dict[str, tuple[tuple[int, int], Photo | str]] = {}
        for source, result in zip(loaded.persons_from, fetched, strict=True):
            if isinstance(result, Problem):
                problems.append(result)
                continue
            rows = _SourceRows(source, result, departments, self._photo_reader(photos))
            problems.extend(rows.merge_into(persons, where))
        self._photos = photos  # only the photos still named: the memory stays bounded
        if problems:
            raise DesiredError(problems)
        ordered = dict(sorted(persons.items()))
        desired = Desired(
            persons=ordered,
            departments=inline.departments,
            digest=desired_digest(ordered, inline.departments, hasher),
        )
        return dataclasses.replace(loaded, desired=desired, complete=True, inline=inline)

    def _photo_reader(self, used: dict[str, tuple[tuple[int, int], Photo | str]]) -> _PhotoReader:
        def read(path: Path) -> Photo | str:
            key = str(path)
            try:
                info = path.stat()
            except OSError:
                return read_photo(path)  # says why, in the loader's words
            stamp = (info.st_size, info.st_mtime_ns)
            known = used.get(key) or self._photos.get(key)
            if known is None or known[0] != stamp:
                known = (stamp, read_photo(path))
            used[key] = known
            return known[1]

        return read


class _SourceRows:
    """One source's rows, turned into persons or into problems."""

    def __init__(
        self,
        source: PersonsSource,
        rows: _Rows,
        departments: set[str],
        photo: _PhotoReader,
    ) -> None:
        self.source = source
        self.rows = rows
        self.departments = departments
        self.photo = photo
        self.name = describe(source)
        at = source.source if source.line is None else f"{source.source}:{source.line}"
        #: How duplicates elsewhere name a row of this source.
        self.where = f"{at} {self.name} row"
        self.base = Path(source.source).parent
        self.problems: list[Problem] = []
        self.hidden = 0

    def merge_into(self, persons: dict[str, Person], where: dict[str, str]) -> list[Problem]:
        if self._check_columns():
            return self.problems
        # Each column's conversion, looked up once rather than on every value.
        plan = [(i, column, _COERCE[column]) for i, column in enumerate(self.rows.columns)]
        id_column = self.rows.columns.index("id")
        first_row: dict[str, int] = {}
        for number, row in enumerate(self.rows.rows, start=1):
            found = self._person(number, row, plan, _as_id(row[id_column]))
            if found is None:
                continue
            if found.id in first_row:
                self._row(number, found.id, f"duplicate id (first at row {first_row[found.id]})")
                continue
            if found.id in persons:
                other = where.get(found.id, "another source")
                self._row(number, found.id, f"duplicate id (also declared at {other})")
                continue
            first_row[found.id] = number
            persons[found.id] = found
            where[found.id] = f"{self.where} {number}"
        if self.hidden:
            self.problems.append(
                self._problem(
                    f"and {self.hidden} more problem{'s' if self.hidden != 1 else ''} in other "
                    "rows (fix the ones above first)"
                )
            )
        return self.problems

    def _check_columns(self) -> bool:
        """Problems with the columns themselves, once rather than on every row."""
        columns = self.rows.columns
        found = False
        for column in dict.fromkeys(columns):
            if column not in COLUMNS:
                close = difflib.get_close_matches(column, COLUMNS, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                self.problems.append(
                    self._problem(
                        f'column "{column}" is not a person field ({hint}name columns like '
                        f"person fields with AS: {', '.join(COLUMNS)})"
                    )
                )
                found = True
            elif columns.count(column) > 1:
                self.problems.append(self._problem(f'column "{column}" appears more than once'))
                found = True
        for column in _REQUIRED:
            if column not in columns:
                self.problems.append(
                    self._problem(
                        f"the query returns no {column} column: name one with AS {column}"
                    )
                )
                found = True
        return found

    def _person(
        self,
        number: int,
        row: Sequence[Any],
        plan: list[tuple[int, str, Callable[[Any], Any]]],
        person_id: str | None,
    ) -> Person | None:
        fields: dict[str, Any] = {}
        bad: set[str] = set()
        for index, column, coerce in plan:
            value = row[index]
            if value is None:  # NULL: the field is absent
                continue
            try:
                fields[column] = coerce(value)
            except ValueError as exc:
                self._row(number, person_id, f"{column} {exc}")
                bad.add(column)
        try:
            entry = doc.Person.model_validate(fields)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                if error["loc"][0] not in bad:  # already said what is wrong with it
                    self._row(number, person_id, _message(error))
            return None
        if bad:
            return None
        if self.departments and entry.department and entry.department not in self.departments:
            message = f"department '{entry.department}' is not declared under departments"
            self._row(number, entry.id, message)
            return None
        photo = None
        if entry.photo is not None:
            outcome = self.photo(Path(os.path.abspath(self.base / entry.photo)))
            if not isinstance(outcome, Photo):
                self._row(number, entry.id, f"photo {entry.photo} {outcome}")
                return None
            photo = outcome
        origin = Origin(source=f"{self.where} {number}")
        return entry.to_core(photo=photo, origin=origin)

    def _row(self, number: int, person_id: str | None, message: str) -> None:
        if len(self.problems) >= ROW_PROBLEMS_SHOWN:
            self.hidden += 1
            return
        who = f', id "{person_id}"' if person_id is not None else ""
        self.problems.append(self._problem(message, at=f" row {number}{who}"))

    def _problem(self, message: str, *, at: str = "") -> Problem:
        return _problem(self.source, message, at=at)


def _problem(source: PersonsSource, message: str, *, at: str = "") -> Problem:
    return Problem(
        source=source.source, line=source.line, message=f"{describe(source)}{at}: {message}"
    )


def _as_id(value: Any) -> str | None:
    """The row's id as text, for messages, when it has a usable one."""
    try:
        return _text(value) if value is not None else None
    except ValueError:
        return None


def _kind(value: Any) -> str:
    """What a database value is, in SQL words, for messages (never the value itself)."""
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a real number"),
        (Decimal, "a decimal number"),
        (bytes, "binary data"),
        (datetime, "a timestamp"),
        (date, "a date"),
        (list, "an array"),
        (dict, "a JSON object"),
        (str, "text"),
    ):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__} value"


# The conversions of database values (never NULL) into what the person model takes; each
# ValueError ends a sentence after the column's name. Only lossless ones: whole numbers to text,
# 0 / 1 to booleans, JSON text to arrays and objects.


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    if isinstance(value, uuid.UUID | str):
        return str(value)
    raise ValueError(f"must be text or a whole number, not {_kind(value)}: cast it in the query")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be a boolean, or 0 or 1, not {_kind(value)}")


def _groups(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise ValueError("starts with [ but is not a JSON array") from None
            if not isinstance(parsed, list):
                raise ValueError("must be a JSON array")
            return parsed
        return [name.strip() for name in text.split(GROUPS_DELIMITER) if name.strip()]
    if isinstance(value, list):
        return value
    raise ValueError(f"must be an array, a JSON array or comma-separated text, not {_kind(value)}")


def _labels(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('must be a JSON object, e.g. {"building": "A"}') from None
    if isinstance(value, dict):
        return value
    raise ValueError(f"must be a JSON object of texts, not {_kind(value)}")


def _as_is(value: Any) -> Any:
    # valid_from, valid_until: the model takes timestamps and ISO 8601 text.
    return value


_COERCE: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_TEXT, _text),
    **dict.fromkeys(_BOOLEAN, _boolean),
    "groups": _groups,
    "labels": _labels,
    "valid_from": _as_is,
    "valid_until": _as_is,
}


def _message(error: ErrorDetails) -> str:
    """A person-model error of one row as a sentence; never with the value (it may be a pin)."""
    loc = error["loc"]
    label = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    label = label.lstrip(".")
    kind = error["type"]
    if kind == "missing":
        return f"{label} must not be NULL"
    if kind in doc.OWN_ERROR_TYPES:
        return f"{label} {error['msg']}"
    if kind == "string_type":
        return f"{label} must be text"
    if kind == "string_too_short":
        return f"{label} must not be empty"
    if kind == "string_too_long":
        return f"{label} must be at most {error.get('ctx', {}).get('max_length')} characters"
    if kind == "literal_error":
        return f"{label} must be {error.get('ctx', {}).get('expected', '')}"
    return f"{label}: {error['msg']}"


# -- reading --------------------------------------------------------------------------------------


async def _fetch(source: PersonsSource) -> _Rows | Problem:
    """The source's rows, or the one problem that kept it from being read."""
    try:
        if source.url.startswith("sqlite:"):
            path = sqlite_path(source)
            return await asyncio.to_thread(_read_sqlite, path, source.query, source.timeout)
        return await _read_postgres(source)
    except _Unreadable as exc:
        message = str(exc)
        for secret in secrets_of(source):
            message = message.replace(secret, "***")
        return _problem(source, message)


def sqlite_path(source: PersonsSource) -> Path:
    """sqlite:///hr.db is hr.db beside the declaring file; sqlite:////srv/hr.db is absolute."""
    return Path(source.source).parent / source.url.removeprefix("sqlite:///")


def _timed_out(timeout: float) -> str:
    return (
        f"no answer within the timeout of {timeout:g}s: the query was cancelled (make it "
        "cheaper, or raise timeout)"
    )


_WRITES = "the query tried to write; persons_from only reads: give it one SELECT"


def _read_sqlite(path: Path, query: str, timeout: float) -> _Rows:
    """Runs in a worker thread: the database opened read-only, query_only, and an authorizer
    that allows reading only; the clock is checked while the query runs."""
    deadline = time.monotonic() + timeout
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise _Unreadable(
            f"cannot open {path}: {exc} (does it exist, and may we read it?)"
        ) from exc
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(
            lambda action, *_: (
                sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY
            )
        )
        connection.set_progress_handler(
            lambda: int(time.monotonic() > deadline), _SQLITE_PROGRESS_STEPS
        )
        cursor = connection.execute(query)
        if cursor.description is None:
            raise _Unreadable("the query returns no columns: give it one SELECT")
        columns = tuple(str(d[0]) for d in cursor.description)
        return _Rows(columns, cursor.fetchall())
    except sqlite3.ProgrammingError as exc:
        raise _Unreadable(f"the query must be one statement: {exc}") from exc
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name == "SQLITE_INTERRUPT":
            raise _Unreadable(_timed_out(timeout)) from exc
        if name in ("SQLITE_AUTH", "SQLITE_READONLY"):
            raise _Unreadable(f"{_WRITES} ({exc})") from exc
        raise _Unreadable(f"the query failed: {exc}") from exc
    finally:
        connection.close()


async def _read_postgres(source: PersonsSource) -> _Rows:
    """A read-only transaction whose statement_timeout the server enforces; the query is sent
    prepared, so it is exactly one statement; the transaction is rolled back, never committed."""
    # Imported here: psycopg takes a tenth of a second to import, and only PostgreSQL sources
    # (not every CLI start) need it.
    import psycopg
    from psycopg import errors as pg_errors

    url, query, timeout = source.url, source.query, source.timeout
    try:
        async with asyncio.timeout(timeout):
            try:
                connection = await psycopg.AsyncConnection.connect(
                    url, connect_timeout=max(_POSTGRES_CONNECT_MIN, round(timeout))
                )
            except psycopg.Error as exc:
                raise _Unreadable(f"cannot connect: {_one_line(exc)}") from exc
            async with connection:
                await connection.set_read_only(True)
                async with connection.cursor() as cursor:
                    await cursor.execute(
                        "SELECT set_config('statement_timeout', %s, true)",
                        (f"{max(1, round(timeout * 1000))}ms",),
                    )
                    await cursor.execute(query, prepare=True)
                    if cursor.description is None:
                        raise _Unreadable("the query returns no columns: give it one SELECT")
                    columns = tuple(d.name for d in cursor.description)
                    rows = await cursor.fetchall()
                await connection.rollback()
            return _Rows(columns, rows)
    except TimeoutError as exc:
        raise _Unreadable(_timed_out(timeout)) from exc
    except pg_errors.QueryCanceled as exc:
        raise _Unreadable(_timed_out(timeout)) from exc
    except pg_errors.ReadOnlySqlTransaction as exc:
        raise _Unreadable(f"{_WRITES} ({_one_line(exc)})") from exc
    except psycopg.Error as exc:
        if exc.sqlstate == "42601" and "multiple commands" in str(exc):
            raise _Unreadable("the query must be one statement (no ; between two)") from exc
        raise _Unreadable(f"the query failed: {_one_line(exc)}") from exc


def _one_line(exc: psycopg.Error) -> str:
    # The server's own message, without its context and caret lines; libpq's (connecting)
    # span lines too, a hint after a tab.
    return _SPACES.sub(" ", exc.diag.message_primary or str(exc)).strip()
