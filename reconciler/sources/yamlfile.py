"""Loads the desired state from one YAML file, or a directory of them merged in name order.

I/O: reads the files and the photos they name. Every problem is reported at once, as a
DesiredError whose problems name file:line:column and the person id; never a partial result.
Node positions are computed (by re-composing a file) only when there is a problem to place.
With a ParsedCache, a file whose bytes were loaded before is not parsed again (see parsed.py).
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import hashlib
import os
import re
import stat
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.core.persons import (
    SENSITIVE_FIELDS,
    Department,
    Desired,
    Origin,
    Person,
    PersonType,
    Photo,
)
from reconciler.core.records import Hasher, desired_digest
from reconciler.errors import DesiredError, Problem
from reconciler.heap import collector_paused
from reconciler.sources import document as doc
from reconciler.sources.parsed import PERSON_FIELDS, Content, Key, ParsedCache, PhotoSeen

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RawTarget:
    """A target as declared: its kind, and settings its kind's adapter validates."""

    name: str
    kind: str
    #: The target's keys except kind, with ${NAME} already replaced from the environment.
    settings: Mapping[str, Any]
    #: The file that declares it, as the user wrote the path.
    source: str
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonsSource:
    """A persons_from entry as declared; sources.sql reads it (this module never does)."""

    #: With ${NAME} replaced: it may hold a password, so it is never printed as is.
    url: str = field(repr=False)
    query: str = field(repr=False)
    #: Seconds the database may take to answer.
    timeout: float
    #: The file that declares it, as the user wrote the path, and where in it.
    source: str
    line: int | None
    #: Its position in that file's persons_from list.
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """A valid desired state, the targets declared beside it, and the files it came from.

    With persons_from sources, `desired` holds only the persons declared in the files (and no
    digest) until sources.sql has read the sources and merged their persons in.
    """

    desired: Desired
    targets: Mapping[str, RawTarget]
    files: tuple[str, ...]
    persons_from: tuple[PersonsSource, ...] = ()
    #: False until the persons_from sources' persons are in `desired`: nothing may be planned
    #: from an incomplete state (it would delete every person the sources hold).
    complete: bool = True
    #: Once the sources are read: the files' own persons, to merge the next read into.
    inline: Desired | None = None
    #: The files the YAML parser read in this load; the others came from the cache.
    parsed: tuple[str, ...] = ()


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_STR_TAG = "tag:yaml.org,2002:str"
_VALUE_TAG = "tag:yaml.org,2002:value"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_DATE_LENGTH = len("2026-11-01")
_RESOLVE_CACHE = 4096
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# $${ is a literal ${; ${ not followed by NAME} is malformed (group 1 is then None).
_REFERENCE = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)\})?")
_SECTIONS = ("persons", "departments", "targets")
_KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": (*doc.Document.model_fields, "persons_from"),
    "persons": tuple(doc.Person.model_fields),
    "departments": tuple(doc.Department.model_fields),
    "persons_from": tuple(doc.PersonsFrom.model_fields),
}
_YAML11_BOOLS = frozenset({"yes", "no", "on", "off", "y", "n"})
_PERSON_TYPES = {t.value: t for t in PersonType}


