"""The parsed-desired cache: a load re-parses only the files whose bytes changed, gives the same
result and the same problems as without the cache, never serves a stale photo, ignores any damage
to its folder, and keeps no secret, pin or id number in the state directory in clear."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import textwrap
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core import records
from reconciler.core.persons import Origin, Person, Photo
from reconciler.core.records import Hasher
from reconciler.errors import DesiredError, Problem
from reconciler.sources import document, parsed, sql, yamlfile
from reconciler.sources.parsed import PERSON_FIELDS, ParsedCache, PhotoSeen
from reconciler.sources.yamlfile import Loaded, load

HASHER = Hasher(b"test-key")
JPG = b"\xff\xd8\xff\xe0" + b"\x00" * 28
PASSWORD = "pw-Zq81-never-in-state"
PIN = "73915"
ID_NUMBER = "110101199001017391"
PERSONS = f"""\
version: 1
targets:
  lobby:
    kind: nebula_pass
    url: https://10.0.0.21:8000
    password: ${{LOBBY_PASSWORD}}
    group_map: {{hq: "G1"}}
departments:
  - {{id: HQ, name: Headquarters}}
persons:
  - id: "1001"
    name: 张三
    department: HQ
    pin: "{PIN}"
    id_number: "{ID_NUMBER}"
    email: zhangsan@example.com
    photo: photos/1001.jpg
  - id: "1002"
    name: Visitor Bob
    type: visitor
    valid_from: 2026-11-01T09:00:00+08:00
    valid_until: 2026-11-30T18:00:00.250000+05:30
    labels: {{building: A}}
