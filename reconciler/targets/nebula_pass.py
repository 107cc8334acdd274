"""nebula_pass: SenseTime SenseNebula Pass face terminals, the `/v2/user` API (vendors.md §2).

Key: user_id = our person id (no mapping table). Read: `/v2/datasync/info` for every id, then the
paged `/v1/user/offset/{o}/limit/{l}` listing (limit <= 100) for the fields. Write: batched
`POST /v2/user` upserts and `DELETE /v2/user`; a non-empty `errors[]` fails just the persons it
names. `type` is immutable on the device, so a type change is a replace (delete, then create).
Choices on undocumented behaviour [I]: an upsert that omits `avatar` keeps the stored photo, so
photos are sent only when created or changed (their hash lives in the ledger; the listing is not
a reliable photo source), unless `photo_on_update: always` sends it with every update, for
firmware whose upsert replaces the whole user; an unset guest time is sent as 0; a body code 5xx
is the device failing (temporary, tried again by the next pass) whatever the HTTP
status says. Network I/O through targets.http.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, SecretStr

from reconciler.core.changes import Action, Change, split
from reconciler.core.persons import Person, PersonType
from reconciler.core.planning import Observed, ObservedPerson
from reconciler.core.records import Compact, Invalid, KindSpec, Record, shared
from reconciler.errors import PermanentTargetError, TargetError, TemporaryTargetError
from reconciler.targets.base import (
    Before,
    Feed,
    Outcome,
    TargetSettings,
    announce,
    announcing,
    bounded,
    chunks,
    pipelined,
)
from reconciler.targets.http import Backoff, HttpTarget, Response

NAME = "nebula_pass"
#: The listing's documented maximum page size.
PAGE_LIMIT = 100
#: Avatars may be up to 10 MB each: batches are capped by bytes as well as by count.
MAX_BATCH_BYTES = 20 * 1024 * 1024
MAX_AVATAR_BYTES = 10 * 1024 * 1024
#: Persons the listing may miss (it shifted while we paged) before we re-read them one by one.
MAX_SINGLE_READS = 200

FIELDS = (
    "name",
    "type",
    "ic_number",
    "id_number",
    "job_number",
    "pin",
    "guest_time_start",
    "guest_time_end",
    "groups",
    "is_admin",
    "remark",
    "avatar",
)
KIND = KindSpec(
    name=NAME,
    fields=FIELDS,
    # The listing's avatar is not a reliable copy of what we sent: photos are write-only.
    observable=frozenset(FIELDS) - {"avatar"},
    immutable=frozenset({"type"}),
    sensitive=frozenset({"id_number", "pin"}),
)

TYPE_CODES: dict[PersonType, int] = {
    PersonType.STAFF: 1,
    PersonType.VISITOR: 2,
    PersonType.BLACKLIST: 5,
}
#: Byte limits of the device (UTF-8), checked before sending so the plan says what is wrong.
BYTE_LIMITS = {
    "name": 128,
    "ic_number": 128,
    "id_number": 128,
    "job_number": 128,
    "pin": 128,
    "remark": 256,
}


class Settings(TargetSettings):
    """Settings of a nebula_pass target."""

    username: str = Field(min_length=1, description="Device account, usually admin")
    password: SecretStr = Field(description="Device password; use ${ENV} interpolation")
    batch_size: int = Field(50, ge=1, le=100, description="Persons per POST /v2/user")
    token_minutes: int = Field(60, ge=1, le=1440, description="Requested JWT lifetime")
    page_size: int = Field(
        PAGE_LIMIT,
        ge=1,
        le=PAGE_LIMIT,
        description="Users per listing page; the listing carries every face in full, so lower "
        "it when photos are large and a page outgrows the request timeout",
    )
    photo_on_update: Literal["changed", "always"] = Field(
        "changed",
        description="When an update sends the face photo: only when it changed (an upsert "
        "without avatar keeps the stored face), or always (for firmware whose upsert replaces "
        "the whole user, which would otherwise erase the face)",
    )


def render(person: Person, settings: Settings) -> Record | Invalid:
    """A person as this device stores it, or why the device cannot take it."""
    code = TYPE_CODES.get(person.type)
    if code is None:
        supported = ", ".join(t.value for t in TYPE_CODES)
        return Invalid(
            person_id=person.id,
            error=f"type {person.type.value} is not supported by {NAME} ({supported})",
        )
    if _over(person.id, 128):
        return Invalid(person_id=person.id, error=f"id is longer than {NAME}'s 128 bytes")
    group_map = settings.group_map
    record: dict[str, Any] = {
        "name": person.name,
        "type": code,
        "ic_number": person.card,
        "id_number": person.id_number,
        "job_number": person.job_number,
        "pin": person.pin,
        "guest_time_start": _millis(person.valid_from),
        "guest_time_end": _millis(person.valid_until),
        "groups": sorted(
            {group_map.get(g, g) for g in person.groups} if group_map else set(person.groups)
        ),
        "is_admin": person.admin,
        "remark": person.remark,
        "avatar": person.photo.digest if person.photo else "",
    }
    for field, limit in BYTE_LIMITS.items():
        if _over(record[field], limit):
            shown = "a sensitive field" if field in KIND.sensitive else field
            return Invalid(
                person_id=person.id,
                error=f"{shown} is longer than {NAME}'s {limit} bytes",
            )
    if len(record["groups"]) > 100:
        return Invalid(person_id=person.id, error=f"{NAME} binds at most 100 groups")
    if person.photo is not None and person.photo.size * 4 / 3 > MAX_AVATAR_BYTES:
        return Invalid(person_id=person.id, error=f"photo is larger than {NAME}'s 10 MB")
    return record


#: The fields of an observed record, in this order (KIND.observable).
OBSERVED = tuple(f for f in FIELDS if f != "avatar")


def observed_record(user: Any, target: str) -> tuple[str, Record]:
    """A listed user in canonical form; anything malformed is an error of the target.

    Texts are interned and group lists shared: a daemon keeps every target's records, and
    terminals mostly report the same persons alike."""
    user_id = user.get("user_id") if isinstance(user, dict) else None
    if not isinstance(user_id, str | int):
        raise PermanentTargetError(target, f"malformed user in listing: {str(user)[:120]!r}")
    get = user.get
    try:
        groups = get("groups")
        values = (
            _kept(get("name")),
            int(get("type") or 1),
            _kept(get("ic_number")),
            _kept(get("id_number")),
            _kept(get("job_number")),
            _kept(get("pin")),
            _optional_int(get("guest_time_start")),
            _optional_int(get("guest_time_end")),
            shared(sorted(map(str, groups))) if groups else [],
            bool(get("is_admin")),
            _kept(get("remark")),
        )
    except (TypeError, ValueError) as exc:
        raise PermanentTargetError(target, f"malformed user {user_id} in listing: {exc}") from exc
    return sys.intern(str(user_id)), Compact.shaped(OBSERVED, values)


#: What _exchange() gives for a body already decoded.
_UNCHANGED: Any = object()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Upsert:
    """One batch of upserts ready to send: its request body, or why it could not be built."""

    batch: list[Change]
    #: Serialised as the batch was prepared: not while a slot waits for its next call.
    body: bytes | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """What the device said to one batch call. It is read into outcomes by whoever takes it
    from the call's slot, which sends its next call meanwhile."""

    method: str
    path: str
    batch: Sequence[Change]
    data: Any = None
    #: Why the call failed as a whole: the target's error, or why it was never sent.
    failure: TargetError | str | None = None
    #: Persons already gone count as deleted (a delete's 404 per item).
    missing_ok: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class _Info:
    """The last datasync/info answer decoded: its body's hash, its stamps, and their digest."""

    body_hash: bytes = b""
    stamps: dict[str, int] = dataclasses.field(default_factory=dict)
    usable: bool = False
    #: The Feed digest: the stamps in id order, so the order the device lists them in is moot.
    digest: str = ""

    @staticmethod
    def read(body: bytes, stamps: dict[str, int], usable: bool) -> _Info:
        ordered = orjson.dumps(stamps, option=orjson.OPT_SORT_KEYS)
        return _Info(
            body_hash=hashlib.sha256(body).digest(),
            stamps=stamps,
            usable=usable,
            digest=f"sha256:{hashlib.sha256(ordered).hexdigest()}",
        )

    @property
    def trusted(self) -> dict[str, int] | None:
        """The stamps, when they can be trusted."""
        return self.stamps if self.usable else None

    def answered(self, body: bytes) -> bool:
        """Whether this body is the one decoded last, byte for byte."""
        return bool(self.body_hash) and hashlib.sha256(body).digest() == self.body_hash