class _Loader(yaml.CSafeLoader):
    """CSafeLoader with a faster constructor that also reports duplicate keys.

    PyYAML keeps the last of duplicate keys silently. Its constructor drives every mapping
    through a generator; for plain mappings, sequences and strings (nearly every node of a
    desired state) a direct walk is several times cheaper. Other nodes (numbers, !!set, ...)
    are still built by SafeConstructor. Only true/false are booleans: YAML 1.1
    also reads yes/no/on/off, which would turn `admin: yes` into true silently.
    """

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        #: (key, mark of the first occurrence, mark of the later one), per duplicate.
        self.duplicates: list[tuple[Hashable, yaml.Mark, yaml.Mark]] = []
        #: id() of every constructed dict -> the 1-based line where its mapping starts.
        self.mapping_lines: dict[int, int] = {}
        #: Target name -> the 1-based line of its key.
        self.target_lines: dict[str, int] = {}
        # Collections already built, for aliases (and recursive ones).
        self._built: dict[Node, Any] = {}
        # Plain scalars repeat (every key, most values): skip their regular expressions.
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> Any:
        # Called for every node. Without path resolvers (SafeLoader has none) only a plain
        # scalar's tag depends on its text: a quoted one is a string, collections are maps and
        # sequences, as BaseResolver.resolve would answer after a few more steps.
        if kind is not ScalarNode:
            return _MAP_TAG if kind is MappingNode else _SEQ_TAG
        if not implicit[0]:
            return _STR_TAG
        tag = self._plain_tags.get(value)
        if tag is None:
            tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
            if len(self._plain_tags) < _RESOLVE_CACHE:
                self._plain_tags[value] = tag
        return tag

    def construct_document(self, node: Node) -> Any:
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == "targets" and isinstance(value_node, MappingNode):
                    self.target_lines = {
                        str(name.value): name.start_mark.line + 1 for name, _ in value_node.value
                    }
        try:
            return self._build(node)
        finally:
            self._built = {}
            self.constructed_objects = {}
            self.recursive_objects = {}

    def _build(self, node: Node) -> Any:
        if isinstance(node, ScalarNode):
            if node.tag in (_STR_TAG, _VALUE_TAG):
                return node.value
            # Date and time with ISO 8601 syntax (valid_from): 30 times cheaper than PyYAML's
            # regular expression; its other spellings ("2001-12-14 21:59:43 -5") still go there.
            if node.tag == _TIMESTAMP_TAG and len(node.value) > _DATE_LENGTH:
                with contextlib.suppress(ValueError):
                    return datetime.fromisoformat(node.value)
            return self.construct_object(node, deep=True)
        if node in self._built:
            return self._built[node]
        if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
            data: dict[Hashable, Any] = {}
            self._built[node] = data
            self.mapping_lines[id(data)] = node.start_mark.line + 1
            merges: list[Node] = []
            for key_node, value_node in node.value:
                # Strings (nearly every key and value) inline: a call per node is a third of
                # the time of this walk.
                if key_node.__class__ is ScalarNode and key_node.tag == _STR_TAG:
                    key = key_node.value
                    if key in data:
                        self._record_duplicate(node, key, key_node)
                elif key_node.tag == _MERGE_TAG:
                    merges.append(value_node)
                    continue
                else:
                    key = self._build(key_node)
                    try:
                        present = key in data
                    except TypeError:
                        raise ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            "found unhashable key",
                            key_node.start_mark,
                        ) from None
                    if present:
                        self._record_duplicate(node, key, key_node)
                if value_node.__class__ is ScalarNode and value_node.tag == _STR_TAG:
                    data[key] = value_node.value
                else:
                    data[key] = self._build(value_node)
            for merged in merges:
                self._merge(node, data, merged)
            return data
        if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
            items: list[Any] = []
            self._built[node] = items
            for item in node.value:
                if item.__class__ is ScalarNode and item.tag == _STR_TAG:
                    items.append(item.value)
                else:
                    items.append(self._build(item))
            return items
        return self.construct_object(node, deep=True)

    def _record_duplicate(self, node: MappingNode, key: Hashable, later: Node) -> None:
        for key_node, _ in node.value:
            if key_node.tag != _MERGE_TAG and self._build(key_node) == key:
                self.duplicates.append((key, key_node.start_mark, later.start_mark))
                return

    def _merge(self, node: MappingNode, data: dict[Hashable, Any], merged: Node) -> None:
        # <<: keys written in the mapping win; among merged mappings, the first one wins.
        sources = merged.value if isinstance(merged, SequenceNode) else [merged]
        for source in sources:
            if not isinstance(source, MappingNode):
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "expected a mapping or a list of mappings for merging",
                    source.start_mark,
                )
            for key, value in self._build(source).items():
                data.setdefault(key, value)


# PyYAML's per-class registry of implicit tags: a copy, so that CSafeLoader keeps YAML 1.1.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _walk(root: Node | None, path: KeyPath, *, key: bool) -> tuple[Node | None, bool]:
    """The node at path (the key node of the last step if key), or the deepest one found."""
    node = root
    if node is None:
        return None, False
    for depth, part in enumerate(path):
        if isinstance(node, MappingNode):
            pair = _pair(node, str(part))
            if pair is None:
                return node, False
            node = pair[0] if key and depth == len(path) - 1 else pair[1]
        elif (
            isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value)
        ):
            node = node.value[part]
        else:
            return node, False
    return node, True


def _pair(node: MappingNode, name: str) -> tuple[Node, Node] | None:
    merged: list[Node] = []
    # The last duplicate is the one the constructed value came from.
    for key_node, value_node in reversed(node.value):
        if not isinstance(key_node, ScalarNode):
            continue
        if key_node.tag == _MERGE_TAG:
            merged.append(value_node)
        elif key_node.value == name:
            return key_node, value_node
    for source in reversed(merged):
        for mapping in source.value if isinstance(source, SequenceNode) else [source]:
            if isinstance(mapping, MappingNode) and (pair := _pair(mapping, name)) is not None:
                return pair
    return None


