"""persons_from against real databases: a SQLite file and the test PostgreSQL. Rows become the
same persons as inline ones, every problem names the file, source, row and id, writes are refused
and change nothing, slow queries are cancelled, and the URL's password is never printed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

import pytest

from reconciler.core.persons import PersonType
from reconciler.core.records import Hasher
from reconciler.core.redaction import url_shown
from reconciler.errors import DesiredError
from reconciler.sources import sql, yamlfile
from reconciler.sources.yamlfile import Loaded, PersonsSource, load
from tests.conftest import JPEG, POSTGRES_PASSWORD, Postgres

HASHER = Hasher(b"test-key")
#: Every wait in this file ends: a condition that never comes true fails the test by then.
DEADLINE = 15.0
EMPLOYEES = (
    "CREATE TABLE employees (emp_no INTEGER, full_name TEXT, mail TEXT, active INTEGER)",
    "INSERT INTO employees VALUES (1001, 'Ann', 'ann@example.com', 1), (1002, 'Bob', NULL, 1),"
    " (1003, 'Cy', 'cy@example.com', 0)",
)
ACTIVE = (
    "SELECT emp_no AS id, full_name AS name, mail AS email FROM employees WHERE active = 1"
    " ORDER BY emp_no"
)


class Engine(Protocol):
    #: The URL as the desired file gets it (through ${HR_DATABASE_URL}).
    url: str
    #: How problems name the source.
    shown: str

    def execute(self, *statements: str) -> list[tuple[object, ...]]: ...


class Sqlite:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path.name}"
        self.shown = self.url

    def execute(self, *statements: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.path) as connection:
            rows: list[tuple[object, ...]] = []
            for statement in statements:
                rows = connection.execute(statement).fetchall()
        connection.close()
        return rows


class Pg:
    def __init__(self, postgres: Postgres) -> None:
        self.postgres = postgres
        self.url = postgres.url
        # The URL as every message shows it (test_urls_are_shown_without_password).
        self.shown = url_shown(postgres.url)

    def execute(self, *statements: str) -> list[tuple[object, ...]]:
        return self.postgres.execute(*statements)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sources are reported as the user wrote them: relative paths keep the expectations short.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return Sqlite(tmp_path / "hr.db")
    return Pg(request.getfixturevalue("postgres"))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Sqlite:
    return Sqlite(tmp_path / "hr.db")


@pytest.fixture
def pg(postgres: Postgres) -> Pg:
    return Pg(postgres)


def desired(query: str, *, before: str = "", timeout: str = "", name: str = "desired.yaml") -> Path:
    """A desired file whose persons_from entry starts at line 3 (after `before`'s lines)."""
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "version: 1\n" + textwrap.dedent(before)
    text += f"persons_from:\n  - sql: ${{HR_DATABASE_URL}}\n    query: {json.dumps(query)}\n"
    if timeout:
        text += f"    timeout: {timeout}\n"
    path.write_text(text, encoding="utf-8")
    return path


def load_with(path: Path, url: str, **env: str) -> Loaded:
    return load(path, env={"HR_DATABASE_URL": url, **env}, hasher=HASHER)


async def read(path: Path, url: str) -> Loaded:
    return await sql.Reader().read(load_with(path, url), HASHER)


async def problems(path: Path, url: str) -> list[str]:
    with pytest.raises(DesiredError) as info:
        await read(path, url)
    return [str(p) for p in info.value.problems]


# Rows into persons --------------------------------------------------------------------------------


async def test_rows_become_the_same_persons_as_inline_ones(engine: Engine) -> None:
    engine.execute(*EMPLOYEES)
    path = desired(ACTIVE, before='persons:\n  - {id: "9", name: Inline}\n')
    loaded = await read(path, engine.url)
    assert loaded.complete
    persons = loaded.desired.persons
    assert list(persons) == ["1001", "1002", "9"]
    assert (persons["1001"].name, persons["1001"].email) == ("Ann", "ann@example.com")
    assert persons["1002"].email == ""  # NULL: the field is absent
    # The same persons declared inline make the same desired state.
    Path("inline.yaml").write_text(
        "version: 1\npersons:\n"
        '  - {id: "1001", name: Ann, email: ann@example.com}\n'
        '  - {id: "1002", name: Bob}\n'
        '  - {id: "9", name: Inline}\n'
    )
    assert load(Path("inline.yaml"), env={}, hasher=HASHER).desired == loaded.desired


async def test_every_person_field_is_a_column(sqlite_db: Sqlite) -> None:
    values = {
        "id": "'1001'",
        "name": "'Ann'",
        "type": "'visitor'",
        "job_number": "'J1'",
        "email": "'ann@example.com'",
        "phone": "'13800138000'",
        "department": "''",
        "groups": "'hq'",
        "card": "'1234'",
        "id_number": "'110101199001011234'",
        "pin": "'0000'",
        "admin": "1",
        "remark": "'r'",
        "valid_from": "'2026-11-01T09:00:00+08:00'",
        "valid_until": "'2026-11-30T18:00:00+08:00'",
        "photo": "NULL",
        "labels": '\'{"b": "A"}\'',
        "protected": "1",
    }
    assert set(values) == set(sql.COLUMNS)
    query = "SELECT " + ", ".join(f"{v} AS {k}" for k, v in values.items())
    sqlite_db.execute("CREATE TABLE unused (x)")
    ann = (await read(desired(query), sqlite_db.url)).desired.persons["1001"]
    assert (ann.type, ann.job_number, ann.card, ann.id_number, ann.pin, ann.remark) == (
        PersonType.VISITOR,
        "J1",
        "1234",
        "110101199001011234",
        "0000",
        "r",
    )
    assert (ann.admin, ann.protected, ann.groups, ann.labels) == (True, True, ("hq",), {"b": "A"})


async def test_zero_rows_are_a_valid_source(engine: Engine) -> None:
    engine.execute(EMPLOYEES[0])
    loaded = await read(desired(ACTIVE), engine.url)
    assert loaded.complete
    assert dict(loaded.desired.persons) == {}
    assert loaded.desired.digest  # an empty desired state, ready to plan (and guard)


async def test_a_second_read_sees_the_database_as_it_is_now(engine: Engine) -> None:
    engine.execute(*EMPLOYEES)
    path = desired(ACTIVE, before='persons:\n  - {id: "9", name: Inline}\n')
    reader = sql.Reader()
    first = await reader.read(load_with(path, engine.url), HASHER)
    engine.execute(
        "UPDATE employees SET active = 0 WHERE emp_no = 1001",
        "INSERT INTO employees VALUES (1004, 'Dee', NULL, 1)",
    )
    second = await reader.read(first, HASHER)  # no duplicate of what the first read merged
    assert list(second.desired.persons) == ["1002", "1004", "9"]
    assert second.desired.digest != first.desired.digest


async def test_types_postgresql(pg: Pg) -> None:
    pg.execute(
        "CREATE TYPE person_kind AS ENUM ('staff', 'visitor')",
        """CREATE TABLE hr (
            emp_no bigint, full_name varchar(40), kind person_kind, teams text[], tags jsonb,
            team_json json, starts timestamptz, ends timestamptz, boss boolean, mobile numeric(11),
            badge uuid, keep boolean)""",
        """INSERT INTO hr VALUES (
            1001, 'Ann', 'visitor', ARRAY['hq', 'lab'], '{"building": "A"}', NULL,
            '2026-11-01 09:00:00+08', '2026-11-30 18:00:00+08', true, 13800138000,
            '6b4e0421-acd1-4783-a01e-aff660c80a7f', NULL),
            (1002, 'Bob', NULL, NULL, NULL, '["ops", "a,b"]', NULL, NULL, false, NULL, NULL,
            true)""",
    )
    query = (
        "SELECT emp_no AS id, full_name AS name, kind AS type, teams AS groups, tags AS labels,"
        " starts AS valid_from, ends AS valid_until, boss AS admin, mobile AS phone, badge AS card,"
        " keep AS protected FROM hr"
    )
    persons = (await read(desired(query), pg.url)).desired.persons
    ann, bob = persons["1001"], persons["1002"]
    assert ann.type is PersonType.VISITOR
    assert ann.groups == ("hq", "lab")
    assert ann.labels == {"building": "A"}
    eight = timezone(timedelta(hours=8))
    assert ann.valid_from == datetime(2026, 11, 1, 9, tzinfo=eight)
    assert ann.valid_until == datetime(2026, 11, 30, 18, tzinfo=eight)
    assert (ann.admin, ann.phone, ann.card, ann.protected) == (
        True,
        "13800138000",
        "6b4e0421-acd1-4783-a01e-aff660c80a7f",
        False,
    )
    assert (bob.type, bob.groups, bob.admin, bob.protected) == (PersonType.STAFF, (), False, True)
    # A json array column is groups too.
    query = (
        "SELECT emp_no AS id, full_name AS name, team_json AS groups FROM hr WHERE emp_no = 1002"
    )
    assert (await read(desired(query), pg.url)).desired.persons["1002"].groups == ("ops", "a,b")


async def test_types_sqlite(sqlite_db: Sqlite) -> None:
    sqlite_db.execute(
        "CREATE TABLE hr (emp_no INTEGER, full_name TEXT, teams TEXT, tags TEXT, starts TEXT,"
        " boss INTEGER, keep INTEGER)",
        "INSERT INTO hr VALUES (1001, 'Ann', ' hq , lab,,', '{\"building\": \"A\"}',"
        " '2026-11-01T09:00:00+08:00', 1, 0)",
        "INSERT INTO hr VALUES (1002, 'Bob', '[\"a,b\", \"ops\"]', NULL, '2026-11-01T01:00:00Z',"
        " 0, 1)",
        "INSERT INTO hr VALUES (1003, 'Cy', '', '{}', NULL, NULL, NULL)",
    )
    query = (
        "SELECT emp_no AS id, full_name AS name, teams AS groups, tags AS labels,"
        " starts AS valid_from, boss AS admin, keep AS protected FROM hr"
    )
    persons = (await read(desired(query), sqlite_db.url)).desired.persons
    ann, bob, cy = persons["1001"], persons["1002"], persons["1003"]
    assert (ann.groups, ann.labels, ann.admin, ann.protected) == (
        ("hq", "lab"),
        {"building": "A"},
        True,
        False,
    )
    assert ann.valid_from == datetime(2026, 11, 1, 9, tzinfo=timezone(timedelta(hours=8)))
    assert (bob.groups, bob.labels, bob.admin, bob.protected) == (("a,b", "ops"), {}, False, True)
    assert bob.valid_from == datetime(2026, 11, 1, 1, tzinfo=UTC)
    assert (cy.groups, cy.labels, cy.valid_from) == ((), {}, None)


# Problems -----------------------------------------------------------------------------------------


async def test_bad_rows_name_the_file_source_row_and_id(sqlite_db: Sqlite) -> None:
    sqlite_db.execute(
        "CREATE TABLE hr (id, name, email, phone, pin, admin, type, valid_from, labels, groups)",
        "INSERT INTO hr VALUES ('1', 'Ann', 'ann', 13800138000.0, 7391.0, 2, 'robot', NULL, NULL,"
        " NULL)",
        "INSERT INTO hr VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, '2026-11-01T09:00:00',"
        " 'building=A', 5)",
        "INSERT INTO hr VALUES (' 3', '', NULL, NULL, NULL, 'yes', NULL, '2026-11-01', '[1]',"
        " '[\"a\"')",
        "INSERT INTO hr VALUES (NULL, 'Dee', NULL, x'00', NULL, NULL, NULL, NULL,"
        " '{\"n\": 1}', NULL)",
    )
    path = desired("SELECT * FROM hr", before="persons: []\n")
    at = "desired.yaml:4: persons_from[0] (sqlite:///hr.db) row"
    assert await problems(path, sqlite_db.url) == [
        f'{at} 1, id "1": phone must be text or a whole number, not a real number: cast it in'
        " the query",
        f'{at} 1, id "1": pin must be text or a whole number, not a real number: cast it in the'
        " query",
        f'{at} 1, id "1": admin must be a boolean, or 0 or 1, not an integer',
        f"{at} 1, id \"1\": type must be 'staff', 'visitor', 'blacklist' or 'vip'",
        f'{at} 1, id "1": email must look like name@example.com',
        f'{at} 2, id "2": labels must be a JSON object, e.g. {{"building": "A"}}',
        f'{at} 2, id "2": groups must be an array, a JSON array or comma-separated text, not an'
        " integer",
        f'{at} 2, id "2": name must not be NULL',
        f'{at} 2, id "2": valid_from has no UTC offset: add one, e.g. 2026-11-01T09:00:00+08:00',
        f'{at} 3, id " 3": admin must be a boolean, or 0 or 1, not text',
        f'{at} 3, id " 3": labels must be a JSON object of texts, not an array',
        f'{at} 3, id " 3": groups starts with [ but is not a JSON array',
        f'{at} 3, id " 3": id must not start or end with whitespace',
        f'{at} 3, id " 3": name must not be empty',
        f'{at} 3, id " 3": valid_from has no UTC offset: add one, e.g. 2026-11-01T09:00:00+08:00',
        f"{at} 4: phone must be text or a whole number, not binary data: cast it in the query",
        f"{at} 4: id must not be NULL",
        f"{at} 4: labels.n must be text",
    ]
    assert all(
        "7391" not in p and "13800138000" not in p for p in await problems(path, sqlite_db.url)
    )


async def test_a_naive_timestamp_is_refused_on_postgresql(pg: Pg) -> None:
    query = "SELECT 1 AS id, 'Ann' AS name, timestamp '2026-11-01 09:00' AS valid_from"
    assert await problems(desired(query), pg.url) == [
        f'desired.yaml:3: persons_from[0] ({pg.shown}) row 1, id "1": valid_from has no UTC'
        " offset: add one, e.g. 2026-11-01T09:00:00+08:00"
    ]


async def test_row_problems_are_capped_per_source(sqlite_db: Sqlite) -> None:
    sqlite_db.execute(
        "CREATE TABLE hr (id INTEGER, name TEXT, email TEXT)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)"
        " INSERT INTO hr SELECT i, 'p' || i, 'nope' FROM n",
    )
    found = await problems(desired("SELECT * FROM hr ORDER BY id"), sqlite_db.url)
    assert len(found) == sql.ROW_PROBLEMS_SHOWN + 1
    assert found[0].endswith('row 1, id "1": email must look like name@example.com')
    assert found[-1] == (
        "desired.yaml:3: persons_from[0] (sqlite:///hr.db): and 10 more problems in other rows"
        " (fix the ones above first)"
    )


async def test_column_problems_are_reported_once(sqlite_db: Sqlite) -> None:
    sqlite_db.execute(*EMPLOYEES)
    query = "SELECT emp_no AS id, emp_no AS id, mail AS emial, active FROM employees"
    fields = ", ".join(sql.COLUMNS)
    at = "desired.yaml:3: persons_from[0] (sqlite:///hr.db)"
    assert await problems(desired(query), sqlite_db.url) == [
        f'{at}: column "id" appears more than once',
        f'{at}: column "emial" is not a person field (did you mean email? name columns like'
        f" person fields with AS: {fields})",
        f'{at}: column "active" is not a person field (name columns like person fields with AS:'
        f" {fields})",
        f"{at}: the query returns no name column: name one with AS name",
    ]


async def test_departments_of_rows_must_be_declared(sqlite_db: Sqlite) -> None:
    sqlite_db.execute(
        "CREATE TABLE hr (id TEXT, name TEXT, department TEXT)",
        "INSERT INTO hr VALUES ('1', 'Ann', 'D01'), ('2', 'Bob', 'D99')",
    )
    path = desired("SELECT * FROM hr", before="departments:\n  - {id: D01, name: R&D}\n")
    assert await problems(path, sqlite_db.url) == [
        "desired.yaml:5: persons_from[0] (sqlite:///hr.db) row 2, id \"2\": department 'D99' is"
        " not declared under departments"
    ]


async def test_duplicate_ids_name_both_places(sqlite_db: Sqlite, pg: Pg) -> None:
    sqlite_db.execute(
        "CREATE TABLE hr (id TEXT, name TEXT)",
        "INSERT INTO hr VALUES ('1001', 'Ann'), ('2002', 'Bob'), ('2002', 'Bob again')",
    )
    pg.execute("CREATE TABLE hr (id text, name text)", "INSERT INTO hr VALUES ('2002', 'B')")
    Path("desired.yaml").write_text(
        "version: 1\n"
        "persons:\n"
        '  - {id: "1001", name: Ann}\n'
        "persons_from:\n"
        "  - {sql: sqlite:///hr.db, query: SELECT * FROM hr}\n"
        "  - {sql: '${HR_DATABASE_URL}', query: SELECT * FROM hr}\n"
    )
    first = "persons_from[0] (sqlite:///hr.db)"
    assert await problems(Path("desired.yaml"), pg.url) == [
        f'desired.yaml:5: {first} row 1, id "1001": duplicate id (also declared at desired.yaml:3)',
        f'desired.yaml:5: {first} row 3, id "2002": duplicate id (first at row 2)',
        f'desired.yaml:6: persons_from[1] ({pg.shown}) row 1, id "2002": duplicate id (also'
        f" declared at desired.yaml:5 {first} row 2)",
    ]


async def test_a_directory_resolves_paths_against_the_declaring_file(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    database = Sqlite(tmp_path / "elsewhere" / "hr.db")
    database.execute(
        "CREATE TABLE hr (id TEXT, name TEXT, photo TEXT)",
        "INSERT INTO hr VALUES ('1', 'Ann', 'photos/1.jpg'), ('9', 'Nine', NULL)",
    )
    Path("desired/photos").mkdir(parents=True)
    Path("desired/photos/1.jpg").write_bytes(JPEG + b"1")
    Path("desired/10-people.yaml").write_text('version: 1\npersons:\n  - {id: "9", name: Nine}\n')
    desired("SELECT * FROM hr", name="desired/20-hr.yaml")
    url = f"sqlite:///{database.path}"  # absolute: four slashes
    assert await problems(Path("desired"), url) == [
        f"desired/20-hr.yaml:3: persons_from[0] ({url}) row 2, id"
        ' "9": duplicate id (also declared at desired/10-people.yaml:3)'
    ]
    database.execute("DELETE FROM hr WHERE id = '9'")
    database.path.rename("desired/hr.db")
    loaded = await read(Path("desired"), "sqlite:///hr.db")  # beside 20-hr.yaml, not in cwd
    photo = loaded.desired.persons["1"].photo
    assert photo is not None
    assert photo.path == str(tmp_path / "desired" / "photos" / "1.jpg")


async def test_photos_are_hashed_again_only_when_they_change(
    sqlite_db: Sqlite, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_db.execute(
        "CREATE TABLE hr (id TEXT, name TEXT, photo TEXT)",
        "INSERT INTO hr VALUES ('1', 'Ann', 'photos/1.jpg'), ('2', 'Bob', 'photos/2.jpg')",
    )
    Path("photos").mkdir()
    Path("photos/1.jpg").write_bytes(JPEG + b"1")
    path = desired("SELECT * FROM hr")
    at = 'desired.yaml:3: persons_from[0] (sqlite:///hr.db) row 2, id "2"'
    missing = Path("photos/2.jpg").absolute()
    assert await problems(path, sqlite_db.url) == [
        f"{at}: photo photos/2.jpg does not exist ({missing})"
    ]
    Path("photos/2.jpg").write_bytes(b"GIF89a")
    assert await problems(path, sqlite_db.url) == [
        f"{at}: photo photos/2.jpg is not a JPG or PNG image ({missing})"
    ]
    Path("photos/2.jpg").write_bytes(JPEG + b"2")

    hashed: list[str] = []
    real = yamlfile.read_photo

    def counted(photo: Path) -> object:
        hashed.append(photo.name)
        return real(photo)

    monkeypatch.setattr(sql, "read_photo", counted)
    reader = sql.Reader()
    loaded = load_with(path, sqlite_db.url)
    first = await reader.read(loaded, HASHER)
    second = await reader.read(loaded, HASHER)
    assert sorted(hashed) == ["1.jpg", "2.jpg"]
    assert second.desired == first.desired
    Path("photos/2.jpg").write_bytes(JPEG + b"2, retaken")
    stamp = time.time_ns() + 10**9  # a new modification time even on coarse clocks
    os.utime("photos/2.jpg", ns=(stamp, stamp))
    third = await reader.read(loaded, HASHER)
    assert sorted(hashed) == ["1.jpg", "2.jpg", "2.jpg"]
    old, new = second.desired.persons["2"].photo, third.desired.persons["2"].photo
    assert old is not None
    assert new is not None
    assert old.digest != new.digest


async def test_every_source_problem_is_reported_at_once(sqlite_db: Sqlite) -> None:
    sqlite_db.execute("CREATE TABLE hr (id TEXT, name TEXT)", "INSERT INTO hr VALUES ('1', '')")
    Path("desired.yaml").write_text(
        "version: 1\n"
        "persons_from:\n"
        "  - {sql: sqlite:///missing.db, query: SELECT * FROM hr}\n"
        "  - {sql: sqlite:///hr.db, query: SELECT * FROM hr}\n"
    )
    assert await problems(Path("desired.yaml"), "") == [
        "desired.yaml:3: persons_from[0] (sqlite:///missing.db): cannot open missing.db: unable"
        " to open database file (does it exist, and may we read it?)",
        'desired.yaml:4: persons_from[1] (sqlite:///hr.db) row 1, id "1": name must not be empty',
    ]
    assert not Path("missing.db").exists()  # opened read-only: never created


# Read-only ----------------------------------------------------------------------------------------

WRITES = "the query tried to write; persons_from only reads: give it one SELECT"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("DELETE FROM employees", f"{WRITES} (not authorized)"),
        (
            "INSERT INTO employees (emp_no, full_name) VALUES (7, 'x')"
            " RETURNING emp_no AS id, full_name AS name",
            f"{WRITES} (not authorized)",
        ),
        (
            "UPDATE employees SET active = 0 RETURNING emp_no AS id, full_name AS name",
            f"{WRITES} (not authorized)",
        ),
        ("ATTACH DATABASE 'other.db' AS other", f"{WRITES} (not authorized)"),
        (
            "SELECT 1 AS id, 'x' AS name; DELETE FROM employees",
            "the query must be one statement: You can only execute one statement at a time.",
        ),
    ],
)
async def test_sqlite_never_writes(sqlite_db: Sqlite, query: str, expected: str) -> None:
    sqlite_db.execute(*EMPLOYEES)
    before = hashlib.sha256(sqlite_db.path.read_bytes()).hexdigest()
    assert await problems(desired(query), sqlite_db.url) == [
        f"desired.yaml:3: persons_from[0] (sqlite:///hr.db): {expected}"
    ]
    assert hashlib.sha256(sqlite_db.path.read_bytes()).hexdigest() == before
    assert sqlite_db.execute("SELECT count(*) FROM employees WHERE active = 1") == [(2,)]
    assert not Path("other.db").exists()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "DELETE FROM employees",
            f"{WRITES} (cannot execute DELETE in a read-only transaction)",
        ),
        (
            "WITH gone AS (DELETE FROM employees RETURNING *)"
            " SELECT emp_no AS id, full_name AS name FROM gone",
            f"{WRITES} (cannot execute SELECT in a read-only transaction)",
        ),
        (
            "SELECT emp_no AS id, full_name AS name FROM employees WHERE touch()",
            f"{WRITES} (cannot execute INSERT in a read-only transaction)",
        ),
        (
            "SELECT nextval('badges')::text AS id, 'x' AS name",
            f"{WRITES} (cannot execute nextval() in a read-only transaction)",
        ),
        (
            "SELECT 1 AS id, 'x' AS name; DELETE FROM employees",
            "the query must be one statement (no ; between two)",
        ),
        ("COMMIT", "the query returns no columns: give it one SELECT"),
    ],
)
async def test_postgresql_never_writes(pg: Pg, query: str, expected: str) -> None:
    pg.execute(
        *EMPLOYEES,
        "CREATE TABLE audit (at timestamptz)",
        "CREATE SEQUENCE badges",
        "CREATE FUNCTION touch() RETURNS boolean LANGUAGE sql"
        " AS $$ INSERT INTO audit VALUES (now()) RETURNING true $$",
    )
    assert await problems(desired(query), pg.url) == [
        f"desired.yaml:3: persons_from[0] ({pg.shown}): {expected}"
    ]
    assert pg.execute("SELECT count(*) FROM employees WHERE active = 1") == [(2,)]
    assert pg.execute("SELECT count(*) FROM audit") == [(0,)]
    assert pg.execute("SELECT is_called FROM badges") == [(False,)]


