"""sophon_fog: a SophonFogSys face box (SE3/SE5), the port-5555 `/SophonFogSys/api` (vendors.md §1).

Key: identity_id = our person id (echoed as info.user_id); no auth. Read: the configured group,
`GET /SophonFogSys/api/users?group_name=&skip_num=&limit=` page by page up to
`pagination.total_count` (pages after the first fetched concurrently), or up to a short page on
firmware without `pagination`. Write: one `POST` per created person (`ignore_exist: true`, an
upsert; the API has no batch create), `PUT` with the FULL `info` for field updates (an omitted
`permission_ids` resets to ["0"]), and `DELETE {"identity_ids"}` in batches of `delete_batch`.

Groups are permission groups (`info.permission_ids`, which gate the doors): by name or id after
group_map, names turned into ids from `GET /SophonFogSys/api/permissions` (the names) and
`GET /SophonFace/api/permissions?info.name=&exact=true` (a name's id), read by observe() and
looked up once per name (again after an hour). A group the box has neither as a name nor as an
id makes the person invalid there, since the box refuses unknown ids.

Choices on undocumented behaviour [I]:
- A box that answers the permission list with 40400 / 50100 is firmware without it: groups go
  out as mapped, unchecked.
- Photos are write-only (listings show `reg_photo: ""`); their hash lives in the ledger. A photo
  goes out on create and when it changed, always by re-enrolling (`POST` with `ignore_exist` and
  `support_single_face: true`), because a `PUT reg_photo` may add a face instead of replacing it:
  the person keeps exactly one face. A removed photo is a delete and a re-create without a photo
  (two calls, one change), since this API cannot drop a face otherwise; the re-created person
  loses group bindings made on the box by hand, as any delete does.
- `skip_num` is an offset (`paging: offset`, the default) or a page index (`paging: page`). A
  listing whose distinct persons fall short of `total_count` twice in a row, a page that mostly
  repeats persons already seen, or (without `pagination`) a probe at `skip_num=1` that shares no
  person with the first page, is a permanent error telling the operator to switch `paging`.
- `valid_from` / `valid_until` become `ext_info.startTime` / `endTime` as "YYYY-MM-DD HH:MM:SS",
  the wall-clock time in `timezone` when set, else in the offset written in desired.yaml; unset
  is "". `ext_info` is sent whole, so keys set by hand on the box are cleared by an update.
- 40011 (exists) despite `ignore_exist` is adopted with a `PUT` of the full info (the photo, if
  any, rides on that PUT); when the answer shows the person outside our group, the change fails
  with what to do. A batch delete answered 40401 / param error, or with anything but the
  documented `{"identity_ids": [...]}` (firmware before V5R7C01), is retried one
  `{"identity_id"}` at a time, where 40401 means already gone.
- Face errors 40003/40004/40006/40007/40009 fail only that person, not retryable: the photo must
  be replaced. 40015 (group full) and 40012/40013 (no such group) fail the change permanently.
Network I/O through targets.http.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from reconciler.core.changes import UPSERTS, Action, Change, split
from reconciler.core.persons import Person, PersonType
from reconciler.core.planning import Observed, ObservedPerson
from reconciler.core.records import Invalid, KindSpec, Record
from reconciler.errors import PermanentTargetError, TargetError, TemporaryTargetError
from reconciler.targets.base import (
    Before,
    Outcome,
    TargetSettings,
    announcing,
    announcing_each,
    bounded,
    chunks,
    pipelined,
)
from reconciler.targets.http import Backoff, HttpTarget, Response, excerpt

NAME = "sophon_fog"
USERS = "/SophonFogSys/api/users"
#: Permission groups: their names here, a name's id (a UUID) at PERMISSION_IDS.
PERMISSIONS = "/SophonFogSys/api/permissions"
PERMISSION_IDS = "/SophonFace/api/permissions"
#: The permission a person without any has ("permission_ids defaults to ["0"]").
DEFAULT_PERMISSION = "0"
CHECK_URL = "check that url is a SophonFogSys box (http://<box>:5555, firmware V2R6..V5R7)"

#: Record fields carried in `info.ext_info` (all strings), in display order.
EXT_FIELDS = ("mobile", "email", "jobNumber", "department", "idNumber", "startTime", "endTime")
FIELDS = ("name", "type", "permission_ids", *EXT_FIELDS, "reg_photo")
KIND = KindSpec(
    name=NAME,
    fields=FIELDS,
    # Listings answer reg_photo "" whatever is enrolled: photos are write-only.
    observable=frozenset(FIELDS) - {"reg_photo"},
    sensitive=frozenset({"idNumber"}),
)

#: info.type; 4 (stranger) is the box's own category, never given to a synced person.
TYPE_CODES: dict[PersonType, int] = {
    PersonType.STAFF: 1,
    PersonType.VISITOR: 2,
    PersonType.BLACKLIST: 3,
    PersonType.VIP: 5,
}
#: Undocumented limits [I], the simulator's; checked here so the plan says what is wrong.
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64
MAX_TEXT_CHARS = 128
MAX_PERMISSIONS = 100
MAX_PHOTO_BYTES = 4 * 1024 * 1024
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Face and image errors: the photo itself must change before enrolment can succeed.
PHOTO_PROBLEMS = {
    40003: "the photo is not an image the box can read",
    40004: "no face found in the photo",
    40006: "the face in the photo is of too low quality",
    40007: "the photo is too large for the box",
    40009: "the face in the photo is too small",
}
MISSING_GROUP = frozenset({40012, 40013})
GONE = frozenset({40400, 40401, 40491})
#: A batch delete answered with these is retried one id at a time (see the docstring).
ONE_AT_A_TIME = GONE | {40000, 40091}
#: A 5xxxx code means the box failed, not the request; 50100 (not implemented) is permanent.
NOT_IMPLEMENTED = 50100


class Settings(TargetSettings):
    """Settings of a sophon_fog target: the box has no credentials."""

    group: str = Field(
        "default_group",
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=r"^[^,]+$",
        description="Face-library group persons are enrolled in (and listed from)",
    )
    page_size: int = Field(100, ge=1, le=100, description="Persons per listing page (limit)")
    delete_batch: int = Field(50, ge=1, le=50, description="identity_ids per DELETE")
    paging: Literal["offset", "page"] = Field(
        "offset", description="How the box reads skip_num: an offset or a page index"
    )
    fiqa_level: Literal["high", "middle", "low", "custom", "no"] | None = Field(
        None, description="Face-quality check on enrolment; null: the box's default"
    )
    timezone: str | None = Field(
        None,
        description="IANA zone for ext_info startTime/endTime; null: the offset as written",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value


def render(
    person: Person, settings: Settings, permissions: Mapping[str, str] | None = None
) -> Record | Invalid:
    """A person as this box stores it, or why the box cannot take it. `permissions` (the box's
    permission ids by name and by id, see resolving(); None: the box does not list them) turns
    each group, after group_map, into a permission id: a group that is neither a name nor an id
    there is refused, since the box refuses ids it does not know."""

    def invalid(error: str) -> Invalid:
        return Invalid(person_id=person.id, error=f"{error} ({NAME})")

    permission_ids = set()
    for group in person.groups:
        value = settings.group_map.get(group, group)
        resolved = value if permissions is None else permissions.get(value)
        if resolved is not None:
            permission_ids.add(resolved)
        else:
            mapped = f" (mapped to {value!r})" if value != group else ""
            return invalid(
                f"group {group!r}{mapped} is no permission group on the box, by name or id: "
                "create it there, or map the group to a permission id with group_map"
            )

    if not 1 <= len(person.id) <= MAX_ID_CHARS:
        return invalid(f"id must be 1..{MAX_ID_CHARS} characters")
    if not 1 <= len(person.name) <= MAX_NAME_CHARS:
        return invalid(f"name must be 1..{MAX_NAME_CHARS} characters")
    zone = ZoneInfo(settings.timezone) if settings.timezone else None
    record: dict[str, Any] = {
        "name": person.name,
        "type": TYPE_CODES[person.type],
        "permission_ids": sorted(permission_ids),
        "mobile": person.phone,
        "email": person.email,
        "jobNumber": person.job_number,
        "department": person.department,
        "idNumber": person.id_number,
        "startTime": _wall_clock(person.valid_from, zone),
        "endTime": _wall_clock(person.valid_until, zone),
        "reg_photo": person.photo.digest if person.photo else "",
    }
    for field in EXT_FIELDS:
        if len(record[field]) > MAX_TEXT_CHARS:
            shown = "a sensitive field" if field in KIND.sensitive else field
            return invalid(f"{shown} is longer than {MAX_TEXT_CHARS} characters")
    permissions = record["permission_ids"]
    if len(permissions) > MAX_PERMISSIONS:
        return invalid(f"at most {MAX_PERMISSIONS} groups (permission_ids)")
    if any(len(p) > MAX_ID_CHARS for p in permissions):
        return invalid(f"a group (permission id) is longer than {MAX_ID_CHARS} characters")
    if person.photo is not None and person.photo.size > MAX_PHOTO_BYTES:
        return invalid(f"photo is larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MB")
    return record


def resolving(ids_by_name: Mapping[str, str]) -> dict[str, str]:
    """What render() resolves a group's value with: each permission id by its name, and by
    itself (an id wins over a name that spells it), and the default permission."""
    ids = {permission_id: permission_id for permission_id in ids_by_name.values()}
    return {**ids_by_name, **ids, DEFAULT_PERMISSION: DEFAULT_PERMISSION}


def observed_record(item: Any, target: str) -> tuple[str, Record]:
    """A listed identity in canonical form; anything malformed is an error of the target."""
    if not isinstance(item, dict) or not isinstance(item.get("identity_id"), str | int):
        raise PermanentTargetError(target, f"malformed identity in listing: {str(item)[:120]!r}")
    pid = str(item["identity_id"])
    info = item.get("info") or {}
    if not isinstance(info, dict):
        raise PermanentTargetError(target, f"malformed info of identity {pid} in listing")
    ext = info.get("ext_info") or {}
    permissions = info.get("permission_ids") or []
    kind = info.get("type")
    if (
        not isinstance(ext, dict)
        or not isinstance(permissions, list)
        or not (kind is None or _is_int(kind) or (isinstance(kind, str) and kind.isdigit()))
    ):
        raise PermanentTargetError(target, f"malformed info of identity {pid} in listing")
    record: dict[str, Any] = {
        "name": _text(info.get("name")),
        # The docs: type 1 (staff) is the default, "including when the field is absent".
        "type": 1 if kind is None else int(kind),
        "permission_ids": sorted(str(p) for p in permissions),
    }
    for field in EXT_FIELDS:
        record[field] = _text(ext.get(field))
    return pid, record


class BoxError(PermanentTargetError):
    """The box answered `{"error": {code, message, status}}`: it refused the request."""

    def __init__(self, target: str, call: str, code: int, status: str, message: str) -> None:
        self.code = code
        self.detail = f"code {code} {status}: {message}".strip()
        super().__init__(target, f"{call}: {self.detail}")


class _Foreign(PermanentTargetError):
    """An answer not in this API's shape (a web UI, another firmware's API, a proxy's page)."""

    def __init__(self, target: str, message: str, status: int) -> None:
        self.status = status
        super().__init__(target, message)