"""
ENV = {"LOBBY_PASSWORD": PASSWORD}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What the YAML parser was given, in order."""
    seen: list[bytes] = []
    original = yamlfile._Loader.__init__

    def recording(loader: yamlfile._Loader, stream: bytes) -> None:
        seen.append(stream)
        original(loader, stream)

    monkeypatch.setattr(yamlfile._Loader, "__init__", recording)
    return seen


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Photos written by the test a moment ago count as settled (their hashes are kept)."""
    monkeypatch.setattr(parsed, "_SETTLED_NS", 0)


def rewrite_after_a_tick(path: Path, data: bytes) -> None:
    """Write path once the file system's clock has moved past the file's ctime: a rewrite in
    the same tick keeps the stat unchanged, which the cache's settle window is for (and which
    the `settled` fixture turns off)."""
    created = os.stat(path).st_ctime_ns
    probe = path.with_name(".tick")
    for _ in range(100_000):  # a tick is at most a few milliseconds
        probe.write_bytes(b"")
        if os.stat(probe).st_ctime_ns != created:
            break
    else:
        raise AssertionError("the file system clock did not move")
    probe.unlink()
    path.write_bytes(data)


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def cache_for(path: Path) -> ParsedCache:
    return ParsedCache(Path("state/desired-cache"), path)


def load_with(path: Path, env: dict[str, str] | None = None) -> Loaded:
    return load(path, env=ENV if env is None else env, hasher=HASHER, cache=cache_for(path))


def problems(path: Path, *, cached: bool, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(DesiredError) as info:
        load(
            path,
            env=ENV if env is None else env,
            hasher=HASHER,
            cache=cache_for(path) if cached else None,
        )
    return info.value.problems


def entries(folder: Path = Path("state/desired-cache")) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and len(p.name) == 32)


def same(one: Loaded, other: Loaded) -> None:
    assert one.desired == other.desired
    assert one.desired.digest == other.desired.digest
    # Person equality leaves origin out: compare where each was declared too.
    assert [p.origin for p in one.desired.persons.values()] == [
        p.origin for p in other.desired.persons.values()
    ]
    assert one.targets == other.targets
    assert one.files == other.files


@pytest.fixture
def one_file() -> Path:
    path = write("desired.yaml", PERSONS)
    Path("photos").mkdir()
    Path("photos/1001.jpg").write_bytes(JPG)
    return path


def test_a_second_load_parses_nothing_and_gives_the_same_result(
    one_file: Path, parses: list[bytes]
) -> None:
    plain = load(one_file, env=ENV, hasher=HASHER)
    first = load_with(one_file)
    assert first.parsed == ("desired.yaml",)
    parses.clear()

    second = load_with(one_file)

    assert parses == []
    assert second.parsed == ()
    same(second, plain)
    same(first, plain)
    visitor = second.desired.persons["1002"]
    assert visitor.valid_until == datetime(
        2026, 11, 30, 18, 0, 0, 250000, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )


def test_an_edit_reparses_only_that_file(parses: list[bytes]) -> None:
    write("conf/10-org.yaml", "version: 1\ndepartments:\n  - {id: HQ, name: Head}\n")
    write("conf/20-a.yaml", 'version: 1\npersons:\n  - {id: "1", name: A, department: HQ}\n')
    write("conf/30-b.yaml", 'version: 1\npersons:\n  - {id: "2", name: B}\n')
    load_with(Path("conf"))
    assert len(parses) == 3
    parses.clear()

    write("conf/30-b.yaml", 'version: 1\npersons:\n  - {id: "2", name: Bea}\n')
    loaded = load_with(Path("conf"))

    assert loaded.parsed == ("conf/30-b.yaml",)
    assert parses == [Path("conf/30-b.yaml").read_bytes()]
    assert loaded.desired.persons["2"].name == "Bea"
    assert loaded.desired.persons["1"].department == "HQ"
    same(loaded, load(Path("conf"), env=ENV, hasher=HASHER))
    # The old version's entry is dropped: one entry per file, bounded by the desired state.
    assert len(entries()) == 3


def test_a_removed_file_is_dropped_from_the_cache() -> None:
    write("conf/a.yaml", 'version: 1\npersons:\n  - {id: "1", name: A}\n')
    write("conf/b.yaml", 'version: 1\npersons:\n  - {id: "2", name: B}\n')
    load_with(Path("conf"))
    assert len(entries()) == 2
    Path("conf/b.yaml").unlink()
    assert list(load_with(Path("conf")).desired.persons) == ["1"]
    assert len(entries()) == 1


def test_every_path_has_its_own_entries() -> None:
    # `plan -f other.yaml` beside the daemon must not evict the daemon's entries.
    write("a.yaml", 'version: 1\npersons:\n  - {id: "1", name: A}\n')
    write("b.yaml", 'version: 1\npersons:\n  - {id: "2", name: B}\n')
    load_with(Path("a.yaml"))
    load_with(Path("b.yaml"))
    assert load_with(Path("a.yaml")).parsed == ()


def test_a_file_with_a_problem_is_never_cached() -> None:
    write("conf/a.yaml", 'version: 1\npersons:\n  - {id: "1", name: A}\n')
    write("conf/b.yaml", 'version: 1\npersons:\n  - {id: "2", name: B, shoe: 44}\n')
    problems(Path("conf"), cached=True)
    # a.yaml is cached (the fix of b.yaml then re-parses b.yaml only); b.yaml is not.
    assert len(entries()) == 1
    write("conf/b.yaml", 'version: 1\npersons:\n  - {id: "2", name: B}\n')
    assert load_with(Path("conf")).parsed == ("conf/b.yaml",)


ERRORS = {
    "duplicates across cached files": {
        "conf/a.yaml": """\
            version: 1
            targets:
              lobby: {kind: sophon_fog, url: "http://fog"}
            departments:
              - {id: HQ, name: Head}
            persons:
              - id: "1001"
                name: Ann
            """,
        "conf/b.yaml": """\
            version: 1
            persons:
              - id: "1001"
                name: Ann again
                department: D9
                photo: nowhere.jpg
            departments:
              - {id: HQ, name: Head}
              - {id: D1, name: One, parent: D2}
              - {id: D2, name: Two, parent: D1}
            targets:
              lobby: {kind: sophon_fog, url: "http://fog"}
            """,
    },
    "a per-file problem beside a cached file": {
        "conf/a.yaml": 'version: 1\npersons:\n  - {id: "1", name: A}\n',
        "conf/b.yaml": 'version: 1\npersons:\n  - {id: "1", name: A, pin: 0000}\n',
    },
}


@pytest.mark.parametrize("files", ERRORS.values(), ids=list(ERRORS))
def test_problems_are_the_same_with_and_without_the_cache(
    files: dict[str, str], parses: list[bytes]
) -> None:
    for name, text in files.items():
        write(name, text)
    expected = problems(Path("conf"), cached=False)
    assert problems(Path("conf"), cached=True) == expected
    parses.clear()
    assert problems(Path("conf"), cached=True) == expected
    # Only files with problems of their own are parsed again.
    assert len(parses) == len(files) - len(entries())


def test_a_cached_file_still_needs_its_environment(one_file: Path) -> None:
    load_with(one_file)
    expected = problems(one_file, cached=False, env={})
    assert expected == [
        Problem(
            source="desired.yaml",
            line=6,
            column=15,
            message="environment variable LOBBY_PASSWORD is not set",
        )
    ]
    assert problems(one_file, cached=True, env={}) == expected
    # The interpolated value is the one of this load, never one from the cache.
    other = load_with(one_file, env={"LOBBY_PASSWORD": "rotated"})
    assert other.parsed == ()
    assert other.targets["lobby"].settings["password"] == "rotated"


def test_nothing_secret_or_sensitive_is_kept_in_clear(one_file: Path, settled: None) -> None:
    load_with(one_file)
    load_with(one_file)
    kept = b"".join(p.read_bytes() for p in Path("state").rglob("*") if p.is_file())
    assert entries()
    for value in (PASSWORD, PIN, ID_NUMBER, "张三", "zhangsan@example.com", "photos/1001.jpg"):
        assert value.encode() not in kept
    # Only the process's user can even list them.
    for folder in [Path("state/desired-cache"), *Path("state/desired-cache").iterdir()]:
        assert folder.stat().st_mode & 0o077 == 0
    for entry in entries():
        assert entry.stat().st_mode & 0o077 == 0


def test_a_changed_photo_is_read_again(one_file: Path, settled: None) -> None:
    first = load_with(one_file).desired.persons["1001"].photo
    # Same size, and the modification time put back: only the inode / ctime can tell.
    before = os.stat("photos/1001.jpg")
    rewrite_after_a_tick(Path("photos/1001.jpg"), JPG[:-1] + b"\x01")
    os.utime("photos/1001.jpg", ns=(before.st_atime_ns, before.st_mtime_ns))

    second = load_with(one_file)

    assert second.parsed == ()
    photo = second.desired.persons["1001"].photo
    assert first is not None
    assert photo is not None
    assert photo.digest != first.digest
    assert photo == load(one_file, env=ENV, hasher=HASHER).desired.persons["1001"].photo
    assert second.desired.digest == load(one_file, env=ENV, hasher=HASHER).desired.digest


def test_a_replaced_photo_is_read_again(one_file: Path, settled: None) -> None:
    load_with(one_file)
    replacement = Path("photos/new.jpg")
    replacement.write_bytes(JPG[:-1] + b"\x02")
    replacement.replace("photos/1001.jpg")
    photo = load_with(one_file).desired.persons["1001"].photo
    assert photo is not None
    assert photo.digest == "sha256:" + hashlib.sha256(JPG[:-1] + b"\x02").hexdigest()


def test_a_missing_photo_is_a_problem_even_when_cached(one_file: Path) -> None:
    load_with(one_file)
    Path("photos/1001.jpg").unlink()
    assert problems(one_file, cached=True) == problems(one_file, cached=False)


def test_what_is_remembered_of_a_photo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(JPG)
    info = os.stat(photo)
    # Too fresh to trust: a second write in the same timestamp tick would look the same.
    assert PhotoSeen.settled(info, "sha256:x", "image/jpeg") is None
    monkeypatch.setattr(parsed, "_SETTLED_NS", 0)
    seen = PhotoSeen.settled(info, "sha256:x", "image/jpeg")
    assert seen is not None
    assert seen.matches(info)

    def changed(**values: int) -> os.stat_result:
        # The ten stat fields in order, then the nanosecond times the cache compares.
        plain = [info.st_mode, info.st_ino, info.st_dev, 1, 0, 0, info.st_size, 0, 0, 0]
        order = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size")
        for name, value in values.items():
            if name in order:
                plain[order.index(name)] = value
        times = {"st_mtime_ns": info.st_mtime_ns, "st_ctime_ns": info.st_ctime_ns}
        times.update({k: v for k, v in values.items() if k in times})
        return os.stat_result(plain, times)

    assert seen.matches(changed())
    for name, value in [
        ("st_ino", info.st_ino + 1),
        ("st_dev", info.st_dev + 1),
        ("st_size", info.st_size + 1),
        ("st_mtime_ns", info.st_mtime_ns + 1),
        ("st_ctime_ns", info.st_ctime_ns + 1),
        ("st_mode", stat.S_IFDIR | 0o755),
    ]:
        rebuilt = changed(**{name: value})
        assert not seen.matches(rebuilt), name


@pytest.fixture
def photo_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = yamlfile._read_photo

    def counting(path: str) -> Any:
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(yamlfile, "_read_photo", counting)
    return seen


def test_a_settled_photo_is_not_read_again(
    one_file: Path, settled: None, photo_reads: list[str]
) -> None:
    load_with(one_file)
    assert photo_reads == ["1001.jpg"]
    load_with(one_file)
    assert photo_reads == ["1001.jpg"]


def test_a_photo_written_a_moment_ago_is_read_every_time(
    one_file: Path, photo_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within the file system's timestamp granularity a second write could keep the same stat.
    # (Every photo counts as fresh here, however slow the machine running the test.)
    monkeypatch.setattr(parsed, "_SETTLED_NS", 10**18)
    load_with(one_file)
    load_with(one_file)
    assert photo_reads == ["1001.jpg", "1001.jpg"]


@pytest.fixture
def digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    computed: list[str] = []
    original = records.desired_digest

    def counting(*args: Any) -> str:
        computed.append(digest := original(*args))
        return digest

    monkeypatch.setattr(yamlfile, "desired_digest", counting)
    return computed


def test_the_desired_digest_is_kept_for_the_same_files_photos_and_key(
    one_file: Path, settled: None, digests: list[str]
) -> None:
    digest = load_with(one_file).desired.digest
    assert digests == [digest]
    assert load_with(one_file).desired.digest == digest
    assert len(digests) == 1
    # Another key (validate's throwaway one) computes its own, and does not evict this one.
    for key in (b"one", b"two", b"three"):
        load(one_file, env=ENV, hasher=Hasher(key), cache=cache_for(one_file))
    assert len(digests) == 4
    assert load_with(one_file).desired.digest == digest
    assert len(digests) == 4
    # A changed photo changes the digest.
    rewrite_after_a_tick(Path("photos/1001.jpg"), JPG[:-1] + b"\x03")
    changed = load_with(one_file).desired.digest
    assert changed != digest
    assert changed == records.desired_digest(
        load(one_file, env=ENV, hasher=HASHER).desired.persons,
        load(one_file, env=ENV, hasher=HASHER).desired.departments,
        HASHER,
    )


def damage(entry: Path, how: str) -> None:
    data = entry.read_bytes()
    if how == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        entry.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "foreign":
        entry.write_bytes(b'{"persons": []}')
    elif how == "directory":
        entry.unlink()
        entry.mkdir()


@pytest.mark.parametrize("how", ["truncated", "flipped", "empty", "foreign", "directory"])
def test_a_damaged_entry_is_a_miss_and_is_rewritten(one_file: Path, how: str) -> None:
    expected = load(one_file, env=ENV, hasher=HASHER)
    load_with(one_file)
    [entry] = entries()
    damage(entry, how)

    again = load_with(one_file)

    assert again.parsed == ("desired.yaml",)
    same(again, expected)
    if how != "directory":
        assert load_with(one_file).parsed == ()


def test_damaged_digests_are_recomputed(one_file: Path, digests: list[str]) -> None:
    load_with(one_file)
    [kept] = list(Path("state/desired-cache").rglob("digests"))
    kept.write_bytes(b"[[1, 2, 3]")
    assert load_with(one_file).desired.digest == digests[0]
    assert len(digests) == 2


def test_an_unusable_state_directory_is_ignored(one_file: Path) -> None:
    Path("state").write_text("not a directory")
    same(load_with(one_file), load(one_file, env=ENV, hasher=HASHER))


def test_entries_of_another_version_are_misses_and_dropped(
    one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_with(one_file)
    [old] = entries()
    monkeypatch.setattr(parsed, "_FORMAT", b"reconciler parsed desired file 0")
    assert load_with(one_file).parsed == ("desired.yaml",)
    [new] = entries()
    assert new != old


def test_unusual_target_values_are_not_cached(parses: list[bytes]) -> None:
    # JSON would turn the date into text and the int key into a string key: never cache them.
    path = write(
        "desired.yaml",
        """\
        version: 1
        targets:
          lobby: {kind: sophon_fog, url: "http://fog", since: 2026-01-01, group_map: {1: G1}}
        persons:
          - {id: "1", name: A}
        """,
    )
    first = load_with(path)
    second = load_with(path)
    assert second.parsed == ("desired.yaml",)
    assert second.targets == first.targets == load(path, env=ENV, hasher=HASHER).targets
    assert entries() == []


def test_stale_temporary_files_and_unused_paths_are_cleaned(one_file: Path) -> None:
    load_with(one_file)
    [entry] = entries()
    folder = entry.parent
    stale = folder / ".x.tmp"
    stale.write_bytes(b"half")
    fresh = folder / ".y.tmp"
    fresh.write_bytes(b"being written")
    unused = folder.parent / "0123456789abcdef"
    unused.mkdir()
    (unused / ("0" * 32)).write_bytes(b"old")
    week_ago = os.stat(stale).st_mtime - 8 * 24 * 3600
    os.utime(stale, (week_ago, week_ago))
    os.utime(unused, (week_ago, week_ago))

    load_with(one_file)

    assert not stale.exists()
    assert fresh.exists()
    assert not unused.exists()
    assert entries() == [entry]


def test_two_loaders_at_once(parses: list[bytes]) -> None:
    # The CLI while the daemon runs: each sees a whole entry or none.
    for n in range(4):
        write(f"conf/{n}.yaml", f'version: 1\npersons:\n  - {{id: "{n}", name: P{n}}}\n')
    expected = load(Path("conf"), env=ENV, hasher=HASHER)
    results: list[Loaded] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(5):
                results.append(load_with(Path("conf")))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures
    assert len(results) == 10
    for result in results:
        same(result, expected)


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Naive bounds are how hypothesis asks for aware datetimes (with timezones=) in a range.
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=offsets,
)


@st.composite
def people(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=1, max_value=4))
    result = []
    for n in range(count):
        person: dict[str, Any] = {"id": f"p{n}", "name": draw(texts.filter(bool))}
        for key in ("job_number", "email", "phone", "card", "pin", "id_number", "remark"):
            if draw(st.booleans()):
                person[key] = draw(texts) if key != "email" else "a@b.c"
        if draw(st.booleans()):
            start = draw(moments)
            person["valid_from"] = start
            person["valid_until"] = start + timedelta(seconds=draw(st.integers(1, 10**8)))
        person["groups"] = draw(st.lists(texts, max_size=3))
        person["labels"] = draw(st.dictionaries(texts, texts, max_size=2))
        person["admin"] = draw(st.booleans())
        person["protected"] = draw(st.booleans())
        result.append(person)
    return result


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(persons=people())
def test_law_a_cached_load_equals_a_parse(persons: list[dict[str, Any]], tmp_path: Path) -> None:
    folder = tmp_path / f"law-{os.urandom(4).hex()}"
    folder.mkdir()
    path = folder / "desired.yaml"
    path.write_text(
        yaml.safe_dump({"version": 1, "persons": persons}, allow_unicode=True), encoding="utf-8"
    )
    cache = ParsedCache(folder / "state", path)
    expected = load(path, env={}, hasher=HASHER)
    load(path, env={}, hasher=HASHER, cache=cache)
    cached = load(path, env={}, hasher=HASHER, cache=cache)
    assert cached.parsed == ()
    same(cached, expected)
    # Equal datetimes may differ in offset: the declared offset must survive too.
    for person in cached.desired.persons.values():
        declared = expected.desired.persons[person.id]
        assert records.person_document(person) == records.person_document(declared)


def test_persons_from_entries_are_read_from_the_environment_at_every_load() -> None:
    path = write(
        "desired.yaml",
        """\
        version: 1
        persons:
          - {id: "1", name: A}
        persons_from:
          - sql: ${HR_URL}
            query: SELECT id, name FROM people
            timeout: 30s
        """,
    )
    env = {"HR_URL": "postgresql://hr:db-pw-5521@db/hr"}
    plain = load(path, env=env, hasher=HASHER)
    load_with(path, env)
    cached = load_with(path, env)
    assert cached.parsed == ()
    assert cached.persons_from == plain.persons_from
    assert [s.line for s in cached.persons_from] == [5]
    assert not cached.complete
    assert cached.desired.digest == ""
    assert b"db-pw-5521" not in b"".join(p.read_bytes() for p in entries())
    rotated = load_with(path, {"HR_URL": "sqlite:///hr.db"})
    assert rotated.parsed == ()
    assert rotated.persons_from[0].url == "sqlite:///hr.db"
    # A value that is wrong only after interpolation is placed as without the cache.
    assert problems(path, cached=True, env={"HR_URL": "mysql://x"}) == problems(
        path, cached=False, env={"HR_URL": "mysql://x"}
    )


def test_persons_are_built_when_first_looked_at_and_read_as_a_sorted_dict() -> None:
    """A command that recalls its settled plan never needs the Person objects, so a load from
    the cache (its digest kept too) builds them on first use; until then it still knows how
    many there are."""
    write(
        "conf/20-a.yaml", 'version: 1\npersons:\n  - {id: "3", name: C}\n  - {id: "1", name: A}\n'
    )
    write("conf/30-b.yaml", 'version: 1\npersons:\n  - {id: "2", name: B}\n')
    plain = load(Path("conf"), env=ENV, hasher=HASHER)
    load_with(Path("conf"))
    persons = load_with(Path("conf")).desired.persons
    assert len(persons) == 3
    assert getattr(persons, "_built", None) is None  # nothing built by the load itself
    assert list(persons) == ["1", "2", "3"]
    assert "2" in persons
    assert "4" not in persons
    assert persons == plain.desired.persons
    assert [p.name for p in persons.values()] == ["A", "B", "C"]
    assert len(persons) == 3


def test_every_description_of_a_person_names_the_same_fields() -> None:
    """The file's model, the core's dataclass, the fingerprinted document, the cache's rows and
    the SQL reader's columns each list a person's fields their own way (for speed): a field
    added to one must reach all of them, and `to_core` must carry every one."""
    declared = tuple(document.Person.model_fields)
    core = tuple(f.name for f in dataclasses.fields(Person) if f.name != "origin")
    assert core == declared
    assert (*declared, "line") == PERSON_FIELDS
    assert declared == sql.COLUMNS
    every = document.Person(
        id="p1",
        name="Every Field",
        type="visitor",
        job_number="J1",
        email="e@example.com",
        phone="1",
        department="D1",
        groups=["g"],
        card="C1",
        id_number="X1",
        pin="1234",
        admin=True,
        remark="r",
        valid_from=datetime(2030, 1, 1, tzinfo=UTC),
        valid_until=datetime(2031, 1, 1, tzinfo=UTC),
        photo="face.jpg",
        labels={"site": "hq"},
        protected=True,
    )
    assert every.model_fields_set == set(declared)
    photo = Photo(path="/face.jpg", digest="sha256:00", media_type="image/jpeg", size=1)
    person = every.to_core(photo=photo, origin=Origin(source="desired.yaml", line=3))
    shown = records.person_document(person)
    assert tuple(shown) == declared
    blank = records.person_document(Person(id="p1", name="Every Field"))
    assert [name for name in declared if shown[name] == blank[name]] == ["id", "name"]
