"""The desired-state loader: every problem at file:line:column with its person id, the happy paths
for a file and a directory, environment interpolation, photos, strictness and locate()."""

from __future__ import annotations

import gc
import hashlib
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from reconciler.core.persons import Department, Origin, PersonType, Photo
from reconciler.core.records import Hasher, desired_digest
from reconciler.errors import DesiredError, Problem
from reconciler.sources.yamlfile import Loaded, RawTarget, load, locate

HASHER = Hasher(b"test-key")
#: We check magic bytes only: the signature, then padding.
JPG = b"\xff\xd8\xff\xe0" + b"\x00" * 28
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
GIF = b"GIF89a" + b"\x00" * 26
EXAMPLE = "e.g. 2026-11-01T09:00:00+08:00"
KINDS = "'nebula_pass', 'sophon_fog', 'sophon_sight' or 'siteserver'"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sources are reported as the user wrote them: relative paths keep the expectations short.
    monkeypatch.chdir(tmp_path)


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(DesiredError) as info:
        load(path, env=env or {}, hasher=HASHER)
    return info.value.problems


def person(*lines: str, first: str = 'id: "1001"') -> str:
    """One person Ann whose extra lines start at line 5, column 5."""
    return (
        "version: 1\npersons:\n  - "
        + first
        + "\n    name: Ann\n"
        + "".join(f"    {line}\n" for line in lines)
    )