#: What a permission API call returns on firmware without that route, and for a record missing.
_NO_API, _NOT_FOUND = object(), object()
#: Codes of a route the firmware lacks: the router's NOT_FOUND and NOT_IMPLEMENTED (40401 and
#: 40491 are a record that is not there).
NO_ROUTE = frozenset({40400, 50100})


class _PersonError(Exception):
    """One person's change cannot succeed as it stands; the message says what to do."""


@dataclass(frozen=True, slots=True)
class _Page:
    persons: list[tuple[str, Record]]
    #: pagination.total_count; None on firmware that leaves pagination out.
    total: int | None


class SophonFog(HttpTarget[Settings]):
    """A SophonFogSys face box."""

    #: Seconds after which every permission group's id is looked up again (one deleted and
    #: created anew under its name has a new id).
    PERMISSIONS_FRESH = 3600.0

    def __init__(self, name: str, settings: Settings, *, backoff: Backoff | None = None) -> None:
        #: The box's permission ids by name and by id (resolving()), as last read; None: it
        #: does not list them.
        self._permissions: dict[str, str] | None = None
        #: The ids of the names looked up since the last refresh.
        self._permission_ids: dict[str, str] = {}
        self._permissions_read_at = -math.inf
        super().__init__(
            name,
            settings,
            kind=KIND,
            # Planning renders after observe(), which read the permission groups.
            render=lambda person: render(person, settings, self._permissions),
            backoff=backoff,
        )

    # -- protocol ---------------------------------------------------------------------------

    async def observe(self) -> Observed:
        permissions = await self._read_permissions()
        persons, total = await self._read_group()
        if total is not None and len(persons) < total:
            # Persons enrolled or removed while we paged shift an offset listing: read again
            # once before concluding that the pages themselves are wrong.
            persons, total = await self._read_group()
            if total is not None and len(persons) < total:
                raise self._paging_error(
                    f"reading group {self._settings.group} found {len(persons)} distinct "
                    f"persons, but the box reports total_count {total}"
                )
        return Observed(
            persons={pid: ObservedPerson(record=persons[pid]) for pid in sorted(persons)},
            context=permissions or {},
        )

    async def apply(
        self,
        changes: Sequence[Change],
        *,
        stop: asyncio.Event | None = None,
        before: Before | None = None,
    ) -> AsyncIterator[list[Outcome]]:
        upserts, deletes = split(changes, UPSERTS, {Action.DELETE})
        limit = self._settings.concurrency
        # No batch create exists: each person is one confirmed call, recorded as it lands.
        each, batched = announcing_each(before), announcing(before)
        async for outcome in pipelined(upserts, each, self._upsert, limit, stop=stop):
            yield [outcome]
        batches = list(chunks(deletes, self._settings.delete_batch))
        async for outcomes in pipelined(batches, batched, self._delete_batch, limit, stop=stop):
            yield outcomes

    # -- reading ------------------------------------------------------------------------------

    async def _read_permissions(self) -> dict[str, str] | None:
        """The box's permission group ids by name: the names listed, each name's id looked up
        once (again after PERMISSIONS_FRESH). None on firmware without the permission API:
        then groups go out as group_map makes them, unchecked."""
        listed = await self._permission_call(PERMISSIONS)
        if listed is _NO_API or listed is _NOT_FOUND:
            self._permissions = None
            return None
        entries = listed.get("permissions_list") if isinstance(listed, dict) else None
        if not isinstance(entries, list):
            raise PermanentTargetError(
                self.name, f"malformed response to GET {PERMISSIONS}: no permissions_list"
            )
        names = sorted({str(e["name"]) for e in entries if isinstance(e, dict) and e.get("name")})
        now = asyncio.get_running_loop().time()
        fresh = now < self._permissions_read_at + self.PERMISSIONS_FRESH
        # Names the box no longer lists are forgotten: one made anew has a new id.
        known = {n: i for n, i in self._permission_ids.items() if n in names} if fresh else {}

        async def look_up(name: str) -> tuple[str, object]:
            found = await self._permission_call(
                PERMISSION_IDS, {"info.name": name, "exact": "true"}, no_api=NO_ROUTE
            )
            if found is _NO_API or found is _NOT_FOUND:
                return name, found
            ids = [
                str(entry["_id"])
                for entry in (found if isinstance(found, list) else [])
                if isinstance(entry, dict)
                and entry.get("_id")
                and isinstance(entry.get("info"), dict)
                and entry["info"].get("name") == name
            ]
            return name, ids[0] if ids else None

        unknown = [name for name in names if name not in known]
        async for name, permission_id in bounded(unknown, look_up, self._settings.concurrency):
            if permission_id is _NO_API:
                self._permissions = None
                return None
            # A name without an id (yet: just made on the box) is looked up again next time.
            if isinstance(permission_id, str):
                known[name] = permission_id
        # Only now, every lookup done: a failed refresh is tried again by the next observe.
        if not fresh:
            self._permissions_read_at = now
        self._permission_ids = known
        ids_by_name = {name: known[name] for name in names if name in known}
        self._permissions = resolving(ids_by_name)
        return ids_by_name

    async def _permission_call(
        self,
        path: str,
        params: dict[str, str] | None = None,
        *,
        no_api: frozenset[int] = GONE | {NOT_IMPLEMENTED},
    ) -> Any:
        """A permission API call; _NO_API when the firmware has no such route (`no_api` codes,
        or an HTTP 404 page), _NOT_FOUND for another "not found" code (a record missing)."""
        try:
            return await self._call("GET", path, params=params)
        except BoxError as exc:
            if exc.code in no_api:
                return _NO_API
            if exc.code in GONE:
                return _NOT_FOUND
            raise
        except _Foreign as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return _NO_API
            raise

    async def _read_group(self) -> tuple[dict[str, Record], int | None]:
        """Every person listed in the group, and the total the box claims (None if it does not)."""
        size = self._settings.page_size
        first = await self._page(0)
        persons = dict(first.persons)
        if first.total is not None:
            if self._settings.paging == "offset":
                starts = range(size, first.total, size)
            else:
                starts = range(1, -(-first.total // size))
            async for page in bounded(starts, self._page, self._settings.concurrency):
                persons.update(page.persons)
            return persons, first.total

        # Older firmware has no total: read until a short page, checking the paging setting.
        if len(first.persons) < size:
            return persons, None
        if self._settings.paging == "offset" and size > 1:
            await self._probe(first)
        skip = 0
        while True:
            skip += size if self._settings.paging == "offset" else 1
            page = await self._page(skip)
            repeated = sum(1 for pid, _ in page.persons if pid in persons)
            if repeated and repeated * 2 >= len(page.persons):
                raise self._paging_error(
                    f"page skip_num={skip} of group {self._settings.group} repeats "
                    f"{repeated} of its {len(page.persons)} persons"
                )
            persons.update(page.persons)
            if len(page.persons) < size:
                return persons, None

    async def _probe(self, first: _Page) -> None:
        """With offsets, skip_num=1 overlaps the first page; as a page index it shares nobody."""
        probe = await self._page(1)
        if not {pid for pid, _ in first.persons} & {pid for pid, _ in probe.persons}:
            raise self._paging_error(
                f"skip_num=1 of group {self._settings.group} shares no person with skip_num=0"
            )

    def _paging_error(self, finding: str) -> PermanentTargetError:
        if self._settings.paging == "offset":
            advice = "the box seems to read skip_num as a page index: set `paging: page`"
        else:
            advice = "the box seems to read skip_num as an offset: set `paging: offset`"
        return PermanentTargetError(self.name, f"{finding}; {advice} on this target")

    async def _page(self, skip: int) -> _Page:
        params = {
            "group_name": self._settings.group,
            "skip_num": str(skip),
            "limit": str(self._settings.page_size),
        }
        try:
            data = await self._call("GET", USERS, params=params)
        except BoxError as exc:
            if exc.code in MISSING_GROUP:
                raise PermanentTargetError(self.name, self._missing_group(exc)) from exc
            if exc.code in GONE:
                raise PermanentTargetError(self.name, f"{exc.message}; {CHECK_URL}") from exc
            raise
        listed = data.get("identities_list") if isinstance(data, dict) else None
        if not isinstance(listed, list):
            raise PermanentTargetError(
                self.name, f"malformed listing at skip_num={skip}: no identities_list"
            )
        pagination = data.get("pagination")
        total = None
        if pagination is not None:
            total = pagination.get("total_count") if isinstance(pagination, dict) else None
            if not _is_int(total) or total < 0:
                raise PermanentTargetError(
                    self.name, f"malformed listing at skip_num={skip}: no total_count"
                )
        return _Page([observed_record(item, self.name) for item in listed], total)

    # -- writing ------------------------------------------------------------------------------

    async def _upsert(self, change: Change) -> Outcome:
        assert change.person is not None
        photo = change.person.photo
        renewed = any(f.field == "reg_photo" for f in change.fields)
        sends_photo = change.action in (Action.CREATE, Action.REPLACE) or renewed
        image: str | None = None
        if sends_photo and photo is not None:
            try:
                image = await asyncio.to_thread(_base64_of, photo.path)
            except OSError as exc:
                return Outcome(
                    change=change,
                    ok=False,
                    error=f"photo {Path(photo.path).name} could not be read: {exc.strerror}",
                )
        try:
            if change.action is Action.CREATE:
                await self._enrol(change, image)
            elif change.action is Action.REPLACE or (renewed and photo is None):
                # Nothing else drops a face: delete the person, enrol it again without one.
                await self._delete_one_id(change.person_id)
                await self._enrol(change, image)
            elif renewed:
                await self._enrol(change, image)
            else:
                await self._call("PUT", USERS, json=self._update_body(change))
        except BoxError as exc:
            return Outcome(
                change=change, ok=False, error=self._explain(change, exc), retryable=False
            )
        except _PersonError as exc:
            return Outcome(change=change, ok=False, error=str(exc), retryable=False)
        except TargetError as exc:
            retryable = not isinstance(exc, PermanentTargetError)
            return Outcome(change=change, ok=False, error=exc.message, retryable=retryable)
        return Outcome(change=change, ok=True)

    async def _enrol(self, change: Change, image: str | None) -> None:
        """POST as an upsert; with a photo, the person ends with exactly that one face."""
        body: dict[str, Any] = {
            "identity_id": change.person_id,
            "group_name": self._settings.group,
            "ignore_exist": True,
            "need_bring_pic": image is not None,
            "info": self._info(change),
        }
        if image is not None:
            body["reg_photo"] = image
            body["support_single_face"] = True
        if self._settings.fiqa_level is not None:
            body["fiqa_level"] = self._settings.fiqa_level
        try:
            await self._call("POST", USERS, json=body)
        except BoxError as exc:
            if exc.code != 40011:
                raise
            await self._adopt(change, image)

    async def _adopt(self, change: Change, image: str | None) -> None:
        """The box said "exists" despite ignore_exist: update it in place instead."""
        body = self._update_body(change)
        if image is not None:
            body["reg_photo"] = image
        data = await self._call("PUT", USERS, json=body)
        groups = data.get("group_name") if isinstance(data, dict) else None
        if isinstance(groups, str):
            groups = groups.split(",")
        group = self._settings.group
        if isinstance(groups, list) and group not in groups:
            raise _PersonError(
                f"identity {change.person_id} exists on the box outside group {group}, and the "
                f"box refuses to add it (40011 despite ignore_exist): add it to group {group} on "
                "the box, or delete it there so that it can be created"
            )

    def _update_body(self, change: Change) -> dict[str, Any]:
        return {"identity_id": change.person_id, "info": self._info(change)}

    @staticmethod
    def _info(change: Change) -> dict[str, Any]:
        """The full info, always: an omitted permission_ids would reset to ["0"]."""
        record = change.record
        assert record is not None
        return {
            "name": record["name"],
            "type": record["type"],
            "permission_ids": list(record["permission_ids"]),
            "user_id": change.person_id,
            "ext_info": {field: record[field] for field in EXT_FIELDS},
        }

    async def _delete_batch(self, batch: Sequence[Change]) -> list[Outcome]:
        body = {"identity_ids": [c.person_id for c in batch]}
        try:
            answer = await self._call("DELETE", USERS, json=body)
        except BoxError as exc:
            if exc.code in ONE_AT_A_TIME:
                return await self._delete_one_at_a_time(batch)
            error = self._explain(batch[0], exc)
            return [Outcome(change=c, ok=False, error=error, retryable=False) for c in batch]
        except TargetError as exc:
            retryable = not isinstance(exc, PermanentTargetError)
            return [
                Outcome(change=c, ok=False, error=exc.message, retryable=retryable) for c in batch
            ]
        if not isinstance(answer, dict) or not isinstance(answer.get("identity_ids"), list):
            # Not the batch answer: firmware that reads identity_id only may say it removed
            # nobody, successfully. Only a delete the box confirms leaves the ledger.
            return await self._delete_one_at_a_time(batch)
        # Ids the box did not find are left out of its answer: they are gone, which is the goal.
        return [Outcome(change=c, ok=True) for c in batch]

    async def _delete_one_at_a_time(self, batch: Sequence[Change]) -> list[Outcome]:
        """A batch the box would not delete as one: each person on its own, each confirmed."""
        return list(await asyncio.gather(*(self._delete_one(c) for c in batch)))

    async def _delete_one(self, change: Change) -> Outcome:
        try:
            await self._delete_one_id(change.person_id)
        except BoxError as exc:
            return Outcome(
                change=change, ok=False, error=self._explain(change, exc), retryable=False
            )
        except TargetError as exc:
            retryable = not isinstance(exc, PermanentTargetError)
            return Outcome(change=change, ok=False, error=exc.message, retryable=retryable)
        return Outcome(change=change, ok=True)

    async def _delete_one_id(self, person_id: str) -> None:
        try:
            await self._call("DELETE", USERS, json={"identity_id": person_id})
        except BoxError as exc:
            if exc.code not in GONE:
                raise

    def _explain(self, change: Change, exc: BoxError) -> str:
        """What the operator should do about a refusal concerning this person."""
        problem = PHOTO_PROBLEMS.get(exc.code)
        if problem is not None:
            photo = change.person.photo if change.person is not None else None
            which = f" ({Path(photo.path).name})" if photo is not None else ""
            return (
                f"{problem} (box code {exc.code}); replace the photo of person "
                f"{change.person_id}{which}"
            )
        if exc.code == 40015:
            return (
                f"group {self._settings.group} is full (box code 40015 GROUP_LEN_ERROR): delete "
                "persons from it or enrol into another group"
            )
        if exc.code in MISSING_GROUP:
            return self._missing_group(exc)
        return f"the box refused it: {exc.detail}"

    def _missing_group(self, exc: BoxError) -> str:
        return (
            f"group {self._settings.group} is not on the box (box code {exc.code}): create it "
            "there (POST /SophonFogSys/api/groups) or set `group` to an existing one"
        )

    # -- the envelope -------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One call; `{"data": …}` is success, `{"error": {code, …}}` a BoxError."""
        response = await self.client.request(method, path, json=json, params=params)
        envelope = self._envelope(response)
        error = envelope.get("error")
        if response.status < 300 and error is None:
            if "data" not in envelope:
                raise PermanentTargetError(
                    self.name, f"malformed response to {method} {path}: no data"
                )
            return envelope["data"]
        if isinstance(error, dict) and _is_int(error.get("code")):
            code = error["code"]
            status = _text(error.get("status"))[:40]
            message = _text(error.get("message"))[:200]
            if code >= 50000 and code != NOT_IMPLEMENTED:
                raise TemporaryTargetError(
                    self.name, f"{method} {path}: the box failed: code {code} {status}: {message}"
                )
            raise BoxError(self.name, f"{method} {path}", code, status, message)
        if response.status >= 500:
            raise TemporaryTargetError(
                self.name, f"{method} {path}: HTTP {response.status} {excerpt(response.body)!r}"
            )
        raise PermanentTargetError(
            self.name,
            f"malformed response to {method} {path} (HTTP {response.status}): "
            f"no data and no error code in {excerpt(response.body)!r}",
        )

    def _envelope(self, response: Response) -> dict[str, Any]:
        if response.status >= 400 and not response.body.lstrip().startswith(b"{"):
            # Not this API at all (a web UI, another firmware's API, a proxy's error page).
            raise _Foreign(
                self.name,
                f"{response.method} {response.path}: HTTP {response.status} "
                f"{excerpt(response.body)!r}; {CHECK_URL}",
                response.status,
            )
        envelope = response.json(self.name)
        if not isinstance(envelope, dict):
            raise PermanentTargetError(
                self.name,
                f"malformed response to {response.method} {response.path}: not a JSON object",
            )
        return envelope


def _base64_of(path: str) -> str:
    """Read and encode a photo: runs in a worker thread, off the event loop."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _wall_clock(moment: datetime | None, zone: ZoneInfo | None) -> str:
    if moment is None:
        return ""
    if zone is not None:
        moment = moment.astimezone(zone)
    return moment.strftime(TIME_FORMAT)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; JSON true is not a number here.
    return isinstance(value, int) and not isinstance(value, bool)