class NebulaPass(HttpTarget[Settings]):
    """A SenseNebula Pass terminal."""

    #: Seconds after which the datasync feed is not trusted alone: a whole listing is read.
    FULL_READ_EVERY = 3600.0
    #: Seconds for which the feed read by feed() serves the observe() that follows it.
    FED_FRESH = 30.0

    def __init__(self, name: str, settings: Settings, *, backoff: Backoff | None = None) -> None:
        super().__init__(
            name,
            settings,
            kind=KIND,
            render=lambda person: render(person, settings),
            backoff=backoff,
        )
        self._token: str | None = None
        self._token_expires = 0.0
        self._login_lock = asyncio.Lock()
        #: The last snapshot and the update_at of each person in it (see observe()).
        self._previous: tuple[Observed, dict[str, int]] | None = None
        self._full_read_at = 0.0
        #: The last datasync/info answer decoded.
        self._info = _Info()
        #: When (loop time) feed() read the answer in _info, for the observe() that follows it.
        self._fed_at: float | None = None

    # -- protocol ---------------------------------------------------------------------------

    async def observe(self) -> Observed:
        """Everything on the device, read as cheaply as the datasync feed allows.

        `/v2/datasync/info` lists every id with its `update_at`, which moves on every upsert.
        The first read (and so every restart) pages through the whole listing; later reads
        page-read only persons whose `update_at` moved or who are new, one GET each, and keep
        everyone else from the previous read. What was read is remembered in this instance only,
        for the daemon's lifetime. A feed that does not add up (no usable `update_at`, an id
        twice, an answer for another id), more changed persons than a whole listing has pages,
        or FULL_READ_EVERY elapsed, means a full read.
        """
        fed_at, self._fed_at = self._fed_at, None
        if fed_at is not None and asyncio.get_running_loop().time() < fed_at + self.FED_FRESH:
            stamps = self._info.trusted
        else:
            stamps = await self._stamps()
        previous = self._previous
        if (
            stamps is not None
            and previous is not None
            and asyncio.get_running_loop().time() < self._full_read_at + self.FULL_READ_EVERY
        ):
            known, seen = previous
            if stamps == seen and len(known.persons) == len(stamps):
                return known  # nothing moved: the same snapshot, unchanged
            changed = sorted(pid for pid, at in stamps.items() if seen.get(pid) != at)
            if len(changed) <= -(-len(stamps) // self._settings.page_size):
                observed = await self._changed_since(known, stamps, changed)
                if observed is not None:
                    self._remember(observed, stamps)
                    return observed
        return await self._read_all(stamps)

    async def feed(self) -> Feed | None:
        """datasync/info's ids and update_at, digested: equal digests, no person touched (every
        upsert moves update_at, and an added or removed person changes the ids). Trusted as
        observe() trusts it: until a full read is due, FULL_READ_EVERY after the last one (or
        after the one the observe() that follows will make)."""
        stamps = await self._stamps()
        now = asyncio.get_running_loop().time()
        self._fed_at = now
        if stamps is None:
            return None
        full_read_at = self._full_read_at
        if self._previous is None or now >= full_read_at + self.FULL_READ_EVERY:
            full_read_at = now
        return Feed(
            digest=self._info.digest,
            trusted_until=time.time() + full_read_at + self.FULL_READ_EVERY - now,
        )

    async def _stamps(self) -> dict[str, int] | None:
        """Every id on the device with its update_at; None when they cannot be trusted.

        An answer byte for byte the last one's is the last one's stamps: on a no-op pass at
        100 000 persons, decoding 3 MB of JSON and building the stamps again was half the pass.
        """
        seen = self._info
        response, info = await self._exchange("GET", "/v2/datasync/info", unchanged=seen.answered)
        if info is _UNCHANGED:
            return seen.trusted
        users = info.get("users") if isinstance(info, dict) else None
        if not isinstance(users, list):
            raise PermanentTargetError(self.name, "malformed /v2/datasync/info: no users list")
        try:
            # The common case, at C speed: well-formed entries, each id once, integer stamps.
            # Ids are interned: the same texts as the snapshot's keys, on every target.
            stamps = {sys.intern(str(user["id"])): user["update_at"] for user in users}
            usable = len(stamps) == len(users) and all(type(at) is int for at in stamps.values())
        except (KeyError, TypeError):
            stamps, usable = {}, False
        if not usable:
            # Something is off: keep every id that can be read, trust no stamp.
            stamps = {
                str(user["id"]): -1 for user in users if isinstance(user, dict) and "id" in user
            }
        self._info = _Info.read(response.body, stamps, usable)
        return self._info.trusted

    async def _changed_since(
        self, known: Observed, stamps: dict[str, int], changed: list[str]
    ) -> Observed | None:
        """The previous snapshot with the changed persons read again and the gone dropped;
        None when an answer does not fit the feed (then everything is read)."""
        persons = {pid: seen for pid, seen in known.persons.items() if pid in stamps}

        async def read(user_id: str) -> tuple[str, ObservedPerson | None]:
            user = await self._call("GET", f"/v1/user/id/{user_id}", missing_ok=True)
            if user is None:
                return user_id, None
            pid, record = observed_record(user, self.name)
            return pid if pid == user_id else "", ObservedPerson(record=record)

        async for user_id, seen in bounded(changed, read, self._settings.concurrency):
            if not user_id:
                return None
            if seen is None:
                persons.pop(user_id, None)  # deleted since the feed was read
            else:
                persons[user_id] = seen
        return Observed(persons=persons)

    async def _read_all(self, stamps: dict[str, int] | None) -> Observed:
        """The whole listing, page by page; the feed's ids catch what paging missed."""
        first = await self._page(0)
        total = first.get("total")
        if not isinstance(total, int) or total < 0:
            raise PermanentTargetError(self.name, "malformed user listing: no total")
        persons: dict[str, ObservedPerson] = {}
        self._collect(first, persons)
        size = self._settings.page_size
        offsets = range(size, total, size)
        async for page in bounded(offsets, self._page, self._settings.concurrency):
            self._collect(page, persons)

        # The listing is offset-paged: a person added or removed while we paged shifts the
        # pages, so ids that datasync/info reports but the pages missed are read one by one.
        missing = sorted(self._info.stamps.keys() - persons.keys())
        if len(missing) > MAX_SINGLE_READS:
            raise TemporaryTargetError(
                self.name, f"the user list changed while it was read ({len(missing)} missed)"
            )

        async def read(user_id: str) -> Any:
            return await self._call("GET", f"/v1/user/id/{user_id}", missing_ok=True)

        async for user in bounded(missing, read, self._settings.concurrency):
            if user is not None:
                pid, record = observed_record(user, self.name)
                persons[pid] = ObservedPerson(record=record)
        observed = Observed(persons=persons)
        self._full_read_at = asyncio.get_running_loop().time()
        self._remember(observed, stamps)
        return observed

    def _remember(self, observed: Observed, stamps: dict[str, int] | None) -> None:
        """Keep the snapshot and the update_at it was read at (read before the persons: a
        person edited meanwhile looks changed next time, never the other way round)."""
        if stamps is None:
            self._previous = None
            return
        seen = {pid: stamps[pid] for pid in observed.persons if pid in stamps}
        self._previous = (observed, seen)

    async def apply(
        self,
        changes: Sequence[Change],
        *,
        stop: asyncio.Event | None = None,
        before: Before | None = None,
    ) -> AsyncIterator[list[Outcome]]:
        replaces, upserts, deletes = split(
            changes, {Action.REPLACE}, {Action.CREATE, Action.UPDATE}, {Action.DELETE}
        )

        # A replace deletes first (type is immutable), then upserts with everything else.
        if replaces:
            async for outcomes in self._delete(replaces, stop, before):
                cleared = {o.change.person_id for o in outcomes if o.ok}
                failed = [o for o in outcomes if not o.ok]
                if failed:
                    yield failed
                upserts.extend(c for c in replaces if c.person_id in cleared)
            upserts.sort(key=attrgetter("person_id"))  # the plan's order, replaces among them
        batches = self._upsert_batches(upserts)

        async def prepare(batch: list[Change]) -> _Upsert:
            await announce(before, batch)
            return await self._prepare_upsert(batch)

        limit = self._settings.concurrency
        async for answer in pipelined(batches, prepare, self._send_upsert, limit, stop=stop):
            yield self._outcomes(answer)
        async for outcomes in self._delete(deletes, stop, before):
            yield outcomes

    # -- writes -----------------------------------------------------------------------------

    def _upsert_batches(self, changes: Sequence[Change]) -> Iterator[list[Change]]:
        """Batches capped by count and by the bytes their photos will add, made as they are
        sent: the first call need not wait for the last batch."""
        current: list[Change] = []
        size = 0
        for change in changes:
            photo = change.person.photo if change.person is not None else None
            weight = photo.size * 4 // 3 + 1024 if photo and self._sends_avatar(change) else 1024
            if current and (
                len(current) >= self._settings.batch_size or size + weight > MAX_BATCH_BYTES
            ):
                yield current
                current, size = [], 0
            current.append(change)
            size += weight
        if current:
            yield current

    def _sends_avatar(self, change: Change) -> bool:
        if change.action in (Action.CREATE, Action.REPLACE):
            return True
        changed = any(f.field == "avatar" for f in change.fields)
        if self._settings.photo_on_update == "always" and change.person is not None:
            # A removed photo still goes out as the documented clear.
            return change.person.photo is not None or changed
        return changed

    async def _prepare_upsert(self, batch: list[Change]) -> _Upsert:
        reads_photos = any(
            c.person is not None and c.person.photo is not None and self._sends_avatar(c)
            for c in batch
        )
        try:
            # Photo files are read off the event loop; a batch without any is built here.
            items = (
                await asyncio.to_thread(self._wire_items, batch)
                if reads_photos
                else self._wire_items(batch)
            )
        except OSError as exc:
            return _Upsert(batch=batch, error=f"photo could not be read: {exc.strerror}")
        return _Upsert(batch=batch, body=orjson.dumps({"user_list": items}))

    async def _send_upsert(self, upsert: _Upsert) -> _Answer:
        if upsert.body is None:
            return _Answer("POST", "/v2/user", upsert.batch, failure=upsert.error)
        return await self._write("POST", "/v2/user", upsert.body, upsert.batch)

    def _wire_items(self, batch: list[Change]) -> list[dict[str, Any]]:
        """The batch as the device wants it; photo bytes are read here, off the event loop."""
        items = []
        for change in batch:
            assert change.record is not None
            assert change.person is not None
            record = change.record
            item: dict[str, Any] = {"user_id": change.person_id}
            for field in KIND.observable:
                item[field] = record[field]
            item["guest_time_start"] = record["guest_time_start"] or 0
            item["guest_time_end"] = record["guest_time_end"] or 0
            if self._sends_avatar(change):
                photo = change.person.photo
                if photo is None:
                    # Both empty is the documented way to clear a face.
                    item["avatar"], item["feature"] = "", ""
                else:
                    item["avatar"] = base64.b64encode(Path(photo.path).read_bytes()).decode()
            items.append(item)
        return items

    async def _delete(
        self, changes: Sequence[Change], stop: asyncio.Event | None, before: Before | None
    ) -> AsyncIterator[list[Outcome]]:
        async def one(batch: Sequence[Change]) -> _Answer:
            body = orjson.dumps({"ids": [c.person_id for c in batch]})
            return await self._write("DELETE", "/v2/user", body, batch, missing_ok=True)

        batches = list(chunks(changes, PAGE_LIMIT))
        limit = self._settings.concurrency
        async for answer in pipelined(batches, announcing(before), one, limit, stop=stop):
            yield self._outcomes(answer)

    async def _write(
        self,
        method: str,
        path: str,
        body: bytes,
        batch: Sequence[Change],
        *,
        missing_ok: bool = False,
    ) -> _Answer:
        """One batch call (`body`: its JSON)."""
        try:
            data = await self._call(method, path, body=body)
        except TargetError as exc:
            return _Answer(method, path, batch, failure=exc)
        return _Answer(method, path, batch, data=data, missing_ok=missing_ok)

    @staticmethod
    def _outcomes(answer: _Answer) -> list[Outcome]:
        """A batch call's outcomes; per-item `errors[]` fail just the persons they name."""
        batch, failure = answer.batch, answer.failure
        if isinstance(failure, TargetError):
            retryable = not isinstance(failure, PermanentTargetError)
            return [
                Outcome(change=c, ok=False, error=failure.message, retryable=retryable)
                for c in batch
            ]
        if failure is not None:
            return [Outcome(change=c, ok=False, error=failure) for c in batch]
        data = answer.data
        errors = data.get("errors") if isinstance(data, dict) else None
        if errors is None:
            errors = []
        if not isinstance(errors, list):
            message = f"malformed {answer.method} {answer.path} response: errors is not a list"
            return [Outcome(change=c, ok=False, error=message) for c in batch]
        if not errors:  # the usual answer: every person taken
            return [Outcome(change=c, ok=True) for c in batch]
        by_id: dict[str, str] = {}
        unattributed: list[str] = []
        for error in errors:
            user_id = error.get("user_id", error.get("id")) if isinstance(error, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            message = str(error.get("msg") or error) if isinstance(error, dict) else str(error)
            if user_id is None:
                unattributed.append(message[:200])
            elif not (answer.missing_ok and code == 404):
                by_id[str(user_id)] = f"device refused it: {message[:200]}"
        outcomes = []
        for change in batch:
            if unattributed:
                # We cannot tell who failed: nobody is recorded, the next pass re-plans from truth.
                error = f"device reported errors it did not attribute: {'; '.join(unattributed)}"
                outcomes.append(Outcome(change=change, ok=False, error=error))
            elif change.person_id in by_id:
                outcomes.append(
                    Outcome(change=change, ok=False, error=by_id[change.person_id], retryable=False)
                )
            else:
                outcomes.append(Outcome(change=change, ok=True))
        return outcomes

    # -- the envelope, auth -------------------------------------------------------------------

    async def _page(self, offset: int) -> dict[str, Any]:
        size = self._settings.page_size
        page = await self._call("GET", f"/v1/user/offset/{offset}/limit/{size}")
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise PermanentTargetError(self.name, f"malformed user listing at offset {offset}")
        return page

    def _collect(self, page: dict[str, Any], persons: dict[str, ObservedPerson]) -> None:
        for user in page["items"]:
            pid, record = observed_record(user, self.name)
            persons[pid] = ObservedPerson(record=record)

    async def _call(
        self, method: str, path: str, *, body: bytes | None = None, missing_ok: bool = False
    ) -> Any:
        """One API call (`body`: its JSON, serialised): authenticated, envelope checked,
        re-login once on 401."""
        return (await self._exchange(method, path, body=body, missing_ok=missing_ok))[1]

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        missing_ok: bool = False,
        unchanged: Callable[[bytes], bool] | None = None,
    ) -> tuple[Response, Any]:
        """The answer and its data (_UNCHANGED when `unchanged` says the body is one already
        decoded); re-login once on 401."""
        for attempt in range(2):
            token = await self._login()
            response = await self.client.request(
                method, path, data=body, headers={"Authorization": f"Bearer {token}"}
            )
            if response.status == 200 and unchanged is not None and unchanged(response.body):
                return response, _UNCHANGED
            envelope = self._envelope(response)
            code = envelope.get("code")
            if response.status == 401 or code == 401:
                self._token = None  # expired or revoked: log in again, once
                if attempt == 0:
                    continue
                raise PermanentTargetError(self.name, f"{method} {path}: unauthorized after login")
            if code == 200 and response.status < 400:
                return response, envelope.get("data")
            if code == 404 and missing_ok:
                return response, None
            message = str(envelope.get("msg", ""))[:200]
            raise _refused(
                self.name, f"{method} {path}: HTTP {response.status}, code {code}: {message}", code
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _envelope(self, response: Response) -> dict[str, Any]:
        envelope = response.json(self.name)
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise PermanentTargetError(
                self.name,
                f"malformed response to {response.method} {response.path}: not a code/msg envelope",
            )
        return envelope

    async def _login(self) -> str:
        async with self._login_lock:
            loop = asyncio.get_running_loop()
            if self._token is not None and loop.time() < self._token_expires:
                return self._token
            minutes = self._settings.token_minutes
            response = await self.client.request(
                "POST",
                "/v1/auth/login",
                json={
                    "username": self._settings.username,
                    "password": self._settings.password.get_secret_value(),
                    "validTime": minutes,
                },
            )
            envelope = self._envelope(response)
            code = envelope.get("code")
            data = envelope.get("data")
            if code in (1000, 1001) or response.status == 401:
                what = {1000: "the account does not exist", 1001: "the password is wrong"}
                raise PermanentTargetError(
                    self.name,
                    f"login as {self._settings.username!r} refused: "
                    f"{what.get(code, 'unauthorized') if isinstance(code, int) else 'unauthorized'}"
                    "; check username and password",
                )
            token = data.get("token") if isinstance(data, dict) else None
            if code != 200 or not isinstance(token, str) or not token:
                raise _refused(
                    self.name, f"login failed: HTTP {response.status}, code {code}", code
                )
            self._token = token
            # Renew a little early so a token never expires between check and use.
            self._token_expires = loop.time() + minutes * 60 * 0.9
            return token


def _refused(target: str, detail: str, code: object) -> TargetError:
    """The error for an answer whose body code is not 200: temporary for a code 5xx (500
    Internal Server Error: the device failed, not the request, though its HTTP status may say
    200; worth trying again, as an HTTP 5xx is), else permanent (1000 and 1001 are the login's
    own refusals)."""
    if isinstance(code, int) and 500 <= code < 600:
        return TemporaryTargetError(target, detail)
    return PermanentTargetError(target, detail)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _kept(value: Any) -> str:
    """A text from a listing, interned: equal texts of many records share one object."""
    if type(value) is str:
        return sys.intern(value)
    return "" if value is None else sys.intern(str(value))


def _over(text: str, limit: int) -> bool:
    """Longer than `limit` bytes in UTF-8 (encoded only when it could be: 4 bytes a character)."""
    return len(text) * 4 > limit and len(text.encode()) > limit


def _optional_int(value: Any) -> int | None:
    """The device reports an unset time as 0 (or leaves it out): both mean none."""
    return int(value) or None if value else None


def _millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)