# Timeouts and failures ----------------------------------------------------------------------------


async def test_a_slow_sqlite_query_is_cancelled(sqlite_db: Sqlite) -> None:
    sqlite_db.execute(*EMPLOYEES)
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
        " SELECT count(*) AS id, 'x' AS name FROM n"
    )
    assert await problems(desired(endless, timeout="200ms"), sqlite_db.url) == [
        "desired.yaml:3: persons_from[0] (sqlite:///hr.db): no answer within the timeout of 0.2s:"
        " the query was cancelled (make it cheaper, or raise timeout)"
    ]


async def test_a_slow_postgresql_query_is_cancelled_on_the_server(pg: Pg) -> None:
    query = "SELECT 1 AS id, 'x' AS name FROM pg_sleep(30) AS slow_hr_marker"
    assert await problems(desired(query, timeout="500ms"), pg.url) == [
        f"desired.yaml:3: persons_from[0] ({pg.shown}): no answer within the timeout of 0.5s: the"
        " query was cancelled (make it cheaper, or raise timeout)"
    ]
    running = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE query LIKE '%slow_hr' || '_marker%' AND state = 'active'"
    )
    deadline = time.monotonic() + DEADLINE
    while pg.execute(running) != [(0,)]:
        assert time.monotonic() < deadline, "the server still runs the cancelled query"
        await asyncio.sleep(0.05)