def _compose(data: bytes) -> Node | None:
    try:
        with collector_paused():
            return yaml.compose(data, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return None


def locate(
    source: str, key_path: tuple[str | int, ...], *, key: bool = False
) -> tuple[int, int] | None:
    """1-based (line, column) of the node at key_path in the file source, or None.

    key_path starts at the document root, e.g. ("targets", "lobby", "url"); with key=True the
    position is that of the last key itself (for unknown keys) rather than of its value.
    """
    try:
        data = Path(source).read_bytes()
    except OSError:
        return None
    node, exact = _walk(_compose(data), key_path, key=key)
    if node is None or not exact:
        return None
    return node.start_mark.line + 1, node.start_mark.column + 1


@dataclass(slots=True)
class _File:
    """One file, parsed or from the cache, and its node tree once a problem has needed it."""

    index: int
    source: str
    data: bytes
    mapping_lines: dict[int, int]
    target_lines: dict[str, int]
    #: The top-level mapping as parsed, with ${NAME} replaced under targets and persons_from;
    #: empty when the file came from the cache.
    raw: dict[Hashable, Any]
    #: The validated file; for a file from the cache, only its targets.
    document: doc.Document | None = None
    #: Targets with ${NAME} replaced.
    targets: Any = None
    #: What the file declares, when it has no problem of its own: what the cache keeps.
    content: Content | None = None
    key: Key | None = None
    cached: bool = False
    #: Its photos as read (or re-checked) in this load, for the cache.
    photos: dict[str, PhotoSeen] = field(default_factory=dict)
    #: The line of each persons_from entry (interpolation copies the entries).
    source_lines: list[int | None] = field(default_factory=list)
    _root: Node | None = None
    _composed: bool = False

    def node(self, path: KeyPath, *, key: bool = False) -> tuple[Node | None, bool]:
        if not self._composed:
            self._root = _compose(self.data)
            self._composed = True
        return _walk(self._root, path, key=key)

    def scalar(self, path: KeyPath) -> str | None:
        node, exact = self.node(path)
        return node.value if exact and isinstance(node, ScalarNode) else None

    def entries(self, section: str) -> list[Any]:
        value = self.raw.get(section)
        return value if isinstance(value, list) else []

    def line_of(self, entry: object) -> int | None:
        return self.mapping_lines.get(id(entry))

    def person_at(self, line: int) -> str | None:
        """The id of the person whose entry spans the 0-based line, if any."""
        if not self.entries("persons"):
            return None
        persons, exact = self.node(("persons",))
        if not exact or not isinstance(persons, SequenceNode):
            return None
        starts = [item.start_mark.line for item in persons.value]
        index = bisect.bisect_right(starts, line) - 1
        if index < 0 or line > persons.value[index].end_mark.line:
            return None
        return _person_id(self, index)


@dataclass(slots=True)
class _Report:
    """Problems found so far, each with the index of its file for ordering."""

    items: list[tuple[int, Problem]] = field(default_factory=list)

    def at(
        self,
        index: int,
        source: str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        person_id: str | None = None,
    ) -> None:
        problem = Problem(
            source=source, message=message, line=line, column=column, person_id=person_id
        )
        self.items.append((index, problem))

    def node(
        self,
        file: _File,
        path: KeyPath,
        message: str,
        *,
        key: bool = False,
        person_id: str | None = None,
    ) -> None:
        node, _ = file.node(path, key=key)
        line = column = None
        if node is not None:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
        self.at(file.index, file.source, message, line=line, column=column, person_id=person_id)

    def problems(self) -> list[Problem]:
        ordered = sorted(
            self.items, key=lambda item: (item[0], item[1].line or 0, item[1].column or 0)
        )
        return [problem for _, problem in ordered]


def load(
    path: Path, *, env: Mapping[str, str], hasher: Hasher, cache: ParsedCache | None = None
) -> Loaded:
    """Load, validate and cross-check the desired state at path (a file or a directory).

    With a cache, files whose bytes it holds are not parsed again, and the valid files parsed
    now are added to it, even when the desired state as a whole is invalid (the next load,
    after the fix, then re-parses only the fixed file). Raises DesiredError with every problem
    found.
    """
    sources = desired_files(path)
    report = _Report()
    # Everything built here survives until the end: collections would find nothing to free.
    with collector_paused():
        files = [
            file
            for index, source in enumerate(sources)
            if (file := _read(index, source, env, report, cache)) is not None
        ]
        photos = _check_persons(files, report)
        _check_departments(files, report)
        targets = _check_targets(files, report)
        if cache is not None:
            _remember(files, cache)
        if report.items:
            raise DesiredError(report.problems())
        persons = _Persons(files, photos)
        declared = tuple(
            PersonsSource(
                url=entry.sql,
                query=entry.query,
                timeout=entry.timeout,
                source=file.source,
                line=file.source_lines[index] if index < len(file.source_lines) else None,
                index=index,
            )
            for file in files
            if file.document is not None
            for index, entry in enumerate(file.document.persons_from)
        )
        departments = _parents_first(
            [
                Department(id=department_id, name=name, parent=parent)
                for file in files
                if file.content is not None
                for department_id, name, parent, _ in file.content.departments
            ]
        )
        # With persons_from, the digest is computed once the sources' persons are merged in.
        # Still paused: the digest allocates a document per person, and a collection now would
        # walk every object the load has built (1.4 s of 2 at 100 000 persons).
        digest = "" if declared else _digest(persons, departments, hasher, cache, files, photos)
        desired = Desired(persons=persons, departments=departments, digest=digest)
    return Loaded(
        desired=desired,
        targets=targets,
        files=tuple(sources),
        persons_from=declared,
        complete=not declared,
        parsed=tuple(file.source for file in files if not file.cached),
    )


def _digest(
    persons: Mapping[str, Person],
    departments: tuple[Department, ...],
    hasher: Hasher,
    cache: ParsedCache | None,
    files: list[_File],
    photos: dict[tuple[int, int], Photo],
) -> str:
    """desired_digest, or the one the cache kept for the same files, photos and key."""
    if cache is None:
        return desired_digest(persons, departments, hasher)
    inputs = [file.key.name for file in files if file.key is not None]
    inputs += [f"{at[0]}:{at[1]}:{photo.digest}" for at, photo in photos.items()]
    identity = hasher.digest(inputs)
    digest = cache.digest(identity)
    if digest is None:
        digest = desired_digest(persons, departments, hasher)
        cache.remember_digest(identity, digest)
    return digest


def _remember(files: list[_File], cache: ParsedCache) -> None:
    """Store the valid files parsed now, and those whose photos changed; drop the rest."""
    for file in files:
        content, key = file.content, file.key
        if content is None or key is None:
            continue
        if not file.cached or file.photos != content.photos:
            content.photos = file.photos
            cache.put(key, content)
    cache.retain({file.key.name for file in files if file.key is not None})


def desired_files(path: Path) -> list[str]:
    """The files a desired state at `path` is made of, in merge order."""
    if not path.is_dir():
        return [str(path)]
    # Dot-files are editor leftovers (.#desired.yaml), not part of the desired state.
    names = sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.name.endswith((".yaml", ".yml"))
        and not entry.name.startswith(".")
        and entry.is_file()
    )
    if not names:
        message = "the directory has no *.yaml or *.yml files"
        raise DesiredError([Problem(source=str(path), message=message)])
    return [str(path / name) for name in names]


