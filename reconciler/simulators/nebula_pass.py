"""A SenseNebula Pass face terminal in memory: the login, user and datasync API of vendors.md §2.

No I/O of its own (`base.serve()` puts it on a socket); the choices the docs leave open are listed
on `NebulaPassSimulator`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeGuard

import orjson
from aiohttp import web

from reconciler.simulators.base import Answer, Faults, Handler, Route, Simulator, note_items

#: The body code of success; every other code is an error.
OK = 200

#: type -> meaning (v1.3.0): 3 was the blacklist before v1.3.0 and is refused.
USER_TYPES: Mapping[int, str] = {1: "staff", 2: "visitor", 5: "blacklist"}

#: Byte limits (UTF-8) of the optional text fields.
TEXT_LIMITS: Mapping[str, int] = {
    "ic_number": 128,
    "id_number": 128,
    "job_number": 128,
    "pin": 128,
    "remark": 256,
}

MAX_ID_BYTES = 128
MAX_NAME_BYTES = 128
MAX_AVATAR_BYTES = 10 * 1024 * 1024
MAX_FEATURE_BYTES = 10 * 1024
MAX_GROUPS = 100
MAX_OFFSET = 100_000
MAX_LIMIT = 100

#: validTime of a login, in minutes.
DEFAULT_VALID_MINUTES = 5
MAX_VALID_MINUTES = 1440

_IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG")

#: How datasync/info answers: faithfully, or broken in one of two ways (a fault knob).
Feed = Literal["ok", "no_update_at", "repeated_ids"]


class _Invalid(Exception):
    """One user item refused: becomes an `errors[]` entry, or the answer of a single-user call."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class NebulaPassSimulator(Simulator):
    """The `/v1` and `/v2` user API of a SenseNebula Pass (API v1.3.0), with auth and datasync.

    Choices where the docs are silent [I], which the adapter must not rely on beyond this list:

    - HTTP status: 401 + body code 401 for a missing, unknown or expired token or wrong Basic
      credentials; 400 + code 400 for malformed requests (body not JSON, `user_list`/`ids` not a
      list, paging out of range, an invalid single user); 404 + code 404 for an unknown user id;
      but a login with a wrong account or password answers HTTP **200** with code 1000
      "Account Not Exist" / 1001 "Password Wrong", so clients must check both.
      `error_http_status` (say 200) answers injected faults and routing errors with that HTTP
      status, the code staying in the body, as the docs warn a device may.
    - Batch calls answer HTTP 200, code 200, `data.errors` a list of
      `{"user_id": str | None, "code": int, "msg": str}`: `user_id` is null when the item had no
      string id; code 400 for an invalid field, 409 "type cannot be changed", 507 "user capacity
      reached", 404 "user not found" (deletes). Valid items are applied, in order, regardless;
      a user_id repeated in one batch is applied twice.
    - Upserts keep the stored value of every key the item omits; null resets a key to its
      default (`""`, 0, `[]`, false), so `avatar` and `feature` both ""/null clears the face.
      `update_at` moves on every successful upsert, strictly increasing per user, changed or not.
      `PUT /v1/user/id/{id}` follows the same rules; `user_id`/`type` in it must equal the stored.
    - `avatar` may lack base64 padding (the vendor's own examples do); it must decode to JPG or
      PNG bytes. `groups` are not checked against existing groups: there is no group API here.
    - `feed` is a fault knob for `datasync/info`: "no_update_at" leaves update_at out of every
      entry, "repeated_ids" lists every user twice (a feed a client must not trust).
    - `token_ttl` (seconds) overrides the login's `validTime`; `clock` times tokens only, while
      `create_at`/`update_at` are wall-clock milliseconds.
    """

    LOGIN: ClassVar[Mapping[str, str]] = {"username": "admin", "password": "admin123"}

    def __init__(
        self,
        *,
        username: str = LOGIN["username"],
        password: str = LOGIN["password"],
        token_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 100_000,
        feed: Feed = "ok",
        faults: Faults | None = None,
    ) -> None:
        super().__init__(faults=faults)
        self.feed: Feed = feed
        self.username = username
        self.password = password
        self.token_ttl = token_ttl
        self.clock = clock
        self.max_users = max_users
        #: The HTTP status of injected faults and routing errors; None: their code's own.
        self.error_http_status: int | None = None
        #: user_id -> stored User object, as GET /v1/user/id/{id} answers it.
        self.users: dict[str, dict[str, Any]] = {}
        #: Calls of GET /v2/datasync/clear, which wipes the device: a client must never make one.
        self.dangerous_calls = 0
        self._tokens: dict[str, float] = {}
        #: The listing's order (by create_at, then user_id), valid while `_ordered_at` matches:
        #: paging a large device must not sort every user for every page.
        self._ordered: list[str] = []
        self._ordered_at: tuple[int, int] = (-1, -1)
        self._generation = 0

    def add_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Put a user on the device directly, as if enrolled at its own screen (for seeding)."""
        now = _now_ms()
        user = _blank(user_id, now) | fields
        self.users[user_id] = user
        return user

    def edit_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Edit a stored user as if at the device's own screen: `update_at` moves, as on any
        upsert (drift for a client, found through datasync/info)."""
        return self._apply_single({**fields, "user_id": user_id})

    def touched(self) -> None:
        """Say that `users` was changed from outside the API (seeding), so listings re-sort."""
        self._generation += 1

    def add_person(self, person_id: str, name: str) -> None:
        self.add_user(person_id, name=name)

    def person_names(self) -> dict[str, str]:
        return {uid: str(user.get("name", "")) for uid, user in self.users.items()}

    def photo_of(self, person_id: str) -> bytes | None:
        avatar = self.users[person_id].get("avatar") or ""
        if not avatar:
            return None
        return base64.b64decode(avatar + "=" * (-len(avatar) % 4))

    def routes(self) -> list[Route]:
        authed = self._authed
        return [
            Route("POST", "/v1/auth/login", self._login),
            Route("GET", "/v2/datasync/ping", self._ping, exempt=True),
            Route("GET", "/v2/datasync/info", authed(self._info)),
            Route("GET", "/v2/datasync/clear", authed(self._clear)),
            Route("GET", "/v1/user/offset/{offset}/limit/{limit}", authed(self._list)),
            Route("GET", "/v1/user/id/{id}", authed(self._get)),
            Route("POST", "/v1/user", authed(self._upsert_one), write=True),
            Route("PUT", "/v1/user/id/{id}", authed(self._update_one), write=True),
            Route("DELETE", "/v1/user/id/{id}", authed(self._delete_one), write=True),
            Route("POST", "/v2/user", authed(self._upsert_batch), write=True),
            Route("DELETE", "/v2/user", authed(self._delete_batch), write=True),
        ]

    def error_response(self, status: int, message: str) -> web.Response:
        http_status = self.error_http_status or status
        return _envelope(None, status=http_status, code=status, msg=message)

    def response_headers(self) -> Mapping[str, str]:
        return {
            "model": "SenseNebula Pass S7",
            "sn": "SIMULATOR0001",
            "timestamp": str(_now_ms()),
            "account": self.username,
        }

    def _authed(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self._authorize(request.headers.get("Authorization", ""))
            return await handler(request)

        return guarded

    def _authorize(self, header: str) -> None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
            expiry = self._tokens.get(token)
            if expiry is not None and self.clock() < expiry:
                return
            self._tokens.pop(token, None)
        elif scheme.lower() == "basic" and _basic_credentials(credentials) == (
            self.username,
            self.password,
        ):
            return
        raise _refusal(401, "Unauthorized")

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise _refusal(400, "username and password are required strings")
        minutes = body.get("validTime")
        if minutes is None:
            minutes = DEFAULT_VALID_MINUTES
        if not _is_int(minutes) or not 1 <= minutes <= MAX_VALID_MINUTES:
            raise _refusal(400, f"validTime must be 1..{MAX_VALID_MINUTES} minutes")
        if username != self.username:
            return _envelope(None, code=1000, msg="Account Not Exist")
        if password != self.password:
            return _envelope(None, code=1001, msg="Password Wrong")
        now = self.clock()
        self._tokens = {token: expiry for token, expiry in self._tokens.items() if expiry > now}
        token = secrets.token_urlsafe(32)
        ttl = self.token_ttl if self.token_ttl is not None else minutes * 60.0
        self._tokens[token] = now + ttl
        return _envelope({"token": token})

    async def _ping(self, request: web.Request) -> web.Response:
        return _envelope(None)

    async def _info(self, request: web.Request) -> web.Response:
        users = [
            {"id": user_id, "update_at": user.get("update_at", 0), "groups": user.get("groups", [])}
            for user_id, user in self.users.items()
        ]
        if self.feed == "no_update_at":
            for entry in users:
                del entry["update_at"]
        elif self.feed == "repeated_ids":
            users += users
        return _envelope({"users": users, "groups": [], "rules": []})

    async def _clear(self, request: web.Request) -> web.Response:
        self.dangerous_calls += 1
        self.users.clear()
        self.touched()
        return _envelope(None)

    async def _list(self, request: web.Request) -> web.Response:
        offset = _path_int(request, "offset", MAX_OFFSET)
        limit = _path_int(request, "limit", MAX_LIMIT)
        ordered = self._order()
        page = [self.users[user_id] for user_id in ordered[offset : offset + limit]]
        return _envelope(
            {
                "offset": offset,
                "limit": limit,
                "count": len(page),
                "total": len(ordered),
                "items": page,
            }
        )

    def _order(self) -> list[str]:
        """User ids in listing order; re-sorted only after a write (or a seeding) changed them.

        Keyed by the count too, so a test that edits `users` directly is still seen."""
        version = (self._generation, len(self.users))
        if version != self._ordered_at:
            users = self.users
            self._ordered = sorted(users, key=lambda uid: (users[uid].get("create_at", 0), uid))
            self._ordered_at = version
        return self._ordered

    async def _get(self, request: web.Request) -> web.Response:
        return _envelope(self._stored(request.match_info["id"]))

    async def _upsert_one(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        return _envelope(self._apply_single(await _json_body(request)))

    async def _update_one(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user_id = request.match_info["id"]
        self._stored(user_id)
        body = await _json_object(request)
        if body.get("user_id", user_id) != user_id:
            raise _refusal(400, "user_id cannot be changed")
        if "name" not in body:
            raise _refusal(400, "name is required")
        return _envelope(self._apply_single({**body, "user_id": user_id}))

    async def _delete_one(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user_id = request.match_info["id"]
        self._stored(user_id)
        del self.users[user_id]
        self.touched()
        return _envelope(None)

    async def _upsert_batch(self, request: web.Request) -> web.Response:
        user_list = (await _json_object(request)).get("user_list")
        if not isinstance(user_list, list):
            raise _refusal(400, "user_list must be a list of users")
        note_items(request, len(user_list))
        now = _now_ms()
        errors: list[dict[str, Any]] = []
        for item in user_list:
            try:
                self._upsert(item, now=now)
            except _Invalid as invalid:
                errors.append(_error_item(_reported_id(item), invalid.code, invalid.msg))
        return _envelope({"errors": errors})

    async def _delete_batch(self, request: web.Request) -> web.Response:
        ids = (await _json_object(request)).get("ids")
        if not isinstance(ids, list):
            raise _refusal(400, "ids must be a list of user ids")
        note_items(request, len(ids))
        errors: list[dict[str, Any]] = []
        for user_id in ids:
            if not isinstance(user_id, str):
                errors.append(_error_item(None, 400, "id must be a string"))
            elif self.users.pop(user_id, None) is None:
                errors.append(_error_item(user_id, 404, "user not found"))
        self.touched()
        return _envelope({"errors": errors})

    def _stored(self, user_id: str) -> dict[str, Any]:
        user = self.users.get(user_id)
        if user is None:
            raise _refusal(404, "user not found")
        return user

    def _apply_single(self, item: object) -> dict[str, Any]:
        try:
            return self._upsert(item, now=_now_ms())
        except _Invalid as invalid:
            raise _refusal(invalid.code, invalid.msg) from invalid

    def _upsert(self, item: object, *, now: int) -> dict[str, Any]:
        """Validate one User object and create or update it; raises _Invalid, changing nothing."""
        if not isinstance(item, dict):
            raise _Invalid(400, "a user must be a JSON object")
        user_id = _user_id(item)
        existing = self.users.get(user_id)
        changes = _changes(item, creating=existing is None)
        if existing is None:
            if len(self.users) >= self.max_users:
                raise _Invalid(507, "user capacity reached")
            user = _blank(user_id, now) | changes
            self.touched()  # a new user joins the listing's order
        else:
            if changes.get("type", existing.get("type")) != existing.get("type"):
                raise _Invalid(409, "type cannot be changed")
            user = existing | changes
            # Strictly increasing, so a client diffing update_at sees two upserts within 1 ms.
            user["update_at"] = max(now, int(existing.get("update_at", 0)) + 1)
        self.users[user_id] = user
        return user


def _refusal(status: int, msg: str) -> Answer:
    return Answer(_envelope(None, status=status, code=status, msg=msg))


def _envelope(data: object, *, status: int = 200, code: int = OK, msg: str = "OK") -> web.Response:
    body = orjson.dumps({"code": code, "msg": msg, "data": data})
    return web.Response(status=status, body=body, content_type="application/json")


def _error_item(user_id: str | None, code: int, msg: str) -> dict[str, Any]:
    return {"user_id": user_id, "code": code, "msg": msg}


def _basic_credentials(encoded: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    login, colon, password = decoded.partition(":")
    return (login, password) if colon else None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; JSON true is not a number here.
    return isinstance(value, int) and not isinstance(value, bool)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _bytes_within(text: str, low: int, high: int) -> bool:
    """low <= UTF-8 length <= high, encoding only when the character count cannot tell (a
    character is 1 to 4 bytes): a 100-person batch is checked field by field."""
    if low <= len(text) and len(text) * 4 <= high:
        return True
    return low <= _utf8_len(text) <= high


async def _json_body(request: web.Request) -> object:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise _refusal(400, "request body is not valid JSON") from None


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _refusal(400, "request body must be a JSON object")
    return body


def _path_int(request: web.Request, name: str, maximum: int) -> int:
    text = request.match_info[name]
    if not (text.isascii() and text.isdigit()) or int(text) > maximum:
        raise _refusal(400, f"{name} must be an integer in 0..{maximum}")
    return int(text)


def _reported_id(item: object) -> str | None:
    user_id = item.get("user_id") if isinstance(item, dict) else None
    return user_id if isinstance(user_id, str) else None


def _blank(user_id: str, now: int) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "name": "",
        "type": 1,
        "avatar": "",
        "feature": "",
        "ic_number": "",
        "id_number": "",
        "job_number": "",
        "pin": "",
        "guest_time_start": 0,
        "guest_time_end": 0,
        "groups": [],
        "is_admin": False,
        "remark": "",
        "create_at": now,
        "update_at": now,
    }


def _user_id(item: dict[str, Any]) -> str:
    user_id = item.get("user_id")
    if user_id is None:
        raise _Invalid(400, "user_id is required")
    if not isinstance(user_id, str):
        raise _Invalid(400, "user_id must be a string")
    if not _bytes_within(user_id, 1, MAX_ID_BYTES):
        raise _Invalid(400, f"user_id must be 1..{MAX_ID_BYTES} bytes")
    return user_id


def _changes(item: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The stored values an item sets; keys it omits are absent (create_at/update_at ignored)."""
    changes: dict[str, Any] = {}
    if creating or "name" in item:
        changes["name"] = _name(item.get("name"))
    if item.get("type") is not None:
        changes["type"] = _user_type(item["type"])
    if "avatar" in item:
        changes["avatar"] = _avatar(item["avatar"])
    if "feature" in item:
        changes["feature"] = _text(item["feature"], "feature", MAX_FEATURE_BYTES)
    for key, limit in TEXT_LIMITS.items():
        if key in item:
            changes[key] = _text(item[key], key, limit)
    for key in ("guest_time_start", "guest_time_end"):
        if key in item:
            changes[key] = _millis(item[key], key)
    if "groups" in item:
        changes["groups"] = _groups(item["groups"])
    if "is_admin" in item:
        changes["is_admin"] = _flag(item["is_admin"], "is_admin")
    return changes


def _name(value: object) -> str:
    if value is None:
        raise _Invalid(400, "name is required")
    if not isinstance(value, str) or not _bytes_within(value, 1, MAX_NAME_BYTES):
        raise _Invalid(400, f"name must be a string of 1..{MAX_NAME_BYTES} bytes")
    return value


def _user_type(value: object) -> int:
    if _is_int(value) and value in USER_TYPES:
        return value
    if _is_int(value) and value == 3:
        raise _Invalid(400, "type 3 is the blacklist code before v1.3.0: use 5")
    raise _Invalid(400, "type must be 1 (staff), 2 (visitor) or 5 (blacklist)")


def _text(value: object, key: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _bytes_within(value, 0, limit):
        raise _Invalid(400, f"{key} must be a string of at most {limit} bytes")
    return value


def _avatar(value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise _Invalid(400, "avatar must be a base64 string")
    try:
        image = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(400, "avatar is not valid base64") from None
    if len(image) > MAX_AVATAR_BYTES:
        raise _Invalid(400, "avatar is larger than 10 MB")
    if not image.startswith(_IMAGE_MAGICS):
        raise _Invalid(400, "avatar must be a JPG or PNG image")
    return value


def _millis(value: object, key: str) -> int:
    if value is None:
        return 0
    if _is_int(value) and value >= 0:
        return value
    raise _Invalid(400, f"{key} must be a Unix time in milliseconds")


def _groups(value: object) -> list[str]:
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_GROUPS
        or not all(isinstance(group, str) and _bytes_within(group, 1, 128) for group in value)
    ):
        raise _Invalid(400, f"groups must be a list of at most {MAX_GROUPS} group ids")
    return list(value)


def _flag(value: object, key: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Invalid(400, f"{key} must be a boolean")
    return value