P = "1001"
ERRORS = [
    # unknown keys, with and without a close match
    pytest.param(
        person("emial: ann@example.com"),
        (5, 5, P, "unknown key 'emial' (did you mean 'email'?)"),
        id="unknown-key",
    ),
    pytest.param(person("shoe_size: 44"), (5, 5, P, "unknown key 'shoe_size'"), id="unknown-key-2"),
    # strings are strict: YAML's numbers, dates and nulls are not silently converted
    pytest.param(
        person("phone: 13800138000"),
        (5, 12, P, 'phone must be a string: write "13800138000" in quotes'),
        id="phone-int",
    ),
    pytest.param(
        person("phone: 0123"),
        (5, 12, P, 'phone must be a string: write "0123" in quotes'),
        id="phone-octal",
    ),
    pytest.param(
        person("card: 12:30"),
        (5, 11, P, 'card must be a string: write "12:30" in quotes'),
        id="card-sexagesimal",
    ),
    pytest.param(
        person("remark: 2026-01-01"),
        (5, 13, P, 'remark must be a string: write "2026-01-01" in quotes'),
        id="remark-date",
    ),
    pytest.param(
        person("pin: 0000"),
        (5, 10, P, "pin must be a string: write the value in quotes"),
        id="pin-sensitive",
    ),
    pytest.param(
        person("id_number: 110101199001011234"),
        (5, 16, P, "id_number must be a string: write the value in quotes"),
        id="id-number-sensitive",
    ),
    pytest.param(
        person("email:"),
        (5, 11, P, 'email must be a string, not empty: write "" or leave the key out'),
        id="null",
    ),
    pytest.param(
        person("job_number: [1]"),
        (5, 17, P, "job_number must be a string, not a list"),
        id="list-for-string",
    ),
    pytest.param(
        person("admin: yes"),
        (5, 12, P, "admin must be true or false (yes is a string here)"),
        id="yaml11-bool",
    ),
    pytest.param(
        person('protected: "true"'), (5, 16, P, "protected must be true or false"), id="bool-str"
    ),
    pytest.param(
        person("type: guest"),
        (5, 11, P, "type must be 'staff', 'visitor', 'blacklist' or 'vip', not 'guest'"),
        id="type",
    ),
    pytest.param(
        person("email: nobody"), (5, 12, P, "email must look like name@example.com"), id="email"
    ),
    pytest.param(
        person("valid_from: 2026-11-01T09:00:00"),
        (5, 17, P, f"valid_from has no UTC offset: add one, {EXAMPLE}"),
        id="naive-timestamp",
    ),
    pytest.param(
        person('valid_until: "2026-11-01T09:00:00"'),
        (5, 18, P, f"valid_until has no UTC offset: add one, {EXAMPLE}"),
        id="naive-string",
    ),
    pytest.param(
        person("valid_from: 2026-11-01"),
        (5, 17, P, f"valid_from must have a time and an offset, not only a date, {EXAMPLE}"),
        id="date-only",
    ),
    pytest.param(
        person('valid_from: "next week"'),
        (5, 17, P, f"valid_from must be an ISO 8601 date and time with an offset, {EXAMPLE}"),
        id="not-a-time",
    ),
    pytest.param(
        person("valid_from: 5"),
        (5, 17, P, f"valid_from must be a date and time with an offset, {EXAMPLE}"),
        id="time-int",
    ),
    pytest.param(
        person("valid_from: 2026-11-02T09:00:00+08:00", "valid_until: 2026-11-02T01:00:00Z"),
        (6, 18, P, "valid_until must be after valid_from"),
        id="until-before-from",
    ),
    pytest.param(person("groups: hq"), (5, 13, P, "groups must be a list"), id="groups"),
    pytest.param(
        person("groups: [hq, 7]"),
        (5, 18, P, 'groups[1] must be a string: write "7" in quotes'),
        id="group-int",
    ),
    pytest.param(
        person("labels: {floor: 3}"),
        (5, 21, P, 'labels.floor must be a string: write "3" in quotes'),
        id="label-value",
    ),
    pytest.param(
        person("labels: {1: x}"), (5, 14, P, "keys of labels must be strings"), id="label-key"
    ),
    pytest.param(person("labels: [a]"), (5, 13, P, "labels must be a mapping"), id="labels"),
    pytest.param(person('photo: ""'), (5, 12, P, "photo must not be empty"), id="photo-empty"),
    pytest.param(
        person("1: x"), (5, 5, P, 'keys must be strings: write "1" in quotes'), id="int-key"
    ),
    pytest.param(
        person("name: Bob"),
        (5, 5, P, "duplicate key 'name' (first at line 4): YAML would keep the last"),
        id="duplicate-key",
    ),
    # ids
    pytest.param(
        person(first="id: 1001"),
        (3, 9, P, 'id must be a string: write "1001" in quotes'),
        id="id-unquoted",
    ),
    pytest.param(
        person(first='id: "1001 "'),
        (3, 9, "1001 ", "id must not start or end with whitespace"),
        id="id-whitespace",
    ),
    pytest.param(
        person(first='id: "10\\t01"'),
        (3, 9, "10\t01", "id must not contain control characters"),
        id="id-control",
    ),
    pytest.param(
        person(first=f'id: "{"x" * 129}"'),
        (3, 9, "x" * 129, "id must be at most 128 characters"),
        id="id-long",
    ),
    pytest.param(person(first='id: ""'), (3, 9, "", "id must not be empty"), id="id-empty"),
    pytest.param(
        "version: 1\npersons:\n  - name: Ann\n",
        (3, 5, None, "missing required key 'id'"),
        id="id-missing",
    ),
    pytest.param(
        'version: 1\npersons:\n  - id: "1001"\n',
        (3, 5, P, "missing required key 'name'"),
        id="name-missing",
    ),
    pytest.param(
        'version: 1\npersons:\n  - id: "1001"\n    name: ""\n',
        (4, 11, P, "name must not be empty"),
        id="name-empty",
    ),
    pytest.param(
        "version: 1\npersons:\n  - Ann\n",
        (3, 5, None, "each person must be a mapping"),
        id="person-scalar",
    ),
    pytest.param(
        "version: 1\npersons: {a: 1}\n", (2, 10, None, "persons must be a list"), id="persons-map"
    ),
    pytest.param(
        'version: 1\npersons:\n  - id: "1001"\n    name: Ann\n  - id: "1001"\n    name: Bob\n',
        (5, 9, P, "duplicate id 1001 (first declared at desired.yaml:3)"),
        id="duplicate-id",
    ),
    # the top level
    pytest.param(
        "persons: []\n", (1, 1, None, "missing required key 'version'"), id="version-missing"
    ),
    pytest.param("version: 2\n", (1, 10, None, "version must be 1"), id="version-2"),
    pytest.param('version: "1"\n', (1, 10, None, "version must be 1"), id="version-str"),
    pytest.param("version: true\n", (1, 10, None, "version must be 1"), id="version-bool"),
    pytest.param(
        "version: 1\nprsons: []\n",
        (2, 1, None, "unknown key 'prsons' (did you mean 'persons'?)"),
        id="top-unknown-key",
    ),
    pytest.param(
        "version: 1\npersons_from:\n  - sql: sqlite:///hr.db\n",
        (3, 5, None, "missing required key 'query'"),
        id="persons-from-without-query",
    ),
    pytest.param(
        "version: 1\npersons_from:\n  - {sql: mysql://hr:pw@db/hr, query: SELECT 1}\n",
        (
            3,
            11,
            None,
            "persons_from[0].sql must be a sqlite:///PATH or postgresql://USER@HOST/DATABASE URL",
        ),
        id="persons-from-scheme",
    ),
    pytest.param(
        "version: 1\npersons_from:\n  - {sql: 'postgresql://u:pw@[::1/hr', query: SELECT 1}\n",
        (
            3,
            11,
            None,
            "persons_from[0].sql is not a valid URL (check the brackets around an IPv6 host)",
        ),
        id="persons-from-bad-url",
    ),
    pytest.param(
        "version: 1\npersons_from:\n  - {sql: sqlite://hr.db, query: SELECT 1}\n",
        (
            3,
            11,
            None,
            "persons_from[0].sql must be sqlite:///PATH: three slashes before a relative path, "
            "four before an absolute one",
        ),
        id="persons-from-sqlite-slashes",
    ),
    pytest.param(
        "version: 1\npersons_from:\n  - {sql: sqlite:///hr.db, query: SELECT 1, timeout: 1h}\n",
        (
            3,
            54,
            None,
            "persons_from[0].timeout must be a duration above 0 and at most 10m, e.g. 30s or 500ms",
        ),
        id="persons-from-timeout",
    ),
    pytest.param(
        "version: 1\npersons_from:\n  - {sql: sqlite:///hr.db, query: SELECT 1, tiemout: 5s}\n",
        (3, 45, None, "unknown key 'tiemout' (did you mean 'timeout'?)"),
        id="persons-from-unknown-key",
    ),
    pytest.param(
        "version: 1\npersons_from: {sql: sqlite:///hr.db}\n",
        (2, 15, None, "persons_from must be a list"),
        id="persons-from-not-a-list",
    ),
    pytest.param(
        "",
        (1, 1, None, "the file is empty: it must be a mapping with at least version: 1"),
        id="empty",
    ),
    pytest.param(
        "- a\n",
        (1, 1, None, "the file is not a mapping: it must be a mapping with at least version: 1"),
        id="not-a-mapping",
    ),
    # YAML syntax, at the mark PyYAML gives
    pytest.param(
        "version: 1\npersons: [a, b\n",
        (
            3,
            1,
            None,
            "invalid YAML: did not find expected ',' or ']' "
            "(while parsing a flow sequence at line 2)",
        ),
        id="syntax",
    ),
    pytest.param(
        'version: 1\npersons:\n\t- id: "1"\n',
        (
            3,
            1,
            None,
            "invalid YAML: found character that cannot start any token "
            "(while scanning for the next token at line 3)",
        ),
        id="tab",
    ),
    pytest.param(
        "version: 1\n---\nversion: 1\n",
        (
            2,
            1,
            None,
            "invalid YAML: but found another document "
            "(expected a single document in the stream at line 1)",
        ),
        id="two-documents",
    ),
    pytest.param(
        "version: 1\nx: !foo 1\n",
        (2, 4, None, "invalid YAML: could not determine a constructor for the tag '!foo'"),
        id="unknown-tag",
    ),
    # targets (their other keys belong to the kind's adapter)
    pytest.param(
        "version: 1\ntargets:\n  Lobby:\n    kind: nebula_pass\n",
        (
            3,
            3,
            None,
            "target name 'Lobby' must match [a-z0-9][a-z0-9_-]* "
            "(lowercase letters, digits, _ and -, starting with a letter or digit)",
        ),
        id="target-name",
    ),
    pytest.param(
        "version: 1\ntargets:\n  lobby:\n    url: https://x\n",
        (4, 5, None, "target lobby: missing required key 'kind'"),
        id="target-kind-missing",
    ),
    pytest.param(
        "version: 1\ntargets:\n  lobby:\n    kind: nebulapass\n",
        (4, 11, None, f"target lobby: kind must be {KINDS}"),
        id="target-kind",
    ),
    pytest.param(
        "version: 1\ntargets: [lobby]\n", (2, 10, None, "targets must be a mapping"), id="targets"
    ),
    pytest.param(
        "version: 1\ntargets:\n  lobby: x\n",
        (3, 10, None, "target lobby: its settings must be a mapping"),
        id="target-scalar",
    ),
    pytest.param(
        "version: 1\ntargets:\n  lobby: {kind: sophon_fog}\n  lobby: {kind: sophon_fog}\n",
        (4, 3, None, "duplicate key 'lobby' (first at line 3): YAML would keep the last"),
        id="target-duplicate-key",
    ),
    pytest.param(
        "version: 1\ntargets:\n  lobby:\n    kind: nebula_pass\n    password: ${LOBBY_PASSWORD}\n",
        (5, 15, None, "environment variable LOBBY_PASSWORD is not set"),
        id="env-missing",
    ),
    pytest.param(
        'version: 1\ntargets:\n  lobby:\n    kind: nebula_pass\n    select: {groups: ["${G}"]}\n',
        (5, 23, None, "environment variable G is not set"),
        id="env-missing-nested",
    ),
    pytest.param(
        "version: 1\ntargets:\n  lobby:\n    kind: nebula_pass\n    url: ${lobby-url}\n",
        (5, 10, None, "malformed ${: write ${NAME} (letters, digits, _) or $${ for a literal ${"),
        id="env-malformed",
    ),
    # departments
    pytest.param(
        "version: 1\ndepartments:\n  - {id: HQ, name: Head}\n  - {id: HQ, name: Other}\n",
        (4, 10, None, "duplicate department id HQ (first declared at desired.yaml:3)"),
        id="department-duplicate",
    ),
    pytest.param(
        "version: 1\ndepartments:\n  - {id: D01, name: R&D, parent: XX}\n",
        (3, 34, None, "department D01: parent 'XX' is not a declared department"),
        id="department-parent",
    ),
    pytest.param(
        "version: 1\ndepartments:\n"
        "  - {id: A, name: a, parent: B}\n"
        "  - {id: B, name: b, parent: A}\n",
        (3, 30, None, "department cycle: A -> B -> A"),
        id="department-cycle",
    ),
    pytest.param(
        "version: 1\ndepartments:\n  - {id: A, name: a, parent: A}\n",
        (3, 30, None, "department cycle: A -> A"),
        id="department-self",
    ),
    pytest.param(
        "version: 1\ndepartments:\n  - {id: HQ}\n",
        (3, 5, None, "department HQ: missing required key 'name'"),
        id="department-name",
    ),
    pytest.param(
        "version: 1\ndepartments:\n  - {id: HQ, name: Head, parnet: X}\n",
        (3, 26, None, "department HQ: unknown key 'parnet' (did you mean 'parent'?)"),
        id="department-unknown-key",
    ),
    pytest.param(
        "version: 1\ndepartments:\n  - {id: HQ, name: Head}\n"
        'persons:\n  - id: "1001"\n    name: Ann\n    department: D99\n',
        (7, 17, P, "department 'D99' is not declared under departments"),
        id="person-department",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_each_problem_names_file_line_column_and_person(
    text: str, expected: tuple[int, int, str | None, str]
) -> None:
    line, column, person_id, message = expected
    problems = problems_of(write("desired.yaml", text))
    assert problems == [
        Problem(
            source="desired.yaml",
            line=line,
            column=column,
            person_id=person_id,
            message=message,
        )
    ]


def test_every_problem_is_reported_in_file_order() -> None:
    path = write(
        "desired.yaml",
        """\
        version: 1
        persons:
          - id: 1001
            name: Ann
          - id: "1002"
            name: Bob
            emial: bob@example.com
          - id: "1002"
            name: Bob
            photo: missing.jpg
        """,
    )
    problems = problems_of(path)
    assert [(p.line, p.person_id, p.message.split(" ")[0]) for p in problems] == [
        (3, "1001", "id"),
        (7, "1002", "unknown"),
        (8, "1002", "duplicate"),
        (10, "1002", "photo"),
    ]
    assert str(DesiredError(problems)).startswith("desired state is invalid (4 problems)")


def test_not_utf8() -> None:
    Path("desired.yaml").write_bytes(b'version: 1\npersons:\n  - id: "\xff"\n')
    assert problems_of(Path("desired.yaml")) == [
        Problem(
            source="desired.yaml",
            line=3,
            column=10,
            message="not UTF-8 text: invalid leading UTF-8 octet",
        )
    ]


def test_missing_path() -> None:
    assert problems_of(Path("nowhere.yaml")) == [
        Problem(source="nowhere.yaml", message="cannot be read: No such file or directory")
    ]


# The happy path ---------------------------------------------------------------------------------

ONE_FILE = """\
version: 1
targets:
  lobby-terminal:
    kind: nebula_pass
    url: https://10.0.0.21:8000
    password: ${LOBBY_PASSWORD}
    select: {types: [staff, visitor], groups: [hq]}
departments:
  - {id: D01, name: R&D, parent: HQ}
  - {id: HQ, name: Headquarters}
persons:
  - id: "1002"
    name: 李四
    type: visitor
    valid_from: 2026-11-01T09:00:00+08:00
    valid_until: "2026-11-30T18:00:00+08:00"
  - id: "1001"
    name: 张三
    job_number: "1001"
    email: zhangsan@example.com
    phone: "13800138000"
    department: D01
    groups: [hq]
    card: "1234"
    id_number: "110101199001011234"
    pin: "0000"
    admin: false
    remark: ""
    photo: photos/1001.jpg
    labels: {building: A}
    protected: true
"""


def test_one_file() -> None:
    path = write("desired.yaml", ONE_FILE)
    Path("photos").mkdir()
    Path("photos/1001.jpg").write_bytes(JPG)
    loaded = load(path, env={"LOBBY_PASSWORD": "s3cret"}, hasher=HASHER)

    assert isinstance(loaded, Loaded)
    assert loaded.files == ("desired.yaml",)
    persons = loaded.desired.persons
    assert list(persons) == ["1001", "1002"]
    ann = persons["1001"]
    assert ann.name == "张三"
    assert ann.type is PersonType.STAFF
    assert (ann.job_number, ann.email, ann.phone, ann.department) == (
        "1001",
        "zhangsan@example.com",
        "13800138000",
        "D01",
    )
    assert ann.groups == ("hq",)
    assert (ann.card, ann.id_number, ann.pin, ann.admin, ann.remark) == (
        "1234",
        "110101199001011234",
        "0000",
        False,
        "",
    )
    assert ann.labels == {"building": "A"}
    assert ann.protected is True
    assert ann.photo is not None
    assert ann.photo.media_type == "image/jpeg"
    assert ann.origin == Origin(source="desired.yaml", line=17)
    visitor = persons["1002"]
    assert visitor.type is PersonType.VISITOR
    assert visitor.valid_from == datetime(2026, 11, 1, 9, tzinfo=timezone(timedelta(hours=8)))
    assert visitor.valid_until == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert visitor.valid_until.utcoffset() == timedelta(hours=8)
    assert visitor.origin == Origin(source="desired.yaml", line=12)

    # parents first, otherwise as declared
    assert loaded.desired.departments == (
        Department(id="HQ", name="Headquarters"),
        Department(id="D01", name="R&D", parent="HQ"),
    )
    assert loaded.desired.digest == desired_digest(persons, loaded.desired.departments, HASHER)
    assert loaded.targets == {
        "lobby-terminal": RawTarget(
            name="lobby-terminal",
            kind="nebula_pass",
            settings={
                "url": "https://10.0.0.21:8000",
                "password": "s3cret",
                "select": {"types": ["staff", "visitor"], "groups": ["hq"]},
            },
            source="desired.yaml",
            line=3,
        )
    }


def test_success_path_never_composes(monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("desired.yaml", ONE_FILE)
    Path("photos").mkdir()
    Path("photos/1001.jpg").write_bytes(JPG)

    def compose(*args: object, **kwargs: object) -> None:
        raise AssertionError("composed on the success path")

    monkeypatch.setattr(yaml, "compose", compose)
    load(path, env={"LOBBY_PASSWORD": "x"}, hasher=HASHER)


def test_merge_keys_are_not_duplicates() -> None:
    path = write(
        "desired.yaml",
        """\
        version: 1
        persons:
          - &ann {id: "1001", name: Ann, groups: [hq]}
          - <<: *ann
            id: "1002"
            name: Bob
        """,
    )
    persons = load(path, env={}, hasher=HASHER).desired.persons
    assert persons["1002"].name == "Bob"
    assert persons["1002"].groups == ("hq",)


def test_gc_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    good = write("good.yaml", "version: 1\n")
    bad = write("bad.yaml", "version: 2\n")
    assert gc.isenabled()
    load(good, env={}, hasher=HASHER)
    assert gc.isenabled()
    problems_of(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        load(good, env={}, hasher=HASHER)
        assert not gc.isenabled()
    finally:
        gc.enable()


# Directories ------------------------------------------------------------------------------------


def test_directory_merges_in_name_order() -> None:
    write(
        "conf/20-people.yml",
        """\
        version: 1
        persons:
          - {id: "2001", name: Bob, department: HQ}
        """,
    )
    write(
        "conf/10-org.yaml",
        """\
        version: 1
        targets:
          fog: {kind: sophon_fog, url: "http://fog"}
        departments:
          - {id: HQ, name: Head}
        persons:
          - {id: "3001", name: Cid}
        """,
    )
    write("conf/30-more.yaml", 'version: 1\npersons:\n  - {id: "1001", name: Ann}\n')
    write("conf/notes.txt", "not yaml at all: [")
    write("conf/.#30-more.yaml", "not yaml at all: [")
    write("conf/sub/ignored.yaml", "not yaml at all: [")

    loaded = load(Path("conf"), env={}, hasher=HASHER)

    assert loaded.files == ("conf/10-org.yaml", "conf/20-people.yml", "conf/30-more.yaml")
    assert list(loaded.desired.persons) == ["1001", "2001", "3001"]
    assert loaded.desired.persons["2001"].origin == Origin(source="conf/20-people.yml", line=3)
    assert loaded.desired.departments == (Department(id="HQ", name="Head"),)
    assert loaded.targets["fog"].source == "conf/10-org.yaml"
    assert loaded.targets["fog"].line == 3


def test_digest_ignores_the_layout() -> None:
    write("one/all.yaml", 'version: 1\npersons:\n  - {id: "1", name: A}\n  - {id: "2", name: B}\n')
    write("two/a.yaml", 'version: 1\npersons:\n  - {id: "2", name: B}\n')
    write("two/b.yaml", 'version: 1\npersons:\n  - {id: "1", name: A}\n')
    one = load(Path("one"), env={}, hasher=HASHER).desired
    two = load(Path("two"), env={}, hasher=HASHER).desired
    assert one.digest == two.digest
    assert one.persons == two.persons


def test_duplicates_across_files_name_both_places() -> None:
    write(
        "conf/a.yaml",
        """\
        version: 1
        targets:
          lobby: {kind: sophon_fog}
        departments:
          - {id: HQ, name: Head}
        persons:
          - id: "1001"
            name: Ann
        """,
    )
    write(
        "conf/b.yaml",
        """\
        version: 1
        persons:
          - id: "1001"
            name: Ann again
        departments:
          - {id: HQ, name: Head}
        targets:
          lobby: {kind: sophon_fog}
        """,
    )
    assert problems_of(Path("conf")) == [
        Problem(
            source="conf/b.yaml",
            line=3,
            column=9,
            person_id="1001",
            message="duplicate id 1001 (first declared at conf/a.yaml:7)",
        ),
        Problem(
            source="conf/b.yaml",
            line=6,
            column=10,
            message="duplicate department id HQ (first declared at conf/a.yaml:5)",
        ),
        Problem(
            source="conf/b.yaml",
            line=8,
            column=3,
            message="duplicate target name lobby (first declared at conf/a.yaml:3)",
        ),
    ]


def test_problems_from_several_files() -> None:
    write("conf/a.yaml", "version: 1\npersons: [a, b\n")
    write("conf/b.yaml", "version: 2\n")
    problems = problems_of(Path("conf"))
    assert [(p.source, p.line) for p in problems] == [("conf/a.yaml", 3), ("conf/b.yaml", 1)]


def test_department_check_needs_declared_departments() -> None:
    write("conf/a.yaml", 'version: 1\npersons:\n  - {id: "1", name: A, department: D99}\n')
    assert load(Path("conf"), env={}, hasher=HASHER).desired.persons["1"].department == "D99"
    write("conf/b.yaml", "version: 1\ndepartments:\n  - {id: HQ, name: Head}\n")
    assert problems_of(Path("conf")) == [
        Problem(
            source="conf/a.yaml",
            line=3,
            column=36,
            person_id="1",
            message="department 'D99' is not declared under departments",
        )
    ]


def test_empty_directory() -> None:
    Path("conf").mkdir()
    write("conf/readme.txt", "")
    assert problems_of(Path("conf")) == [
        Problem(source="conf", message="the directory has no *.yaml or *.yml files")
    ]


# Environment ------------------------------------------------------------------------------------


def test_env_interpolation_at_any_depth_and_escape() -> None:
    path = write(
        "desired.yaml",
        """\
        version: 1
        targets:
          cms:
            kind: siteserver
            api_key: ${CMS_API_KEY}
            url: https://${HOST}:8443/$${NOT_A_VAR}/$$literal/$HOME
            nested: {list: [a, "${HOST}", {deep: "x${CMS_API_KEY}y"}], n: 3}
        persons:
          - id: "1001"
            name: Ann
            remark: ${CMS_API_KEY}
        """,
    )
    loaded = load(path, env={"CMS_API_KEY": "k3y", "HOST": "cms.local"}, hasher=HASHER)
    assert loaded.targets["cms"].settings == {
        "api_key": "k3y",
        "url": "https://cms.local:8443/${NOT_A_VAR}/$$literal/$HOME",
        "nested": {"list": ["a", "cms.local", {"deep": "xk3yy"}], "n": 3},
    }
    # never in persons
    assert loaded.desired.persons["1001"].remark == "${CMS_API_KEY}"


def test_persons_from_is_declared_with_its_place_and_interpolated() -> None:
    write(
        "hr/10-people.yaml",
        """\
        version: 1
        persons:
          - {id: "1001", name: Ann}
        """,
    )
    path = write(
        "hr/20-sources.yaml",
        """\
        version: 1
        persons_from:
          - sql: ${HR_DATABASE_URL}
            query: SELECT emp_no AS id, full_name AS name FROM employees WHERE note = '$${x}'
          - {sql: "sqlite:///hr.db", query: SELECT 1, timeout: 500ms}
          - {sql: "sqlite:////var/hr.db", query: SELECT 2, timeout: 2m}
          - {sql: "postgres://h/d", query: SELECT 3, timeout: 7}
        """,
    ).parent
    url = "postgresql://hr:hunter2@db/hr"
    loaded = load(path, env={"HR_DATABASE_URL": url}, hasher=HASHER)
    assert set(loaded.desired.persons) == {"1001"}
    assert loaded.desired.digest == ""  # only once the sources' persons are merged in
    first, *others = loaded.persons_from
    assert (first.url, first.source, first.line, first.index) == (
        url,
        "hr/20-sources.yaml",
        3,
        0,
    )
    assert first.query.endswith("WHERE note = '${x}'")
    assert first.timeout == 30.0
    assert [(s.url, s.timeout, s.line, s.index) for s in others] == [
        ("sqlite:///hr.db", 0.5, 5, 1),
        ("sqlite:////var/hr.db", 120.0, 6, 2),
        ("postgres://h/d", 7.0, 7, 3),
    ]
    assert "hunter2" not in repr(loaded.persons_from)


def test_persons_from_problems_never_echo_the_url() -> None:
    path = write(
        "desired.yaml",
        """\
        version: 1
        persons_from:
          - {sql: "${HR_URL}", query: SELECT 1}
          - {sql: 5, query: "${MISSING}"}
        """,
    )
    problems = problems_of(path, env={"HR_URL": "mysql://hr:hunter2@db/hr"})
    assert [str(p) for p in problems] == [
        "desired.yaml:3:11: persons_from[0].sql must be a sqlite:///PATH or "
        "postgresql://USER@HOST/DATABASE URL",
        "desired.yaml:4:11: persons_from[1].sql must be a string: write the value in quotes",
        "desired.yaml:4:21: environment variable MISSING is not set",
        "desired.yaml:4:21: persons_from[1].query must not be empty",
    ]


def test_an_alias_shared_with_persons_is_not_interpolated() -> None:
    path = write(
        "desired.yaml",
        """\
        version: 1
        targets:
          fog: {kind: sophon_fog, group: &g "${GROUP}"}
        persons:
          - {id: "1001", name: Ann, remark: *g}
        """,
    )
    loaded = load(path, env={"GROUP": "lobby"}, hasher=HASHER)
    assert loaded.targets["fog"].settings == {"group": "lobby"}
    assert loaded.desired.persons["1001"].remark == "${GROUP}"


def test_secrets_never_appear_in_problems() -> None:
    secrets = {"KIND": "hunter2-kind", "PASSWORD": "hunter2-password", "SCHEME": "hunter2"}
    path = write(
        "desired.yaml",
        """\
        version: 1
        targets:
          lobby:
            kind: ${KIND}
            password: ${PASSWORD}
            token: ${TOKEN}
          fog:
            kind: 5
          Bad:
            kind: ${SCHEME}
        """,
    )
    problems = problems_of(path, env=secrets)
    assert [p.message for p in problems] == [
        f"target lobby: kind must be {KINDS}",
        "environment variable TOKEN is not set",
        f"target fog: kind must be {KINDS}",
        "target name 'Bad' must match [a-z0-9][a-z0-9_-]* "
        "(lowercase letters, digits, _ and -, starting with a letter or digit)",
        f"target Bad: kind must be {KINDS}",
    ]
    text = str(DesiredError(problems))
    assert "hunter2" not in text


def test_sensitive_values_never_appear_in_problems() -> None:
    path = write("desired.yaml", person("pin: 0000", "id_number: 110101199001011234"))
    text = str(DesiredError(problems_of(path)))
    assert "0000" not in text
    assert "110101199001011234" not in text


# Photos -----------------------------------------------------------------------------------------


def test_photos_resolve_against_the_naming_file(tmp_path: Path) -> None:
    Path("conf/photos").mkdir(parents=True)
    Path("conf/photos/1001.jpg").write_bytes(JPG)
    Path("elsewhere").mkdir()
    Path("elsewhere/1002.png").write_bytes(PNG)
    absolute = tmp_path / "elsewhere" / "1002.png"
    path = write(
        "conf/desired.yaml",
        f"""\
        version: 1
        persons:
          - {{id: "1001", name: Ann, photo: photos/1001.jpg}}
          - {{id: "1002", name: Bob, photo: "{absolute}"}}
          - {{id: "1003", name: Cid, photo: ../conf/photos/1001.jpg}}
        """,
    )
    persons = load(path, env={}, hasher=HASHER).desired.persons
    assert persons["1001"].photo == Photo(
        path=str(tmp_path / "conf" / "photos" / "1001.jpg"),
        digest="sha256:" + hashlib.sha256(JPG).hexdigest(),
        media_type="image/jpeg",
        size=len(JPG),
    )
    assert persons["1002"].photo == Photo(
        path=str(absolute),
        digest="sha256:" + hashlib.sha256(PNG).hexdigest(),
        media_type="image/png",
        size=len(PNG),
    )
    assert persons["1003"].photo == persons["1001"].photo


@pytest.fixture
def bad_photos(tmp_path: Path) -> Path:
    Path("conf/photos/dir.jpg").mkdir(parents=True)
    Path("conf/photos/a.gif").write_bytes(GIF)
    Path("conf/photos/empty.jpg").write_bytes(b"")
    return tmp_path / "conf" / "photos"


@pytest.mark.parametrize(
    ("photo", "reason"),
    [
        ("photos/none.jpg", "does not exist"),
        ("photos/a.gif", "is not a JPG or PNG image"),
        ("photos/empty.jpg", "is not a JPG or PNG image"),
        ("photos/dir.jpg", "is not a regular file"),
    ],
)
def test_bad_photos(bad_photos: Path, photo: str, reason: str) -> None:
    path = write("conf/desired.yaml", person(f"photo: {photo}"))
    absolute = bad_photos.parent / photo
    assert problems_of(path) == [
        Problem(
            source="conf/desired.yaml",
            line=5,
            column=12,
            person_id="1001",
            message=f"photo {photo} {reason} ({absolute})",
        )
    ]


# locate() ---------------------------------------------------------------------------------------

LOCATE = """\
version: 1
targets:
  lobby:
    kind: nebula_pass
    url: https://10.0.0.21:8000
    select: {groups: [hq, lobby]}
  common: &common {kind: sophon_fog, group: g}
  fog:
    <<: *common
    url: http://fog
persons:
  - id: "1001"
    name: Ann
"""


@pytest.mark.parametrize(
    ("key_path", "key", "expected"),
    [
        (("targets", "lobby", "url"), False, (5, 10)),
        (("targets", "lobby", "url"), True, (5, 5)),
        (("targets", "lobby"), False, (4, 5)),
        (("targets", "lobby"), True, (3, 3)),
        (("targets", "lobby", "select", "groups", 1), False, (6, 27)),
        (("targets", "fog", "group"), False, (7, 45)),
        (("persons", 0, "name"), False, (13, 11)),
        ((), False, (1, 1)),
        (("targets", "nope"), False, None),
        (("targets", "lobby", "url", "deeper"), False, None),
        (("persons", 1), False, None),
        (("persons", "0"), False, None),
    ],
)
def test_locate(
    key_path: tuple[str | int, ...], key: bool, expected: tuple[int, int] | None
) -> None:
    write("desired.yaml", LOCATE)
    assert locate("desired.yaml", key_path, key=key) == expected


def test_locate_without_a_file_or_with_invalid_yaml() -> None:
    assert locate("nowhere.yaml", ("targets",)) is None
    write("bad.yaml", "targets: [\n")
    assert locate("bad.yaml", ("targets",)) is None