def _read(
    index: int,
    source: str,
    env: Mapping[str, str],
    report: _Report,
    cache: ParsedCache | None,
) -> _File | None:
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        report.at(index, source, f"cannot be read: {exc.strerror or exc}")
        return None
    key: Key | None = None
    if cache is not None:
        key = cache.key(data)
        if (cached := cache.get(key)) is not None:
            return _from_cache(index, source, data, key, cached, env, report)
    problems = len(report.items)
    loader = _Loader(data)
    try:
        content = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        line = column = None
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
        report.at(index, source, message, line=line, column=column)
        return None
    except yaml.reader.ReaderError as exc:
        line = data.count(b"\n", 0, exc.position) + 1
        column = exc.position - (data.rfind(b"\n", 0, exc.position) + 1) + 1
        report.at(index, source, f"not UTF-8 text: {exc.reason}", line=line, column=column)
        return None
    except yaml.YAMLError as exc:
        report.at(index, source, f"invalid YAML: {exc}")
        return None
    except RecursionError:
        report.at(index, source, "invalid YAML: nested too deeply")
        return None
    finally:
        loader.dispose()
    file = _File(
        index=index,
        source=source,
        data=data,
        mapping_lines=loader.mapping_lines,
        target_lines=loader.target_lines,
        raw=dict(content) if isinstance(content, dict) else {},
    )
    for name, first, later in loader.duplicates:
        report.at(
            index,
            source,
            f"duplicate key '{name}' (first at line {first.line + 1}): YAML would keep the last",
            line=later.line + 1,
            column=later.column + 1,
            person_id=file.person_at(later.line),
        )
    if not isinstance(content, dict):
        problem = "the file is empty" if content is None else "the file is not a mapping"
        message = f"{problem}: it must be a mapping with at least version: 1"
        report.at(index, source, message, line=1, column=1)
        return None
    written = file.raw.get("targets")
    if isinstance(written, dict):
        file.raw["targets"] = _interpolated(file, written, "targets", env, report)
    file.targets = file.raw.get("targets")
    written_sources = file.raw.get("persons_from")
    if isinstance(written_sources, list):
        file.source_lines = [file.line_of(entry) for entry in written_sources]
        file.raw["persons_from"] = _interpolated(file, written_sources, "persons_from", env, report)
    try:
        file.document = doc.Document.model_validate(file.raw)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report_error(file, error, report)
    if file.document is not None and len(report.items) == problems:
        file.content = _content(
            file,
            written if isinstance(written, dict) else {},
            written_sources if isinstance(written_sources, list) else [],
        )
        file.key = key
    return file


