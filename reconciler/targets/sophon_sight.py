"""sophon_sight: the SophonSight management platform's push-only person OpenAPI (vendors.md §3).

Key: thirdId = our person id. Nothing can be read back, so every field is write-only and the
plan comes from the ledger alone (re-pushed every `resync_every`). Every call is a POST whose
body is serialised once and signed: token = MD5(path + body bytes + secret), uppercase hex.
Departments first (`syncdept/addOrEdit`), then per person `pic/upload` (when the photo is new)
and `syncuser/addOrEdit`; `syncuser/delete` / `syncdept/delete` take <= 50 ids. Network I/O.

Choices on undocumented behaviour [I]:
- A blank facePicture on an edit deletes the photo [S], so the photoId from the last upload is
  kept in the ledger (refs `photoId`, with the photo's `photoDigest`) and re-sent with every edit;
  a photo is uploaded only when it is new or changed, or the ledger has no photoId for it. When
  the platform refuses a re-sent photoId (a message naming the photo), it is uploaded once more.
- Success is `status` 0 (or "0" / "SUCCESS"). A refusal whose message names the token, appkey
  or signature, or HTTP 401/403, means wrong credentials: the whole target stops with a
  permanent error; a refusal about `time` means clock skew, also for the whole target. Any other
  refusal, non-2xx or non-JSON answer fails only its change (permanent; 5xx and connection
  errors are retried by the client, then temporary).
- Only staff and vip are users here (a vip is an ordinary user: the API has no such notion);
  visitors belong to `visitor/add`, which this kind does not sync, and a blacklisted person must
  not become a user, since users are let in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, SecretStr, field_validator

from reconciler.core.changes import UPSERTS, Action, Change, DepartmentChange, split
from reconciler.core.persons import Person, PersonType, Photo
from reconciler.core.planning import Observed
from reconciler.core.records import Invalid, KindSpec, Record
from reconciler.errors import PermanentTargetError, TargetError, TemporaryTargetError
from reconciler.targets.base import (
    Before,
    DepartmentOutcome,
    Duration,
    Outcome,
    TargetSettings,
    announcing,
    announcing_each,
    chunks,
    pipelined,
)
from reconciler.targets.http import Backoff, HttpTarget, Response, excerpt

NAME = "sophon_sight"
PREFIX = "/openapi/v1"
PIC_UPLOAD = f"{PREFIX}/pic/upload"
DEPT_EDIT = f"{PREFIX}/syncdept/addOrEdit"
DEPT_DELETE = f"{PREFIX}/syncdept/delete"
USER_EDIT = f"{PREFIX}/syncuser/addOrEdit"
USER_DELETE = f"{PREFIX}/syncuser/delete"
#: The documented maximum of ids per delete call.
MAX_DELETE = 50
#: The documented maximum length of a thirdId (persons and departments).
MAX_THIRD_ID = 100
#: Every call's Content-Type, as documented.
HEADERS = {"Content-Type": "application/json;charset=UTF-8"}

FIELDS = ("name", "thirdDeptId", "jobNumber", "mail", "phone", "facePicture")
KIND = KindSpec(
    name=NAME,
    fields=FIELDS,
    # There is no read API at all: everything is compared against the ledger.
    observable=frozenset(),
    can_list=False,
    department_field="thirdDeptId",
)

SUPPORTED_TYPES = frozenset({PersonType.STAFF, PersonType.VIP})
UNSUPPORTED_TYPES = {
    PersonType.VISITOR: (
        "visitors belong to the platform's visitor/add API, which this kind does not sync"
    ),
    PersonType.BLACKLIST: (
        "pushing a blacklisted person as a platform user would grant them access"
    ),
}

# The words stand alone among ASCII letters, digits and '_' (a field name such as start_time is
# not the request's time): \b would also need a non-word character after them, and a Chinese
# message runs straight on ("appkey不存在", "time过期").
_ALONE_BEFORE, _ALONE_AFTER = r"(?<![A-Za-z0-9_])", r"(?![A-Za-z0-9_])"
#: Refusals that mean the request signature was not accepted: appkey or secret are wrong.
_AUTH_MESSAGE = re.compile(
    rf"{_ALONE_BEFORE}(token|appkey|app key|sign|signature|secret){_ALONE_AFTER}|认证|签名|令牌",
    re.IGNORECASE,
)
_TIME = rf"(?:{_ALONE_BEFORE}(?:time|timestamp){_ALONE_AFTER}|时间)"
_EXPIRED = rf"(?:{_ALONE_BEFORE}expired?{_ALONE_AFTER}|过期|超时|失效)"
#: Refusals saying the request's `time` expired: this host's clock is too far from the
#: platform's. A time named without expiring ("end time must be later than start time") is a
#: person's field, refused for that person alone.
_CLOCK_MESSAGE = re.compile(
    rf"{_TIME}[^.;,。；，]*?{_EXPIRED}|{_EXPIRED}[^.;,。；，]*?{_TIME}", re.IGNORECASE
)
#: Refusals that name the photo: a kept photoId the platform no longer knows.
_PHOTO_MESSAGE = re.compile(r"pic|photo|face|图片|照片", re.IGNORECASE)


class Settings(TargetSettings):
    """Settings of a sophon_sight target."""

    appkey: str = Field(
        min_length=1, description="appkey generated under 通行管理 → SDK管理 in the platform UI"
    )
    secret: SecretStr = Field(description="The appkey's secret; use ${ENV} interpolation")
    default_department: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_THIRD_ID,
        description="thirdDeptId for persons without a department (a declared department id)",
    )
    resync_every: Duration = Field(
        timedelta(hours=24),
        description="Re-push every person after this long, to repair changes nobody can see "
        "(the platform cannot be read): seconds or 30m, 24h, 7d",
    )
    delete_batch: int = Field(
        MAX_DELETE, ge=1, le=MAX_DELETE, description="thirdIds per delete call (at most 50)"
    )

    @field_validator("resync_every")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value


def render(person: Person, settings: Settings, *, target: str | None = None) -> Record | Invalid:
    """A person as the platform stores it, or why the platform cannot take it."""
    if person.type not in SUPPORTED_TYPES:
        why = UNSUPPORTED_TYPES.get(person.type, "only staff and vip are platform users")
        return Invalid(
            person_id=person.id,
            error=f"type {person.type.value} is not supported by {NAME}: {why}",
        )
    if len(person.id) > MAX_THIRD_ID:
        return Invalid(
            person_id=person.id, error=f"id is longer than {NAME}'s {MAX_THIRD_ID} characters"
        )
    department = person.department or settings.default_department
    if not department:
        where = f"target {target}" if target is not None else f"this {NAME} target"
        return Invalid(
            person_id=person.id,
            error=f"has no department and {where} has no default_department",
        )
    if len(department) > MAX_THIRD_ID:
        return Invalid(
            person_id=person.id,
            error=f"department id is longer than {NAME}'s {MAX_THIRD_ID} characters",
        )
    return {
        "name": person.name,
        "thirdDeptId": department,
        "jobNumber": person.job_number,
        "mail": person.email,
        "phone": person.phone,
        "facePicture": person.photo.digest if person.photo else "",
    }


def sign(path: str, body: bytes, secret: str) -> str:
    """The documented token: uppercase hex MD5 of the URI path, the exact body and the secret."""
    # MD5 is the vendor's choice, not ours; it authenticates, it protects nothing at rest.
    digest = hashlib.md5(path.encode() + body + secret.encode(), usedforsecurity=False)
    return digest.hexdigest().upper()


class _Refused(PermanentTargetError):
    """The platform answered a non-zero status: this change cannot go through as it is."""

    def __init__(self, target: str, message: str, *, platform_message: str) -> None:
        super().__init__(target, message)
        #: The envelope's own `message`, without our context around it.
        self.platform_message = platform_message


class _Stopped(PermanentTargetError):
    """Every request would be refused (credentials, clock): the whole target stops."""


class SophonSight(HttpTarget[Settings]):
    """A SophonSight management platform."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            name,
            settings,
            kind=KIND,
            render=lambda person: render(person, settings, target=name),
            backoff=backoff,
            resync_every=settings.resync_every.total_seconds(),
        )
        #: Epoch seconds for the `time` field; the platform may check it for freshness.
        self._clock = clock

    # -- protocol ---------------------------------------------------------------------------

    async def observe(self) -> Observed | None:
        """The platform has no list or get API: planning works from the ledger alone."""
        return None

    async def apply(
        self,
        changes: Sequence[Change],
        *,
        stop: asyncio.Event | None = None,
        before: Before | None = None,
    ) -> AsyncIterator[list[Outcome]]:
        upserts, deletes = split(changes, UPSERTS, {Action.DELETE})
        limit = self._settings.concurrency
        # One addOrEdit per person is all the API offers; each is confirmed on its own.
        each, batched = announcing_each(before), announcing(before)
        async for outcome in pipelined(upserts, each, self._upsert, limit, stop=stop):
            yield [outcome]
        batches = list(chunks(deletes, self._settings.delete_batch))
        async for outcomes in pipelined(batches, batched, self._delete, limit, stop=stop):
            yield outcomes

    async def apply_departments(
        self, changes: Sequence[DepartmentChange]
    ) -> list[DepartmentOutcome]:
        """One addOrEdit per department, in the order given (parents first); deletes in chunks,
        in the order given (children first). Sequential: order is what the platform checks."""
        outcomes: list[DepartmentOutcome] = []
        failed: set[str] = set()
        index = 0
        while index < len(changes):
            change = changes[index]
            if change.action is Action.DELETE:
                batch: list[DepartmentChange] = []
                while (
                    index < len(changes)
                    and changes[index].action is Action.DELETE
                    and len(batch) < self._settings.delete_batch
                ):
                    batch.append(changes[index])
                    index += 1
                outcomes.extend(await self._delete_departments(batch))
                continue
            index += 1
            outcomes.append(await self._upsert_department(change, failed))
            if not outcomes[-1].ok:
                failed.add(change.department_id)
        return outcomes

    # -- persons ----------------------------------------------------------------------------

    async def _upsert(self, change: Change) -> Outcome:
        person = change.person
        record = change.record
        if person is None or record is None:
            return Outcome(change=change, ok=False, error="nothing to send", retryable=False)
        photo = person.photo
        kept = _kept_photo_id(change)
        try:
            # A blank facePicture on an edit deletes the photo: on purpose when it was removed.
            picture = "" if photo is None else kept or await self._upload(change.person_id, photo)
            try:
                data = await self._call(USER_EDIT, _user_fields(change.person_id, record, picture))
            except _Refused as refused:
                if not (photo and kept and _PHOTO_MESSAGE.search(refused.platform_message)):
                    raise
                # The platform no longer knows the photoId we kept: upload the photo again, once.
                picture = await self._upload(change.person_id, photo)
                data = await self._call(USER_EDIT, _user_fields(change.person_id, record, picture))
        except _Stopped:
            raise
        except TargetError as exc:
            return _failed(change, exc)
        except OSError as exc:
            return Outcome(
                change=change, ok=False, error=f"photo could not be read: {exc.strerror or exc}"
            )
        refs = {} if photo is None else {"photoId": picture, "photoDigest": photo.digest}
        return Outcome(change=change, ok=True, remote_id=_platform_id(data), refs=refs)

    async def _upload(self, person_id: str, photo: Photo) -> str:
        encoded = await asyncio.to_thread(_base64_file, photo.path)
        extension = "png" if photo.media_type == "image/png" else "jpg"
        data = await self._call(
            PIC_UPLOAD, {"photoName": f"{person_id}.{extension}", "photoByteStr": encoded}
        )
        photo_id = data.get("photoId") if isinstance(data, dict) else None
        if not isinstance(photo_id, str) or not photo_id:
            raise PermanentTargetError(
                self.name, f"malformed response to POST {PIC_UPLOAD}: no photoId"
            )
        return photo_id

    async def _delete(self, batch: Sequence[Change]) -> list[Outcome]:
        try:
            # Unknown thirdIds are not an error: a person already gone counts as deleted.
            await self._call(USER_DELETE, {"thirdIds": [c.person_id for c in batch]})
        except _Stopped:
            raise
        except TargetError as exc:
            return [_failed(change, exc) for change in batch]
        return [Outcome(change=change, ok=True) for change in batch]

    # -- departments ------------------------------------------------------------------------

    async def _upsert_department(
        self, change: DepartmentChange, failed: set[str]
    ) -> DepartmentOutcome:
        if len(change.department_id) > MAX_THIRD_ID:
            error = f"department id is longer than {NAME}'s {MAX_THIRD_ID} characters"
            return DepartmentOutcome(change=change, ok=False, error=error)
        if change.parent is not None and change.parent in failed:
            error = f"its parent department {change.parent} could not be synced"
            return DepartmentOutcome(change=change, ok=False, error=error)
        fields = {
            "name": change.name,
            "thirdId": change.department_id,
            "thirdParentId": change.parent or "",
        }
        try:
            await self._call(DEPT_EDIT, fields)
        except _Stopped:
            raise
        except TargetError as exc:
            return DepartmentOutcome(change=change, ok=False, error=exc.message)
        return DepartmentOutcome(change=change, ok=True)

    async def _delete_departments(
        self, batch: Sequence[DepartmentChange]
    ) -> list[DepartmentOutcome]:
        try:
            await self._call(DEPT_DELETE, {"thirdIds": [c.department_id for c in batch]})
        except _Stopped:
            raise
        except TargetError as exc:
            return [DepartmentOutcome(change=c, ok=False, error=exc.message) for c in batch]
        return [DepartmentOutcome(change=c, ok=True) for c in batch]

    # -- the signed call and its envelope ---------------------------------------------------

    def _signed(self, path: str, fields: dict[str, Any]) -> tuple[bytes, str]:
        """The body, serialised once (compact, appkey and time first), and its token."""
        body = orjson.dumps(
            {"appkey": self._settings.appkey, "time": int(self._clock() * 1000), **fields}
        )
        return body, sign(path, body, self._settings.secret.get_secret_value())

    async def _call(self, path: str, fields: dict[str, Any]) -> Any:
        """One signed POST; returns the envelope's data, or raises what went wrong."""
        if "photoByteStr" in fields:
            # A photo makes a body of megabytes: serialise and hash it off the event loop.
            body, token = await asyncio.to_thread(self._signed, path, fields)
        else:
            body, token = self._signed(path, fields)
        # The same bytes are sent on every retry: they are what the token signs.
        response = await self.client.request(
            "POST", path, data=body, params={"token": token}, headers=HEADERS
        )
        return self._data(response)

    def _data(self, response: Response) -> Any:
        call = f"{response.method} {response.path}"
        if response.status in (401, 403):
            raise self._credentials_refused(f"HTTP {response.status}")
        if not 200 <= response.status < 300:
            raise PermanentTargetError(
                self.name, f"{call}: HTTP {response.status} {excerpt(response.body)!r}"
            )
        envelope = response.json(self.name)
        if not isinstance(envelope, dict) or "status" not in envelope:
            raise PermanentTargetError(
                self.name, f"malformed response to {call}: not a status/message envelope"
            )
        status = envelope["status"]
        if status in (0, "0") or (isinstance(status, str) and status.upper() == "SUCCESS"):
            return envelope.get("data")
        message = str(envelope.get("message") or "")[:200]
        if _AUTH_MESSAGE.search(message):
            raise self._credentials_refused(f"status {status}: {message}")
        if _CLOCK_MESSAGE.search(message):
            raise _Stopped(
                self.name,
                f"the platform refused the request time (status {status}: {message}); "
                "check that this host's clock is in sync (NTP) with the platform's",
            )
        raise _Refused(self.name, f"{call}: status {status}: {message}", platform_message=message)

    def _credentials_refused(self, detail: str) -> _Stopped:
        return _Stopped(
            self.name,
            f"the platform refused the signed request ({detail}): check appkey "
            f"{self._settings.appkey!r} and secret (通行管理 → SDK管理 in the platform UI)",
        )


def _user_fields(person_id: str, record: Record, picture: str) -> dict[str, Any]:
    """syncuser/addOrEdit's fields in the documented order; every one is always sent."""
    return {
        "name": record["name"],
        "thirdId": person_id,
        "jobNumber": record["jobNumber"],
        "mail": record["mail"],
        "phone": record["phone"],
        "thirdDeptId": record["thirdDeptId"],
        "facePicture": picture,
    }


def _kept_photo_id(change: Change) -> str | None:
    """The photoId the ledger holds for exactly this photo, if any."""
    photo = change.person.photo if change.person is not None else None
    photo_id = change.refs.get("photoId")
    if photo is None or not photo_id or change.refs.get("photoDigest") != photo.digest:
        return None
    return photo_id


def _platform_id(data: Any) -> str | None:
    """addOrEdit's `data.id`; status 0 confirmed the write, so a missing id is no failure."""
    platform_id = data.get("id") if isinstance(data, dict) else None
    return str(platform_id) if isinstance(platform_id, str | int) and platform_id != "" else None


def _failed(change: Change, exc: TargetError) -> Outcome:
    retryable = isinstance(exc, TemporaryTargetError)
    return Outcome(change=change, ok=False, error=exc.message, retryable=retryable)


def _base64_file(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