async def test_an_unreachable_database(pg: Pg) -> None:
    url = pg.url.replace(":5432/", ":1/")
    assert await problems(desired(ACTIVE), url) == [
        f"desired.yaml:3: persons_from[0] ({url_shown(url)}): cannot"
        ' connect: connection failed: connection to server at "127.0.0.1", port 1 failed:'
        " Connection refused Is the server running on that host and accepting TCP/IP"
        " connections?"
    ]
    url = pg.url.replace("/test?", "/no_such_database_4711?")
    (found,) = await problems(desired(ACTIVE), url)
    assert 'database "no_such_database_4711" does not exist' in found


async def test_a_failing_query(engine: Engine) -> None:
    engine.execute(*EMPLOYEES)
    (found,) = await problems(desired("SELECT id, name FROM no_such_table"), engine.url)
    assert found.startswith(f"desired.yaml:3: persons_from[0] ({engine.shown}): the query failed:")
    assert "no_such_table" in found


# Secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://hr:hunter2@db/hr", "postgresql://hr:***@db/hr"),
        (
            "postgresql://hr:hun%40ter2@db:5433/hr?sslmode=require",
            "postgresql://hr:***@db:5433/hr?sslmode=require",
        ),
        (
            "postgres://db1:5432,db2:5432/hr?password=hunter2",
            "postgres://db1:5432,db2:5432/hr?password=***",
        ),
        ("postgresql://hr@db/hr", "postgresql://hr@db/hr"),
        ("postgresql:///hr?host=/run/postgresql", "postgresql:///hr?host=/run/postgresql"),
        ("sqlite:///hr.db", "sqlite:///hr.db"),
        ("sqlite:////srv/hr/hr.db", "sqlite:////srv/hr/hr.db"),
    ],
)
def test_urls_are_shown_without_password(url: str, shown: str) -> None:
    source = PersonsSource(url=url, query="", timeout=1, source="d.yaml", line=1, index=2)
    assert sql.describe(source) == f"persons_from[2] ({shown})"
    assert "hunter2" not in repr(source)
    assert "hun@ter2" not in sql.describe(source)


async def test_the_password_is_never_printed(pg: Pg) -> None:
    pg.execute(*EMPLOYEES)
    spaced = pg.url.replace(POSTGRES_PASSWORD, f"{POSTGRES_PASSWORD} x")
    in_query = pg.url.replace(f":{POSTGRES_PASSWORD}@", "@") + f"&password={POSTGRES_PASSWORD}"
    printed: list[str] = []
    for url, query in (
        (pg.url.replace(":5432/", ":1/"), ACTIVE),  # cannot connect
        (spaced, ACTIVE),  # libpq quotes the malformed part of the URL
        (in_query.replace(":5432/", ":1/"), ACTIVE),
        (pg.url, "SELECT id FROM nowhere"),
        (pg.url, "SELECT emp_no AS id, mail AS name, 'x' AS pin, 1.5 AS phone FROM employees"),
        (pg.url, "SELECT 1 AS id, 'x' AS name FROM pg_sleep(5)"),
    ):
        path = desired(query, timeout="300ms")
        printed += await problems(path, url)
    assert len(printed) == 9
    assert not [p for p in printed if POSTGRES_PASSWORD in p]
    assert "unexpected spaces" in printed[1]
    assert "***" in printed[1]