def _from_cache(
    index: int,
    source: str,
    data: bytes,
    key: Key,
    content: Content,
    env: Mapping[str, str],
    report: _Report,
) -> _File:
    """A file the cache holds: only its targets and persons_from entries (which may hold
    ${NAME}) are interpolated and validated again."""
    file = _File(
        index=index,
        source=source,
        data=data,
        mapping_lines={},
        target_lines=content.target_lines,
        raw={},
        content=content,
        key=key,
        cached=True,
    )
    file.targets = _interpolated(file, content.targets, "targets", env, report)
    file.source_lines = content.source_lines
    sources = _interpolated(file, content.persons_from, "persons_from", env, report)
    try:
        file.document = doc.Document.model_validate(
            {"version": 1, "targets": file.targets, "persons_from": sources}
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report_error(file, error, report)
    return file


def _content(file: _File, targets: dict[Hashable, Any], sources: list[Any]) -> Content:
    """A valid parsed file's declarations, in the cache's form."""
    assert file.document is not None
    persons = [
        (
            entry.id,
            entry.name,
            entry.type,
            entry.job_number,
            entry.email,
            entry.phone,
            entry.department,
            entry.groups,
            entry.card,
            entry.id_number,
            entry.pin,
            entry.admin,
            entry.remark,
            entry.valid_from.isoformat() if entry.valid_from else None,
            entry.valid_until.isoformat() if entry.valid_until else None,
            entry.photo,
            entry.labels,
            entry.protected,
            file.line_of(raw),
        )
        for entry, raw in zip(file.document.persons, file.entries("persons"), strict=True)
    ]
    departments = [
        (entry.id, entry.name, entry.parent, file.line_of(raw))
        for entry, raw in zip(file.document.departments, file.entries("departments"), strict=True)
    ]
    return Content(
        persons=persons,
        departments=departments,
        # A valid file's target names are strings (the document says so).
        targets={str(name): value for name, value in targets.items()},
        target_lines=file.target_lines,
        persons_from=sources,
        source_lines=file.source_lines,
        photos={},
    )


def _interpolated(
    file: _File, value: Any, section: str, env: Mapping[str, str], report: _Report
) -> Any:
    """value (a file's section as written) with ${NAME} replaced; problems reported in file."""
    issues: list[tuple[KeyPath, str]] = []
    replaced = _interpolate(value, (section,), env, issues)
    for path, message in issues:
        report.node(file, path, message)
    return replaced


def _interpolate(
    value: Any, path: KeyPath, env: Mapping[str, str], issues: list[tuple[KeyPath, str]]
) -> Any:
    """value with ${NAME} replaced in every string at any depth; a copy, never in place
    (an alias may share the object with persons, which are never interpolated)."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name is None:
                issues.append(
                    (
                        path,
                        "malformed ${: write ${NAME} (letters, digits, _) or $${ for a literal ${",
                    )
                )
                return ""
            found = env.get(name)
            if found is None:
                issues.append((path, f"environment variable {name} is not set"))
                return ""
            return found

        return _REFERENCE.sub(replace, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, str(k)), env, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), env, issues) for i, v in enumerate(value)]
    return value


def _report_error(file: _File, error: ErrorDetails, report: _Report) -> None:
    """One pydantic error as a Problem, placed at the node its loc names."""
    loc: KeyPath = tuple(error["loc"])
    kind = error["type"]
    section = loc[0] if len(loc) >= 2 and loc[0] in _SECTIONS else ""
    rel = loc[2:] if section else loc
    person_id = _person_id(file, loc[1]) if section == "persons" else None
    prefix = ""
    if section == "targets":
        prefix = f"target {loc[1]}: "
    elif section == "departments":
        entry = file.entries("departments")[int(loc[1])]
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            prefix = f"department {entry['id']}: "
    # Target and persons_from values may hold interpolated secrets; pins and id numbers are
    # sensitive.
    echo = (
        section != "targets"
        and loc[0] != "persons_from"
        and not (rel and rel[0] in SENSITIVE_FIELDS)
    )

    if rel and rel[-1] == "[key]":
        _report_key_error(file, loc[:-1], section, kind, report, person_id)
        return
    label = _label(rel, section)
    position, key = loc, False
    if kind == "missing":
        message = f"missing required key '{rel[-1]}'"
        position = loc[:-1]
    elif kind == "extra_forbidden":
        owner = "persons_from" if loc[0] == "persons_from" and len(loc) == 3 else section
        message = _unknown_key(str(rel[-1]), _KNOWN_KEYS.get(owner, ()))
        key = True
    elif kind == "invalid_key":
        message = f'keys must be strings: write "{rel[-1]}" in quotes'
        key = True
    elif kind == "string_type":
        raw = file.scalar(loc) if echo else None
        message = _not_a_string(label, error["input"], raw)
    elif kind == "bool_type":
        message = f"{label} must be true or false"
        value = error["input"]
        if isinstance(value, str) and value.lower() in _YAML11_BOOLS:
            message += f" ({value} is a string here)"
    elif kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"{label} must be {expected}"
        if echo and isinstance(error["input"], str):
            message += f", not '{error['input']}'"
    elif kind == "string_too_short":
        message = f"{label} must not be empty"
    elif kind == "string_too_long":
        maximum = error.get("ctx", {}).get("max_length")
        message = f"{label} must be at most {maximum} characters"
    elif kind == "list_type":
        message = f"{label} must be a list"
    elif kind in {"dict_type", "model_type", "model_attributes_type"}:
        message = f"{label} must be a mapping"
    elif kind in doc.OWN_ERROR_TYPES:
        message = f"{label} {error['msg']}"
    else:
        message = f"{label}: {error['msg']}"
    report.node(file, position, prefix + message, key=key, person_id=person_id)


def _report_key_error(
    file: _File,
    path: KeyPath,
    section: str,
    kind: str,
    report: _Report,
    person_id: str | None,
) -> None:
    name = path[-1]
    if section == "targets" and len(path) == 2:
        if kind == "string_pattern_mismatch":
            message = (
                f"target name '{name}' must match {doc.TARGET_NAME_PATTERN[1:-1]} "
                "(lowercase letters, digits, _ and -, starting with a letter or digit)"
            )
        else:
            message = f'target name {name} must be a string: write "{name}" in quotes'
    else:
        owner = path[2:-1] if section else path[:-1]
        message = (
            f"keys of {_label(owner, section)} must be strings" if owner else "keys must be strings"
        )
    report.node(file, path, message, key=True, person_id=person_id)


def _person_id(file: _File, index: str | int) -> str | None:
    if file.content is not None:
        return str(file.content.persons[int(index)][0])
    entry = file.entries("persons")[int(index)]
    if not isinstance(entry, dict):
        return None
    value = entry.get("id")
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return file.scalar(("persons", int(index), "id")) or str(value)
    return None


def _label(rel: KeyPath, section: str) -> str:
    if not rel:
        return {"persons": "each person", "departments": "each department"}.get(
            section, "its settings"
        )
    text = ""
    for part in rel:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _unknown_key(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown key '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def _not_a_string(label: str, value: object, raw: str | None) -> str:
    if value is None:
        return f'{label} must be a string, not empty: write "" or leave the key out'
    if isinstance(value, list):
        return f"{label} must be a string, not a list"
    if isinstance(value, dict):
        return f"{label} must be a string, not a mapping"
    if raw is not None:
        return f'{label} must be a string: write "{raw}" in quotes'
    return f"{label} must be a string: write the value in quotes"


def _person_entries(file: _File) -> Iterator[tuple[int, str | None, Any, Any, int | None]]:
    """(index, id if a string, photo, department, line) of each person entry that is a mapping:
    from the raw entries of a file with problems, so that the checks across files still see
    every person whose own entry is fine."""
    if file.content is not None:
        for index, row in enumerate(file.content.persons):
            yield index, row[0], row[_PHOTO], row[_DEPARTMENT], row[_LINE]
        return
    for index, entry in enumerate(file.entries("persons")):
        if isinstance(entry, dict):
            raw_id = entry.get("id")
            person_id = raw_id if isinstance(raw_id, str) else None
            line = file.line_of(entry)
            yield index, person_id, entry.get("photo"), entry.get("department"), line


def _department_entries(file: _File) -> Iterator[tuple[int, str, Any, int | None]]:
    """(index, id, parent, line) of each department entry with a string id."""
    if file.content is not None:
        for index, (department_id, _, parent, line) in enumerate(file.content.departments):
            yield index, department_id, parent, line
        return
    for index, entry in enumerate(file.entries("departments")):
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            yield index, entry["id"], entry.get("parent"), file.line_of(entry)


_PHOTO = PERSON_FIELDS.index("photo")
_DEPARTMENT = PERSON_FIELDS.index("department")
_LINE = PERSON_FIELDS.index("line")


def _check_persons(files: list[_File], report: _Report) -> dict[tuple[int, int], Photo]:
    """Duplicate ids and photos, across every file (see _person_entries), so that they are found
    even when some other person of a file fails validation. Returns the photos by (file, entry);
    a cached file's photos are only re-read when their stat changed."""
    first: dict[str, tuple[_File, int | None]] = {}
    photos: dict[tuple[int, int], Photo] = {}
    read: dict[str, tuple[Photo | str, PhotoSeen | None]] = {}
    for file in files:
        base = os.path.abspath(os.path.dirname(file.source))
        known = file.content.photos if file.content is not None else {}
        for index, raw_id, photo, _, line in _person_entries(file):
            if raw_id is not None:
                if raw_id in first:
                    where, at_line = first[raw_id]
                    message = f"duplicate id {raw_id} (first declared at {_at(where, at_line)})"
                    report.node(file, ("persons", index, "id"), message, person_id=raw_id)
                else:
                    first[raw_id] = (file, line)
            if isinstance(photo, str) and photo:
                path = os.path.normpath(os.path.join(base, photo))
                if path not in read:
                    read[path] = _photo(path, known.get(path))
                outcome, seen = read[path]
                if seen is not None:
                    file.photos[path] = seen
                if isinstance(outcome, Photo):
                    photos[file.index, index] = outcome
                else:
                    person_id = raw_id if raw_id is not None else _person_id(file, index)
                    at = ("persons", index, "photo")
                    report.node(file, at, f"photo {photo} {outcome}", person_id=person_id)
    return photos


def _at(file: _File, line: int | None) -> str:
    return file.source if line is None else f"{file.source}:{line}"


def _photo(path: str, known: PhotoSeen | None) -> tuple[Photo | str, PhotoSeen | None]:
    """The photo at path (from what the cache last saw of it, while its stat is the same)."""
    if known is not None:
        try:
            info = os.stat(path)
        except OSError:
            info = None
        if info is not None and known.matches(info):
            photo = Photo(
                path=path, digest=known.digest, media_type=known.media_type, size=known.size
            )
            return photo, known
    return _read_photo(path)


def read_photo(path: Path) -> Photo | str:
    """The photo at path, or why it cannot be one (the rest of a sentence)."""
    return _read_photo(str(path))[0]


def _read_photo(path: str) -> tuple[Photo | str, PhotoSeen | None]:
    """The photo at path, or why it cannot be one (the rest of a sentence); and what the cache
    may remember of it."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return f"is not a regular file ({path})", None
        with open(path, "rb") as handle:
            # The stat before the read: a write during the read changes it, so the next load
            # reads the photo again.
            info = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return f"does not exist ({path})", None
    except OSError as exc:
        return f"cannot be read ({path}): {exc.strerror or exc}", None
    if data.startswith(_JPEG_MAGIC):
        media_type = "image/jpeg"
    elif data.startswith(_PNG_MAGIC):
        media_type = "image/png"
    else:
        return f"is not a JPG or PNG image ({path})", None
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    photo = Photo(path=path, digest=digest, media_type=media_type, size=len(data))
    return photo, PhotoSeen.settled(info, digest, media_type)


@dataclass(frozen=True, slots=True)
class _Declared:
    file: _File
    index: int
    parent: Any
    line: int | None


def _check_departments(files: list[_File], report: _Report) -> None:
    """Duplicate ids, unknown parents, cycles, and persons' departments, across every file."""
    declared: dict[str, _Declared] = {}
    for file in files:
        for index, department_id, parent, line in _department_entries(file):
            if department_id in declared:
                other = declared[department_id]
                message = (
                    f"duplicate department id {department_id} "
                    f"(first declared at {_at(other.file, other.line)})"
                )
                report.node(file, ("departments", index, "id"), message)
            else:
                declared[department_id] = _Declared(file, index, parent, line)
    if not declared:
        return
    for department_id, found in declared.items():
        parent = found.parent
        if isinstance(parent, str) and parent and parent not in declared:
            message = f"department {department_id}: parent '{parent}' is not a declared department"
            report.node(found.file, ("departments", found.index, "parent"), message)
    _check_cycles(declared, report)
    for file in files:
        for index, _, _, department, _ in _person_entries(file):
            if isinstance(department, str) and department and department not in declared:
                report.node(
                    file,
                    ("persons", index, "department"),
                    f"department '{department}' is not declared under departments",
                    person_id=_person_id(file, index),
                )


def _check_cycles(declared: dict[str, _Declared], report: _Report) -> None:
    order = {department_id: rank for rank, department_id in enumerate(declared)}
    done: set[str] = set()
    for start in declared:
        chain: list[str] = []
        current = start
        while current in declared and current not in done and current not in chain:
            chain.append(current)
            parent = declared[current].parent
            current = parent if isinstance(parent, str) else ""
        if current in chain:
            cycle = chain[chain.index(current) :]
            head = min(cycle, key=order.__getitem__)
            turn = cycle.index(head)
            names = [*cycle[turn:], *cycle[:turn], head]
            found = declared[head]
            message = f"department cycle: {' -> '.join(names)}"
            report.node(found.file, ("departments", found.index, "parent"), message)
        done.update(chain)


def _check_targets(files: list[_File], report: _Report) -> dict[str, RawTarget]:
    """Target names across files, and the RawTargets of the valid files."""
    first: dict[str, _File] = {}
    targets: dict[str, RawTarget] = {}
    for file in files:
        raw = file.targets
        if not isinstance(raw, dict):
            continue
        for name, settings in raw.items():
            name = str(name)
            if name in first:
                other = first[name]
                line = other.target_lines.get(name)
                where = other.source if line is None else f"{other.source}:{line}"
                message = f"duplicate target name {name} (first declared at {where})"
                report.node(file, ("targets", name), message, key=True)
                continue
            first[name] = file
            if file.document is None or not isinstance(settings, dict):
                continue
            targets[name] = RawTarget(
                name=name,
                kind=file.document.targets[name].kind,
                settings={k: v for k, v in settings.items() if k != "kind"},
                source=file.source,
                line=file.target_lines.get(name, 1),
            )
    return targets


class _Persons(Mapping[str, Person]):
    """The Persons of valid files, built on first use. A command that finds its settled plan
    (`reconciler plan` with nothing changed) never looks at them, and building 100 000 of them
    is most of a load from the parsed-desired cache."""

    __slots__ = ("_built", "_count", "_files", "_photos")

    def __init__(self, files: list[_File], photos: dict[tuple[int, int], Photo]) -> None:
        self._files = files
        self._photos = photos
        # Ids are unique across the files of a valid desired state (_check_persons).
        self._count = sum(len(file.content.persons) for file in files if file.content is not None)
        self._built: dict[str, Person] | None = None

    def _all(self) -> dict[str, Person]:
        if self._built is None:
            with collector_paused():
                self._built = _persons(self._files, self._photos)
            self._files, self._photos = [], {}  # the rows are no longer needed
        return self._built

    def __getitem__(self, person_id: str) -> Person:
        return self._all()[person_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return self._count

    def __contains__(self, person_id: object) -> bool:
        return person_id in self._all()


def _persons(files: list[_File], photos: dict[tuple[int, int], Photo]) -> dict[str, Person]:
    """The Persons of valid files: the same code for parsed and cached ones."""
    persons: dict[str, Person] = {}
    for file in files:
        assert file.content is not None
        for index, (
            person_id,
            name,
            person_type,
            job_number,
            email,
            phone,
            department,
            groups,
            card,
            id_number,
            pin,
            admin,
            remark,
            valid_from,
            valid_until,
            _,
            labels,
            protected,
            line,
        ) in enumerate(file.content.persons):
            persons[person_id] = Person(
                id=person_id,
                name=name,
                type=_PERSON_TYPES[person_type],
                job_number=job_number,
                email=email,
                phone=phone,
                department=department,
                groups=tuple(groups),
                card=card,
                id_number=id_number,
                pin=pin,
                admin=admin,
                remark=remark,
                valid_from=_datetime(valid_from),
                valid_until=_datetime(valid_until),
                photo=photos.get((file.index, index)),
                labels=labels,
                protected=protected,
                origin=Origin(source=file.source, line=line),
            )
    return dict(sorted(persons.items()))


def _datetime(value: str | None) -> datetime | None:
    # Rows keep them as ISO 8601 text (as the cache does), which fromisoformat reads back exactly.
    return datetime.fromisoformat(value) if value is not None else None


def _parents_first(departments: list[Department]) -> tuple[Department, ...]:
    """Departments with every parent before its children, otherwise in declaration order."""
    by_id = {department.id: department for department in departments}
    placed: set[str] = set()
    ordered: list[Department] = []
    for department in departments:
        chain: list[Department] = []
        current: Department | None = department
        while current is not None and current.id not in placed:
            chain.append(current)
            current = by_id.get(current.parent) if current.parent else None
        for item in reversed(chain):
            placed.add(item.id)
            ordered.append(item)
    return tuple(ordered)


def signature(path: Path, photos: Iterable[str] = ()) -> str:
    """A cheap digest of everything a load depends on: the files' names and bytes, and each
    photo's size and modification time. Equal signatures mean a reload would change nothing.

    Reads the files (a hash is far cheaper than a parse); raises DesiredError like load().
    """
    digest = hashlib.blake2b(digest_size=16)
    for name in desired_files(path):
        digest.update(name.encode() + b"\0")
        try:
            digest.update(Path(name).read_bytes())
        except OSError as exc:
            raise DesiredError(
                [Problem(source=name, message=f"cannot read: {exc.strerror}")]
            ) from exc
        digest.update(b"\0")
    for photo in sorted(photos):
        try:
            info = os.stat(photo)
            digest.update(f"{photo}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        except OSError:
            digest.update(f"{photo}\0missing\0".encode())
    return digest.hexdigest()
