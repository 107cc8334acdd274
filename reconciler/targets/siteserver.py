"""siteserver: SiteServer CMS 6.x (`/api/v1/users`) and SSCMS 7.x user bases (vendors.md §4).

Key: userName = our person id; the CMS's integer `id` is the ledger's remote_id, rebuilt from
the paged listing (checked for completeness) on every observe(). Write: one call per created,
updated or deleted user, plus one avatar upload per new or changed photo. Passwords are sent only
on create and never leave this module. [I] choices: see `SiteServer`. Network I/O (targets.http).
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import string
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard

import orjson
from pydantic import Field, SecretStr, field_validator

from reconciler.core.changes import UPSERTS, Action, Change, split
from reconciler.core.persons import Person, Photo
from reconciler.core.planning import Observed, ObservedPerson
from reconciler.core.records import Invalid, KindSpec, Record
from reconciler.errors import PermanentTargetError, TargetError, TemporaryTargetError
from reconciler.targets.base import (
    Before,
    Outcome,
    TargetSettings,
    announcing_each,
    bounded,
    pipelined,
)
from reconciler.targets.http import Backoff, HttpTarget, Part, Response, excerpt

NAME = "siteserver"
USERS = "/api/v1/users"

FIELDS = ("userName", "displayName", "email", "mobile", "checked", "avatar")
KIND = KindSpec(
    name=NAME,
    fields=FIELDS,
    # avatarUrl is a server-made path, not a copy of what we sent: photos are write-only.
    observable=frozenset(FIELDS) - {"avatar"},
    # The key itself; 7.x forces it back on update, and we never send it on 6.x.
    immutable=frozenset({"userName"}),
)
#: Record fields sent as User JSON keys (the same camelCase names).
PROFILE = ("displayName", "email", "mobile")
#: The User key of `checked` (approved: the user may log in) in each API version.
CHECKED_KEY = {6: "isChecked", 7: "checked"}
#: Column sizes (characters): a longer value is an SQL error (500) on the CMS.
LIMITS = {"userName": 255, "displayName": 255, "email": 255, "mobile": 20}
#: `StringUtils.IsMobile`: such a userName also becomes the mobile when none is given.
MOBILE = re.compile(r"^1[3-9]\d{9}$")
#: `IsUserNameCompliant` (space, full-width space, ' and :) and `IsDirectoryNameCompliant`.
FORBIDDEN = frozenset(" \u3000':") | frozenset('\\/*?"<>|')
#: Characters of generated passwords: every class a password restriction may ask for.
SYMBOLS = "!#%*+-=?@^_~"
ALPHABET = string.ascii_letters + string.digits + SYMBOLS
PASSWORD_LENGTH = 20

#: 400 messages that are about the CMS's settings, not about one person.
RATE_LIMITED = re.compile(r"同一IP在(\d+)分钟内只能注册一次")
REGISTRATION_CLOSED = "禁止新用户注册"
NAME_TAKEN = "用户名已被注册"
#: 7.x avatar upload's answer for an unknown id.
NOT_FOUND_V7 = "未找到该数据"
MESSAGE_LIMIT = 200


class Settings(TargetSettings):
    """Settings of a siteserver target."""

    api_key: SecretStr = Field(
        description="API key with the Users scope (sent as X-SS-API-KEY); use ${ENV}"
    )
    api_version: Literal[6, 7] = Field(6, description="6: SiteServer CMS 6.x; 7: SSCMS 7.x")
    initial_password: SecretStr | None = Field(
        None,
        description="Password given to created users; omitted: a random strong password per "
        "user, never stored or shown (users then reset it themselves)",
    )
    page_size: int = Field(100, ge=1, le=1000, description="Users per listing page")

    @field_validator("api_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        # "${CMS_VERSION}" interpolates to a string; a Literal would not coerce it.
        return int(value) if isinstance(value, str) and value.strip() in ("6", "7") else value


def render(person: Person, settings: Settings) -> Record | Invalid:
    """A person as the CMS stores the user, or why the CMS cannot take it."""
    bad = sorted({c for c in person.id if c in FORBIDDEN or ord(c) < 32})
    if not person.id or bad:
        shown = " ".join(repr(c) for c in bad) or "an empty id"
        return Invalid(
            person_id=person.id,
            error=f"id is not a legal {NAME} userName ({shown}): spaces, full-width spaces, "
            'quotes, colons, control characters and \\ / * ? " < > | are refused',
        )
    record: dict[str, Any] = {
        "userName": person.id,
        "displayName": person.name,
        "email": person.email,
        # The CMS copies a mobile-like userName into an empty mobile: say so up front, or every
        # pass would plan to clear it again.
        "mobile": person.phone or (person.id if MOBILE.match(person.id) else ""),
        # Approved: a CMS that reviews registrations creates users who cannot log in.
        "checked": True,
        "avatar": person.photo.digest if person.photo else "",
    }
    for field, limit in LIMITS.items():
        if len(record[field]) > limit:
            shown = "id" if field == "userName" else field
            return Invalid(
                person_id=person.id, error=f"{shown} is longer than {NAME}'s {limit} characters"
            )
    return record


def _half_created(change: Change, remote_id: str, missing: str) -> Outcome:
    """A user created but not finished: failed, with its id kept, so the next pass finishes it."""
    return Outcome(
        change=change,
        ok=False,
        remote_id=remote_id,
        error=f"created as CMS id {remote_id}, but {missing}",
    )


def strong_password() -> str:
    """A random password that passes every restriction the CMS offers (letters, digits, symbols)."""
    chars = [
        secrets.choice(string.ascii_lowercase),
        secrets.choice(string.ascii_uppercase),
        secrets.choice(string.digits),
        secrets.choice(SYMBOLS),
    ]
    chars += [secrets.choice(ALPHABET) for _ in range(PASSWORD_LENGTH - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def observed_user(user: Any, target: str) -> tuple[str, str, Record]:
    """A listed user as (userName, id, record); anything malformed is an error of the target."""
    if not isinstance(user, dict):
        raise PermanentTargetError(target, "malformed user listing: a user is not an object")
    user_id, user_name = user.get("id"), user.get("userName")
    if not _is_int(user_id) or not isinstance(user_name, str) or not user_name:
        # The keys only: a user's values are person data.
        raise PermanentTargetError(
            target,
            "malformed user listing: a user without an integer id and a userName "
            f"(keys: {', '.join(sorted(str(k) for k in user)[:12])})",
        )
    # A release without the key says nothing to approve.
    checked = user.get("isChecked", user.get("checked", True))
    record = {
        "userName": user_name,
        "displayName": _text(user.get("displayName")),
        "email": _text(user.get("email")),
        "mobile": _text(user.get("mobile")),
        "checked": checked is True or str(checked).lower() == "true",
    }
    return user_name, str(user_id), record


class _Unauthorized(PermanentTargetError):
    """The key was refused: every further call would be refused too."""


class _Unreadable(Exception):
    """A photo file could not be read."""


class SiteServer(HttpTarget[Settings]):
    """A SiteServer CMS 6.x or SSCMS 7.x user base.

    Choices on undocumented or version-dependent behaviour [I]:

    - Fields: displayName <- name, email, mobile <- phone (or the id when it looks like a mobile
      number and no phone is given: the CMS does that itself on create), avatar <- photo
      (write-only: its digest). 6.x custom user-style fields exist only where configured and
      are left alone; so are gender, birthday, bio and the rest.
    - Approval: every user is kept approved (6.x `isChecked`, 7.x `checked`): a CMS that
      reviews registrations creates users unapproved, who cannot log in, so a create whose
      answer says so is followed by the update that approves it, and a user a reviewer turns
      back is approved again by the next pass. A listing without the key has nothing to approve.
    - Groups: 7.x takes group names (through group_map) on create only; no API call changes a
      user's groups later, so later group changes are not synced. 6.x has one `groupId` that
      registration zeroes: groups are not sent.
    - Listing: 6.x `top`/`skip`, computing skip ourselves (the `next`/`last` links are wrong);
      7.x `page`/`perPage`, plus `top`/`skip` for early 7.x releases that read those. A listing
      whose users do not add up to its `count` is read once more, then refused with an error:
      planning from a partial listing would re-create or forget users.
    - A duplicate userName in a listing keeps the lowest id (the others are foreign to us).
    - Update: 6.x PUT carries only the changed keys and never `id` (it would re-target the
      UPDATE); 7.x posts the full object read in the latest observe() (else GET by id), with
      the changed keys replaced. A removed photo sets `avatarUrl` to ""; a new photo is uploaded
      as multipart field `file` (`avatar.jpg` / `avatar.png`).
    - A person the CMS no longer has (6.x 404, 7.x avatar "未找到该数据!"): a delete counts as
      done; an update fails, retryable, and the next pass re-creates it from the listing. 7.x
      answers 500 instead (a null dereference): the change fails with that explained.
    - A delete with no id in the listing or the ledger has nothing to delete: it counts as done.
      An update or delete whose id is unknown triggers one listing per adapter to rebuild ids.
    - The registration limit per IP and disabled registration stop further creates of the same
      apply() at once (each fails with the same actionable message, retryable=False); a
      userName taken although the listing lacked it is retryable (the next listing shows it).
    """

    def __init__(self, name: str, settings: Settings, *, backoff: Backoff | None = None) -> None:
        super().__init__(
            name,
            settings,
            kind=KIND,
            render=lambda person: render(person, settings),
            backoff=backoff,
        )
        self._v6 = settings.api_version == 6
        self._checked = CHECKED_KEY[settings.api_version]
        #: userName -> the CMS's id, from the latest listing and our own writes since.
        self._ids: dict[str, str] = {}
        #: userName -> the User object last seen (7.x read-modify-write).
        self._raw: dict[str, dict[str, Any]] = {}
        self._listed = False
        self._list_lock = asyncio.Lock()
        #: Why the CMS refuses every registration, once it said so during this apply().
        self._refused: str | None = None

    # -- protocol ---------------------------------------------------------------------------

    async def observe(self) -> Observed:
        users = await self._listing()
        persons: dict[str, ObservedPerson] = {}
        ids: dict[str, str] = {}
        raw: dict[str, dict[str, Any]] = {}
        for user in sorted(users, key=lambda u: u["id"]):
            pid, remote_id, record = observed_user(user, self.name)
            if pid in persons:
                continue  # the lowest id keeps the name
            persons[pid] = ObservedPerson(record=record, remote_id=remote_id)
            ids[pid] = remote_id
            if not self._v6:
                raw[pid] = user
        self._ids, self._raw, self._listed = ids, raw, True
        return Observed(persons=dict(sorted(persons.items())))

    async def apply(
        self,
        changes: Sequence[Change],
        *,
        stop: asyncio.Event | None = None,
        before: Before | None = None,
    ) -> AsyncIterator[list[Outcome]]:
        self._refused = None
        upserts, deletes = split(changes, UPSERTS, {Action.DELETE})
        limit = self._settings.concurrency
        each = announcing_each(before)
        for phase in (upserts, deletes):
            async for outcome in pipelined(phase, each, self._one, limit, stop=stop):
                yield [outcome]

    # -- one change -------------------------------------------------------------------------

    async def _one(self, change: Change) -> Outcome:
        try:
            if change.action is Action.CREATE:
                return await self._create(change)
            if change.action is Action.UPDATE:
                return await self._update(change)
            if change.action is Action.REPLACE:
                deleted = await self._delete(change)
                return await self._create(change) if deleted.ok else deleted
            return await self._delete(change)
        except _Unauthorized:
            raise  # every other call would be refused too: the whole apply fails
        except _Unreadable as exc:
            return Outcome(change=change, ok=False, error=str(exc))
        except TargetError as exc:
            # Temporary, or an answer we could not read: the next pass re-plans from the listing.
            return Outcome(change=change, ok=False, error=exc.message)

    async def _create(self, change: Change) -> Outcome:
        if self._refused is not None:
            return Outcome(change=change, ok=False, error=self._refused, retryable=False)
        assert change.record is not None
        assert change.person is not None
        photo = change.person.photo
        data = await self._read(photo) if photo is not None else None
        user: dict[str, Any] = {"userName": change.person_id}
        user.update((key, change.record[key]) for key in PROFILE)
        secret = self._settings.initial_password
        password = secret.get_secret_value() if secret is not None else strong_password()
        if self._v6:
            body: dict[str, Any] = {**user, "password": password}
        else:
            groups = sorted({self._settings.group_map.get(g, g) for g in change.person.groups})
            body = {"user": {**user, "password": password}, "groupNames": groups}
        response = await self._call("POST", USERS, json=body)
        if response.status != 200:
            return self._refusal(change, response, creating=True)
        created = self._user(response)
        remote_id = self._remember(created)
        if created.get(self._checked) is False:
            # The CMS reviews registrations: approve the user, as an update would.
            failed = await self._write_profile(change, remote_id, {self._checked: True})
            if failed is not None:
                return _half_created(
                    change, remote_id, f"not approved ({failed.error}); the next pass approves it"
                )
        if photo is not None and data is not None:
            failed = await self._upload(change, remote_id, photo, data)
            if failed is not None:
                return _half_created(
                    change,
                    remote_id,
                    f"the avatar was not stored ({failed.error}); the next pass uploads it again",
                )
        return Outcome(change=change, ok=True, remote_id=remote_id)

    async def _update(self, change: Change) -> Outcome:
        assert change.record is not None
        assert change.person is not None
        remote_id = await self._remote_id(change)
        if remote_id is None:
            return self._gone(change, None)
        # A change without fields (a forced re-push) sends everything.
        changed = {f.field for f in change.fields} if change.fields else set(FIELDS)
        photo = change.person.photo
        data = await self._read(photo) if photo is not None and "avatar" in changed else None
        profile: dict[str, Any] = {k: change.record[k] for k in PROFILE if k in changed}
        if "checked" in changed:
            profile[self._checked] = change.record["checked"]
        if "avatar" in changed and photo is None:
            profile["avatarUrl"] = ""  # back to the default avatar
        if profile:
            failed = await self._write_profile(change, remote_id, profile)
            if failed is not None:
                return failed
        if photo is not None and data is not None:
            failed = await self._upload(change, remote_id, photo, data)
            if failed is not None:
                return failed
        return Outcome(change=change, ok=True, remote_id=remote_id)

    async def _delete(self, change: Change) -> Outcome:
        remote_id = await self._remote_id(change)
        if remote_id is None:
            # Neither the listing nor the ledger knows an id: the user is not on the CMS.
            return Outcome(change=change, ok=True)
        if self._v6:
            response = await self._call("DELETE", f"{USERS}/{remote_id}")
        else:
            response = await self._v7_write(f"{USERS}/{remote_id}/actions/delete", None)
        if response.status not in (200, 404):  # 404: already gone, which is what we wanted
            return self._refusal(change, response, creating=False)
        if response.status == 200:
            # The ledger row goes only once the CMS confirms: the answer must be the deleted
            # user, not any 200 (a proxy's page, a truncated body).
            deleted = self._user(response)
            if deleted.get("userName") != change.person_id:
                raise PermanentTargetError(
                    self.name,
                    f"{response.method} {response.path} answered with another user "
                    f"({deleted.get('userName')!r}); the delete is not confirmed",
                )
        self._forget(change.person_id)
        return Outcome(change=change, ok=True)

    # -- the calls --------------------------------------------------------------------------

    async def _write_profile(
        self, change: Change, remote_id: str, profile: dict[str, Any]
    ) -> Outcome | None:
        """User keys to change (User JSON names); None when the CMS took them."""
        if self._v6:
            return await self._put_v6(change, remote_id, profile)
        return await self._update_v7(change, remote_id, profile)

    async def _put_v6(
        self, change: Change, remote_id: str, profile: dict[str, Any]
    ) -> Outcome | None:
        # Only the changed keys, never `id`: the CMS would UPDATE the row of that id instead.
        response = await self._call("PUT", f"{USERS}/{remote_id}", json=profile)
        if response.status == 404:
            return self._gone(change, remote_id)
        if response.status != 200:
            return self._refusal(change, response, creating=False)
        self._remember(self._user(response))
        return None

    async def _update_v7(
        self, change: Change, remote_id: str, profile: dict[str, Any]
    ) -> Outcome | None:
        # 7.x replaces the whole row: start from the full object, or omitted keys are reset.
        current = self._raw.get(change.person_id)
        if current is None or str(current.get("id")) != remote_id:
            current = await self._get_v7(remote_id)
            if current is None:
                return self._gone(change, remote_id)
        body = {**current, **profile, "id": int(remote_id)}
        response = await self._v7_write(f"{USERS}/{remote_id}/actions/update", body)
        if response.status != 200:
            return self._refusal(change, response, creating=False)
        self._remember(self._user(response))
        return None

    async def _v7_write(self, path: str, body: dict[str, Any] | None) -> Response:
        try:
            return await self._call("POST", path, json=body)
        except TemporaryTargetError as exc:
            if "HTTP 500" not in exc.message:
                raise
            raise TemporaryTargetError(
                self.name,
                f"{exc.message}; SSCMS 7 answers 500 for a user that no longer exists, so it "
                "may have been deleted on the CMS: the next pass re-plans from the listing",
            ) from exc

    async def _get_v7(self, remote_id: str) -> dict[str, Any] | None:
        """The full User by id (an all-digit account is an id); None when the CMS lacks it."""
        response = await self._call("GET", f"{USERS}/{remote_id}")
        if response.status in (204, 404):
            return None
        if response.status != 200:
            raise PermanentTargetError(
                self.name, f"GET {USERS}/{remote_id}: HTTP {response.status}: {_said(response)}"
            )
        user = self._user(response)
        return user if str(user["id"]) == remote_id else None

    async def _upload(
        self, change: Change, remote_id: str, photo: Photo, data: bytes
    ) -> Outcome | None:
        extension = ".png" if photo.media_type == "image/png" else ".jpg"
        part = Part(
            name="file", filename=f"avatar{extension}", content=data, content_type=photo.media_type
        )
        response = await self._call("POST", f"{USERS}/{remote_id}/avatar", multipart=[part])
        if response.status == 404 or (response.status == 400 and NOT_FOUND_V7 in _said(response)):
            return self._gone(change, remote_id)
        if response.status != 200:
            return self._refusal(change, response, creating=False)
        self._remember(self._user(response))
        return None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        multipart: Sequence[Part] | None = None,
    ) -> Response:
        response = await self.client.request(
            method,
            path,
            json=json,
            params=params,
            multipart=multipart,
            headers={"X-SS-API-KEY": self._settings.api_key.get_secret_value()},
        )
        if response.status == 401:
            extra = "" if self._v6 else ", and that its administrator may manage users"
            raise _Unauthorized(
                self.name,
                f"{method} {path}: HTTP 401: the CMS refused the API key; check api_key and that "
                f"the key has the Users scope{extra}",
            )
        return response

    # -- answers ----------------------------------------------------------------------------

    def _user(self, response: Response) -> dict[str, Any]:
        """The User of a write's answer: `{"value": User}` on 6.x, the bare User on 7.x."""
        body = response.json(self.name)
        user = body.get("value") if self._v6 and isinstance(body, dict) else body
        if (
            not isinstance(user, dict)
            or not _is_int(user.get("id"))
            or not isinstance(user.get("userName"), str)
        ):
            raise PermanentTargetError(
                self.name,
                f"malformed response to {response.method} {response.path}: "
                "no user with an integer id and a userName",
            )
        return user

    def _refusal(self, change: Change, response: Response, *, creating: bool) -> Outcome:
        """What a 4xx (or an unexpected status) means for this person."""
        said = _said(response)
        if response.status != 400:
            return Outcome(
                change=change,
                ok=False,
                error=f"{response.method} {response.path}: HTTP {response.status}: {said}",
                retryable=response.status >= 500,
            )
        limited = RATE_LIMITED.search(said)
        if creating and limited is not None:
            minutes = limited.group(1)
            self._refused = (
                f"the CMS accepts one registration per IP address every {minutes} minutes "
                "(UserRegistrationMinMinutes), so a sync cannot create users in bulk: set it to "
                "0 in the CMS admin under 用户设置 (user settings), then run again "
                f"(CMS said: {said})"
            )
            return Outcome(change=change, ok=False, error=self._refused, retryable=False)
        if creating and REGISTRATION_CLOSED in said:
            self._refused = (
                "the CMS refuses new users (IsUserRegistrationAllowed is off): allow user "
                f"registration in the CMS admin under 用户设置 (user settings) (CMS said: {said})"
            )
            return Outcome(change=change, ok=False, error=self._refused, retryable=False)
        if creating and NAME_TAKEN in said:
            return Outcome(
                change=change,
                ok=False,
                error=f"userName {change.person_id} already exists on the CMS: most likely an "
                "earlier try of this very create took effect but its answer was lost (or someone "
                "added the user since the listing); the next pass reads it and updates it "
                f"instead (CMS said: {said})",
            )
        return Outcome(
            change=change, ok=False, error=f"the CMS refused it: {said}", retryable=False
        )

    def _gone(self, change: Change, remote_id: str | None) -> Outcome:
        self._forget(change.person_id)
        where = f" (CMS id {remote_id})" if remote_id is not None else ""
        return Outcome(
            change=change,
            ok=False,
            error=f"user {change.person_id}{where} was deleted on the CMS; "
            "the next pass re-creates it",
        )

    # -- ids ----------------------------------------------------------------------------------

    async def _remote_id(self, change: Change) -> str | None:
        """The CMS id: the latest listing's, else the change's (observed, or the ledger's).

        When neither knows it and nothing was listed yet, the listing is read once to rebuild
        the ids (a ledger written before ids were kept, say)."""
        known = self._ids.get(change.person_id) or change.remote_id
        if known is None and not self._listed:
            async with self._list_lock:
                if not self._listed:
                    await self.observe()
            known = self._ids.get(change.person_id)
        return known

    def _remember(self, user: dict[str, Any]) -> str:
        remote_id = str(user["id"])
        self._ids[user["userName"]] = remote_id
        if not self._v6:
            self._raw[user["userName"]] = user
        return remote_id

    def _forget(self, person_id: str) -> None:
        self._ids.pop(person_id, None)
        self._raw.pop(person_id, None)

    # -- the listing ------------------------------------------------------------------------

    async def _listing(self) -> list[dict[str, Any]]:
        """Every user; read a second time when the pages do not add up, then refused."""
        for attempt in range(2):
            users, counts = await (self._pages_v6() if self._v6 else self._pages_v7())
            unique = {u["id"] for u in users}
            if len(counts) == 1 and len(unique) == next(iter(counts)):
                return users
            if attempt == 1:
                hint = (
                    ""
                    if self._v6
                    else "; some SSCMS 7 releases page their user list wrongly: upgrade the CMS"
                )
                raise PermanentTargetError(
                    self.name,
                    f"the user list does not add up: {len(unique)} users read, but the CMS "
                    f"counts {', '.join(str(c) for c in sorted(counts))}{hint}",
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pages_v6(self) -> tuple[list[dict[str, Any]], set[int]]:
        size = self._settings.page_size
        first, count = await self._page_v6(0)
        users, counts = list(first), {count}
        async for page, page_count in bounded(
            range(size, count, size), self._page_v6, self._settings.concurrency
        ):
            users.extend(page)
            counts.add(page_count)
        return users, counts

    async def _pages_v7(self) -> tuple[list[dict[str, Any]], set[int]]:
        size = self._settings.page_size
        first, count = await self._page_v7(1)
        users, counts = list(first), {count}
        async for page, page_count in bounded(
            range(2, math.ceil(count / size) + 1), self._page_v7, self._settings.concurrency
        ):
            users.extend(page)
            counts.add(page_count)
        return users, counts

    async def _page_v6(self, skip: int) -> tuple[list[dict[str, Any]], int]:
        params = {"top": str(self._settings.page_size), "skip": str(skip)}
        return self._page(await self._call("GET", USERS, params=params), "value")

    async def _page_v7(self, page: int) -> tuple[list[dict[str, Any]], int]:
        size = self._settings.page_size
        params = {
            "page": str(page),
            "perPage": str(size),
            # Early 7.x releases read top/skip instead; the others ignore them.
            "top": str(size),
            "skip": str((page - 1) * size),
        }
        return self._page(await self._call("GET", USERS, params=params), "users")

    def _page(self, response: Response, key: str) -> tuple[list[dict[str, Any]], int]:
        if response.status != 200:
            raise PermanentTargetError(
                self.name,
                f"GET {USERS}: HTTP {response.status}: {_said(response)}; check that url is "
                "the CMS's root (https://cms.example.com)",
            )
        body = response.json(self.name)
        users = body.get(key) if isinstance(body, dict) else None
        count = body.get("count") if isinstance(body, dict) else None
        if not isinstance(users, list) or not _is_int(count) or count < 0:
            raise PermanentTargetError(
                self.name, f"malformed user listing: no {key!r} list and count{self._hint(body)}"
            )
        for user in users:
            observed_user(user, self.name)  # checked here, so the rest can index safely
        return users, count

    def _hint(self, body: Any) -> str:
        if isinstance(body, dict) and self._v6 and "users" in body:
            return "; this looks like SSCMS 7.x: set api_version: 7"
        if isinstance(body, dict) and not self._v6 and "value" in body:
            return "; this looks like SiteServer CMS 6.x: set api_version: 6"
        return ""

    async def _read(self, photo: Photo) -> bytes:
        try:
            return await asyncio.to_thread(Path(photo.path).read_bytes)
        except OSError as exc:
            raise _Unreadable(f"photo could not be read: {exc.strerror}") from exc


def _said(response: Response) -> str:
    """The CMS's own words: `message` (or a problem's `title`), else the body's start."""
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "title"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:MESSAGE_LIMIT]
    return excerpt(response.body) or "(empty body)"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return "" if value is None else str(value)
