"""A SiteServer CMS user base in memory: the 6.x `/api/v1/users` API or SSCMS 7.x (vendors.md §4).

No I/O of its own (`base.serve()` puts it on a socket); the choices the sources leave open are
listed on `SiteServerSimulator`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import orjson
from aiohttp import web

from reconciler.simulators.base import Answer, Faults, Handler, Route, Simulator, note_items

ApiVersion = Literal[6, 7]
PasswordRestriction = Literal["None", "LetterAndDigit", "LetterAndDigitAndSymbol"]
#: How a 7.x server reads its listing's query: `page`/`perPage` (current, vendors.md), `skip`
#: (`top`/`skip`, early 7.x releases) or `broken` (one release read perPage from `page`).
V7Paging = Literal["page", "skip", "broken"]

#: `UserDao.IsUserNameCompliant`: these characters are refused in a userName...
_USERNAME_FORBIDDEN = frozenset(" \u3000':")
#: ...and so are those `DirectoryUtils.IsDirectoryNameCompliant` refuses (after @ and . are cut).
_DIRECTORY_FORBIDDEN = frozenset('\\/*?"<>|')
#: `StringUtils.IsMobile`.
MOBILE = re.compile(r"^1[3-9]\d{9}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: `EFileSystemTypeUtils.IsImage`: the extensions an avatar may have.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
_IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_AVATAR = "/sitefiles/assets/images/default_avatar.png"
#: Web API's answer to an unhandled exception (`InternalServerError(ex)` seen remotely).
ERROR_OCCURRED = "An error has occurred."
#: What the 7.x global exception handler says about a null dereference.
NULL_REFERENCE = "Object reference not set to an instance of an object."

RESTRICTION_TEXT: Mapping[str, str] = {
    "None": "不限制",
    "LetterAndDigit": "字母和数字组合",
    "LetterAndDigitAndSymbol": "字母、数字以及符号组合",
}

#: 6.x User JSON (`UserInfo.ToDictionary`, camelCase) with its defaults; password* never shown.
V6_FIELDS: Mapping[str, Any] = {
    "id": 0,
    "userName": "",
    "createDate": None,
    "lastResetPasswordDate": None,
    "lastActivityDate": None,
    "groupId": 0,
    "countOfLogin": 0,
    "countOfFailedLogin": 0,
    "isChecked": False,
    "isLockedOut": False,
    "displayName": "",
    "mobile": "",
    "email": "",
    "avatarUrl": "",
    "gender": "",
    "birthday": "",
    "weiXin": "",
    "qq": "",
    "weiBo": "",
    "bio": "",
}
#: 7.x User JSON (SSCMS `User`) with its defaults: what an update resets omitted keys to.
V7_FIELDS: Mapping[str, Any] = {
    "id": 0,
    "guid": "",
    "createdDate": None,
    "lastModifiedDate": None,
    "userName": "",
    "lastResetPasswordDate": None,
    "lastActivityDate": None,
    "departmentId": 0,
    "manager": False,
    "countOfLogin": 0,
    "countOfFailedLogin": 0,
    "checked": False,
    "locked": False,
    "displayName": "",
    "mobile": "",
    "mobileVerified": False,
    "email": "",
    "avatarUrl": "",
    "openId": "",
    "departmentName": "",
}
#: Keys a client cannot set on a 7.x user: kept from the stored row (or assigned on create).
_V7_SERVER_OWNED = frozenset({"id", "guid", "createdDate", "userName", "departmentName"})
_PASSWORD_KEYS = frozenset({"password", "passwordFormat", "passwordSalt", "confirmPassword"})


class SiteServerSimulator(Simulator):
    """The users API of SiteServer CMS 6.x (`api_version=6`) or SSCMS 7.x (`api_version=7`).

    Faithful to vendors.md §4 and the 6.x sources (`UsersController`, `UserDao`,
    `PageResponse`): users by integer id ascending; the listing's `next`/`last` links computed
    with the vendor's integer division (wrong when `skip` is not a multiple of `top`, and `last`
    is one page short when `count % top != 0`); 6.x `POST /users` has no auth check; 6.x `PUT`
    is a partial, case-insensitive merge where an `id` key re-targets the UPDATE to that other
    user's row; 7.x `actions/update` replaces the row with the posted object (omitted keys reset
    to defaults; id, userName, guid and createdDate kept); passwords only on create, never
    serialised, and compared as MD5 hex on login; the per-IP registration limit
    (`registration_min_minutes`), `registration_allowed`, password length/restriction, userName
    and email/mobile uniqueness (an email or mobile that equals an existing userName counts),
    and `mobile = userName` when the userName looks like a mobile number and mobile is empty.

    Choices where the sources are silent [I], which the adapter must not rely on beyond this list:

    - Errors: 6.x answers 401 and 404 with an empty body, 400 `{"message"}`, 500
      `{"message": "An error has occurred."}` (also for a create body that is not a JSON object,
      a `top` of 0 or a negative `top`/`skip`); 7.x answers 401 as an RFC 7807 problem, 400
      `{"message"}`, and 500 `{"message", "createdDate"}` for an update or delete of a missing
      id (the null dereference vendors.md predicts); 7.x `GET /users/{account}` answers 204.
    - 7.x `actions/update` uses the route id (a body `id` is ignored, as `request.Id = id`
      does) and answers the stored row; a body that is not an object is a 400 problem.
    - A 6.x create ignores `id`, the counters and dates in its body; `groupId` is zeroed
      (`IsUserRegistrationGroup` off). 7.x group membership is by name from `groups`; unknown
      names are ignored; membership is kept in `memberships` and is not part of the User JSON.
    - Avatars: 6.x stores every file part of the multipart body, 7.x only the part `file`; the
      file name must have an image extension AND the bytes an image signature (the real server
      checks only the extension). The stored URL is `/upload/users/{id}/avatar-{n}{ext}`, served
      by `GET` on that path; `GET /users/{id}/avatar` answers the absolute URL (the default
      avatar's when none is set).
    - The registration limit counts successful creates per client IP with `clock` (seconds).
    - 6.x user-style fields (`user_styles`) exist only when configured, as "" by default.
    """

    LOGIN: ClassVar[Mapping[str, str]] = {"api_key": "sim-api-key-0001"}

    def __init__(
        self,
        *,
        api_version: ApiVersion = 6,
        api_key: str = LOGIN["api_key"],
        scopes: Iterable[str] = ("Users",),
        admin_permission: bool = True,
        password_min_length: int = 6,
        password_restriction: PasswordRestriction = "LetterAndDigit",  # noqa: S107 (a rule)
        registration_allowed: bool = True,
        registration_checked: bool = True,
        registration_min_minutes: int = 0,
        user_styles: Iterable[str] = (),
        groups: Iterable[str] = (),
        v7_paging: V7Paging = "page",
        clock: Callable[[], float] = time.monotonic,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(faults=faults)
        if api_version not in (6, 7):
            raise ValueError("api_version must be 6 or 7")
        self.api_version: ApiVersion = api_version
        self.api_key = api_key
        #: Scopes of the key: every users endpoint needs "Users".
        self.scopes = set(scopes)
        #: 7.x: whether the admin owning the key has the SettingsUsers permission.
        self.admin_permission = admin_permission
        self.password_min_length = password_min_length
        self.password_restriction: PasswordRestriction = password_restriction
        self.registration_allowed = registration_allowed
        self.registration_checked = registration_checked
        self.registration_min_minutes = registration_min_minutes
        self.user_styles = tuple(user_styles)
        self.groups = set(groups)
        self.v7_paging: V7Paging = v7_paging
        self.clock = clock
        #: id -> the stored user, exactly as the API serialises it (no password).
        self.users: dict[int, dict[str, Any]] = {}
        #: id -> the clear password given at creation (the real server keeps it encrypted).
        self.passwords: dict[int, str] = {}
        #: 7.x: id -> group names the user was registered with.
        self.memberships: dict[int, list[str]] = {}
        #: Uploaded files by URL path.
        self.files: dict[str, bytes] = {}
        #: (method, path, JSON body) of every write, with passwords replaced by "***".
        self.bodies: list[tuple[str, str, Any]] = []
        self._next_id = 1
        self._uploads = 0
        self._registrations: dict[str, float] = {}

    # -- the uniform inspection API -------------------------------------------------------------

    def person_names(self) -> dict[str, str]:
        return {u["userName"]: u["displayName"] for u in self.users.values()}

    def photo_of(self, person_id: str) -> bytes | None:
        user = self.user_named(person_id)
        return None if user is None else self.files.get(user["avatarUrl"])

    def add_person(self, person_id: str, name: str) -> None:
        self.add_user(person_id, displayName=name)

    def add_user(
        self,
        user_name: str,
        *,
        password: str = "Seed-1234",  # noqa: S107 (a seeded fake user, not a secret)
        **fields: Any,
    ) -> int:
        """Put a user in directly, as if registered through the CMS's own pages (for seeding)."""
        user_id = self._new_id()
        user = self._blank(user_id) | {"userName": user_name} | fields
        self.users[user_id] = user
        self.passwords[user_id] = password
        return user_id

    def user_named(self, user_name: str) -> dict[str, Any] | None:
        return next((u for u in self.users.values() if u["userName"] == user_name), None)

    # -- routes -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        # `{id:int}` on the vendor: the handlers answer 404 for an id that is not digits (a
        # regex here would hide the template from the request log).
        user = "/api/v1/users/{id}"
        if self.api_version == 6:
            return [
                Route("GET", "/api/v1/ping", self._ping, exempt=True),
                Route("GET", "/api/v1/users", self._authed(self._list_v6)),
                Route("POST", "/api/v1/users", self._create, write=True),
                Route("POST", "/api/v1/users/actions/login", self._login),
                Route("GET", user, self._authed(self._get_v6)),
                Route("PUT", user, self._authed(self._update_v6), write=True),
                Route("DELETE", user, self._authed(self._delete_v6), write=True),
                Route("GET", user + "/avatar", self._get_avatar),
                Route("POST", user + "/avatar", self._authed(self._upload), write=True),
                Route("GET", "/upload/users/{id}/{name}", self._file, exempt=True),
            ]
        return [
            Route("GET", "/api/ping", self._ping, exempt=True),
            Route("GET", "/api/v1/users", self._authed(self._list_v7)),
            Route("POST", "/api/v1/users", self._authed(self._create), write=True),
            Route("POST", "/api/v1/users/actions/login", self._login),
            Route("GET", "/api/v1/users/{account}", self._authed(self._get_v7, admin=False)),
            Route("POST", user + "/actions/update", self._authed(self._update_v7), write=True),
            Route("POST", user + "/actions/delete", self._authed(self._delete_v7), write=True),
            Route("GET", user + "/avatar", self._get_avatar),
            Route("POST", user + "/avatar", self._authed(self._upload), write=True),
            Route("GET", "/upload/users/{id}/{name}", self._file, exempt=True),
        ]

    def error_response(self, status: int, message: str) -> web.Response:
        if status in (401, 404) and self.api_version == 6:
            return web.Response(status=status)
        if status == 401:
            return _problem(401, "Unauthorized")
        return _json({"message": message}, status=status)

    def _authed(self, handler: Handler, *, admin: bool = True) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self._authorize(request, admin=admin)
            return await handler(request)

        return guarded

    def _authorize(self, request: web.Request, *, admin: bool) -> None:
        key = request.headers.get("X-SS-API-KEY") or request.query.get("apiKey")
        if not key and self.api_version == 6:
            key = request.cookies.get("SS-API-KEY")
        allowed = key == self.api_key and "Users" in self.scopes
        if self.api_version == 7 and admin:
            allowed = allowed and self.admin_permission
        if not allowed:
            raise Answer(self.error_response(401, "Unauthorized"))

    # -- reads --------------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def _list_v6(self, request: web.Request) -> web.Response:
        top = _query_int(request, "top", 20)
        skip = _query_int(request, "skip", 0)
        if top <= 0 or skip < 0:
            # PageResponse divides by top; a negative offset is an SQL error.
            raise self._crash()
        ordered = [self.users[i] for i in sorted(self.users)]
        count = len(ordered)
        body: dict[str, Any] = {"value": ordered[skip : skip + top]}
        body.update(_page_links(str(request.url), top, skip, count))
        body["count"] = count
        return _json(body)

    async def _list_v7(self, request: web.Request) -> web.Response:
        if self.v7_paging == "skip":
            limit = _query_int(request, "top", 0)
            limit = limit if limit > 0 else 20
            offset = max(0, _query_int(request, "skip", 0))
        else:
            page = _query_int(request, "page", 1)
            page = page if page > 0 else 1
            per_page = page if self.v7_paging == "broken" else _query_int(request, "perPage", 20)
            per_page = per_page if per_page > 0 else 20
            offset, limit = (page - 1) * per_page, per_page
        ordered = [self.users[i] for i in sorted(self.users)]
        return _json({"count": len(ordered), "users": ordered[offset : offset + limit]})

    async def _get_v6(self, request: web.Request) -> web.Response:
        return _json({"value": self._stored(request)})

    async def _get_v7(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        # The order SSCMS detects an account in: mobile, email, id, userName, openId.
        if MOBILE.match(account):
            user = self._find("mobile", account)
        elif EMAIL.match(account):
            user = self._find("email", account)
        elif account.isascii() and account.isdigit():
            user = self.users.get(int(account))
        else:
            user = self._find("userName", account) or self._find("openId", account)
        if user is None:
            return web.Response(status=204)
        return _json(user)

    async def _get_avatar(self, request: web.Request) -> web.Response:
        user = self.users.get(self._route_id(request))
        url = user["avatarUrl"] if user is not None and user["avatarUrl"] else DEFAULT_AVATAR
        absolute = f"{request.scheme}://{request.host}{url}"
        return _json({"value": absolute})

    async def _file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    # -- writes -------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        body = await _json_body(request)
        self._record_body(request, body)
        if self.api_version == 6:
            if not isinstance(body, dict):
                raise self._crash()  # new UserInfo(null)
            fields, password, group_names = body, body.get("password"), []
        else:
            if not isinstance(body, dict) or not isinstance(body.get("user"), dict):
                raise Answer(_problem(400, "One or more validation errors occurred."))
            fields = body["user"]
            password = fields.get("password")
            names = body.get("groupNames")
            group_names = (
                [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
            )
        if not self.registration_allowed:
            raise _bad("对不起，系统已禁止新用户注册！")
        user = self._blank(0)
        user.update(self._loaded(fields, creating=True))
        if MOBILE.match(user["userName"]) and not user["mobile"]:
            user["mobile"] = user["userName"]
        ip = request.remote or ""
        self._check_registration(ip, password, user)
        user_id = self._new_id()
        user["id"] = user_id
        checked_key = "isChecked" if self.api_version == 6 else "checked"
        user[checked_key] = self.registration_checked
        if self.api_version == 7:
            user["guid"] = secrets.token_hex(16)
            self.memberships[user_id] = [n for n in group_names if n in self.groups]
        assert isinstance(password, str)
        self.users[user_id] = user
        self.passwords[user_id] = password
        self._registrations[ip] = self.clock()
        return self._user_answer(user)

    async def _update_v6(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user_id = self._route_id(request)
        body = await _json_body(request)
        self._record_body(request, body)
        if not isinstance(body, dict):
            raise _bad("Could not read user from body")
        stored = self.users.get(user_id)
        if stored is None:
            raise Answer(web.Response(status=404))
        self._validate_update_v6(body, stored)
        # userInfo.Load(body): every known key, case-insensitively, `id` included.
        merged = stored | self._loaded(body, creating=False)
        target = merged["id"]
        if target in self.users:
            # UPDATE ... WHERE Id = @Id: an `id` in the body re-targets the whole row.
            self.users[target] = merged
        return _json({"value": merged})

    async def _update_v7(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user_id = self._route_id(request)
        body = await _json_body(request)
        self._record_body(request, body)
        if not isinstance(body, dict):
            raise Answer(_problem(400, "One or more validation errors occurred."))
        stored = self.users.get(user_id)
        if stored is None:
            raise self._crash(NULL_REFERENCE)
        posted = self._loaded(body, creating=False)
        for key in ("email", "mobile"):
            value = posted.get(key, "")
            if value and value != stored[key] and self._taken(key, value, but=user_id):
                raise _bad(_TAKEN[key])
        # The row becomes the posted object: omitted keys go back to their defaults.
        replaced = self._blank(user_id) | posted
        for key in _V7_SERVER_OWNED:
            replaced[key] = stored[key]
        replaced["lastModifiedDate"] = _now()
        self.users[user_id] = replaced
        return _json(replaced)

    async def _delete_v6(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user = self.users.pop(self._route_id(request), None)
        if user is None:
            raise Answer(web.Response(status=404))
        self.passwords.pop(user["id"], None)
        return _json({"value": user})

    async def _delete_v7(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user = self.users.pop(self._route_id(request), None)
        if user is None:
            raise self._crash(NULL_REFERENCE)
        self.passwords.pop(user["id"], None)
        self.memberships.pop(user["id"], None)
        return _json(user)

    async def _upload(self, request: web.Request) -> web.Response:
        note_items(request, 1)
        user_id = self._route_id(request)
        user = self.users.get(user_id)
        if user is None:
            if self.api_version == 6:
                raise Answer(web.Response(status=404))
            raise _bad("未找到该数据!")
        try:
            form = await request.post()
        except ValueError:
            raise _bad("Could not read image from body") from None
        files = [
            (name, value)
            for name, value in form.items()
            if isinstance(value, web.FileField) and (self.api_version == 6 or name == "file")
        ]
        if not files and self.api_version == 7:
            raise _bad("请选择有效的文件上传!")
        for _, upload in files:
            extension = _extension(upload.filename)
            data = upload.file.read()
            if extension not in IMAGE_EXTENSIONS or not data.startswith(_IMAGE_MAGICS):
                raise _bad(
                    "image file extension is not correct"
                    if self.api_version == 6
                    else "此图片格式已被禁止上传!"
                )
            self._uploads += 1
            url = f"/upload/users/{user_id}/avatar-{self._uploads}{extension}"
            self.files[url] = data
            user["avatarUrl"] = url
        return self._user_answer(user)

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _bad("帐号或密码错误")
        account, password = body.get("account"), body.get("password")
        user = None
        if isinstance(account, str) and account:
            user = self._find("userName", account)
            if user is None and MOBILE.match(account):
                user = self._find("mobile", account)
            if user is None and EMAIL.match(account):
                user = self._find("email", account)
        if user is None:
            raise _bad("帐号或密码错误")
        if not user["isChecked" if self.api_version == 6 else "checked"]:
            raise _bad("此账号未审核，无法登录")
        if user["isLockedOut" if self.api_version == 6 else "locked"]:
            raise _bad("此账号被锁定，无法登录")
        clear = self.passwords.get(user["id"], "")
        if password != hashlib.md5(clear.encode(), usedforsecurity=False).hexdigest():
            user["countOfFailedLogin"] += 1
            raise _bad("帐号或密码错误")
        user["countOfLogin"] += 1
        token = secrets.token_urlsafe(24)
        if self.api_version == 6:
            return _json({"value": user, "accessToken": token, "expiresAt": _now()})
        return _json({"user": user, "accessToken": token})

    # -- validation -----------------------------------------------------------------------------

    def _check_registration(self, ip: str, password: object, user: dict[str, Any]) -> None:
        """`UserDao.InsertValidate`, in its order; raises the first 400 it finds."""
        minutes = self.registration_min_minutes
        last = self._registrations.get(ip)
        if minutes > 0 and last is not None and self.clock() - last < minutes * 60:
            raise _bad(f"同一IP在{minutes}分钟内只能注册一次")
        if not isinstance(password, str) or not password:
            raise _bad("密码不能为空")
        if len(password) < self.password_min_length:
            raise _bad(f"密码长度必须大于等于{self.password_min_length}")
        if not _password_ok(password, self.password_restriction):
            raise _bad(f"密码不符合规则，请包含{RESTRICTION_TEXT[self.password_restriction]}")
        user_name = user["userName"]
        if not user_name:
            raise _bad("用户名为空，请填写用户名")
        if self._find("userName", user_name) is not None:
            raise _bad("用户名已被注册，请更换用户名")
        if not _user_name_ok(user_name):
            raise _bad("用户名包含不规则字符，请更换用户名")
        for key in ("email", "mobile"):
            if user[key] and self._taken(key, user[key], but=None):
                raise _bad(_TAKEN[key])

    def _validate_update_v6(self, body: dict[str, Any], stored: dict[str, Any]) -> None:
        """`UserDao.UpdateValidate`: looks only at the exact camelCase keys."""
        for key in ("userName", "email", "mobile"):
            if key not in body:
                continue
            value = body[key]
            if value is not None and not isinstance(value, str):
                raise self._crash()  # (string) body[key]: an invalid cast
            if not value or value == stored[key]:
                continue
            if key == "userName":
                if not _user_name_ok(value):
                    raise _bad("用户名包含不规则字符，请更换用户名")
                if self._find("userName", value) is not None:
                    raise _bad("用户名已被注册，请更换用户名")
            elif self._taken(key, value, but=stored["id"]):
                raise _bad(_TAKEN[key])

    def _taken(self, key: str, value: str, *, but: int | None) -> bool:
        """`IsEmailExists` / `IsMobileExists`: another user's userName also counts."""
        return any(
            u["id"] != but and (u[key] == value or u["userName"] == value)
            for u in self.users.values()
        )

    def _loaded(self, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        """The known keys of a posted user (case-insensitive like `UserInfo.Load`), typed."""
        known = {k.lower(): k for k in self._blank(0)}
        loaded: dict[str, Any] = {}
        for raw_key, value in body.items():
            key = known.get(raw_key.lower())
            if key is None:
                if self.api_version == 7 and raw_key not in _PASSWORD_KEYS:
                    loaded[raw_key] = value  # 7.x keeps unknown keys as extension values
                continue
            if creating and key not in self._client_keys():
                continue
            loaded[key] = _typed(key, value, self._blank(0)[key], self._crash)
        return loaded

    def _client_keys(self) -> frozenset[str]:
        if self.api_version == 6:
            owned = {"id", "createDate", "lastResetPasswordDate", "lastActivityDate", "groupId"}
            owned |= {"countOfLogin", "countOfFailedLogin", "isChecked"}
        else:
            owned = set(_V7_SERVER_OWNED - {"userName"}) | {"lastModifiedDate", "checked"}
            owned |= {"lastResetPasswordDate", "lastActivityDate", "countOfLogin"}
            owned |= {"countOfFailedLogin"}
        return frozenset(self._blank(0)) - owned

    # -- helpers --------------------------------------------------------------------------------

    def _blank(self, user_id: int) -> dict[str, Any]:
        if self.api_version == 6:
            user = dict(V6_FIELDS) | dict.fromkeys(self.user_styles, "")
            now = _now()
            user.update(createDate=now, lastResetPasswordDate=now, lastActivityDate=now)
        else:
            user = dict(V7_FIELDS)
            now = _now()
            user.update(createdDate=now, lastModifiedDate=now, lastResetPasswordDate=now)
            user["lastActivityDate"] = now
        user["id"] = user_id
        return user

    def _new_id(self) -> int:
        user_id = self._next_id
        self._next_id += 1
        return user_id

    def _find(self, key: str, value: str) -> dict[str, Any] | None:
        return next((u for u in self.users.values() if u.get(key) == value), None)

    def _route_id(self, request: web.Request) -> int:
        text = request.match_info["id"]
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise Answer(self.error_response(404, "Not Found"))
        return int(text)

    def _stored(self, request: web.Request) -> dict[str, Any]:
        user = self.users.get(self._route_id(request))
        if user is None:
            raise Answer(web.Response(status=404))
        return user

    def _user_answer(self, user: dict[str, Any]) -> web.Response:
        return _json({"value": user} if self.api_version == 6 else user)

    def _crash(self, message: str = ERROR_OCCURRED) -> Answer:
        if self.api_version == 6:
            return Answer(_json({"message": ERROR_OCCURRED}, status=500))
        return Answer(_json({"message": message, "createdDate": _now()}, status=500))

    def _record_body(self, request: web.Request, body: object) -> None:
        self.bodies.append((request.method, request.path, _redacted(body)))


_TAKEN: Mapping[str, str] = {
    "email": "电子邮件地址已被注册，请更换邮箱",
    "mobile": "手机号码已被注册，请更换手机号码",
}


def _redacted(body: object) -> object:
    """A posted body with every password replaced, nested `user` included."""
    if not isinstance(body, dict):
        return body
    return {
        k: "***" if k in _PASSWORD_KEYS else _redacted(v) if k == "user" else v
        for k, v in body.items()
    }


def _json(body: object, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _problem(status: int, title: str) -> web.Response:
    body = {
        "type": "https://tools.ietf.org/html/rfc7231",
        "title": title,
        "status": status,
        "traceId": "|" + secrets.token_hex(8) + ".",
    }
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/problem+json"
    )


def _bad(message: str) -> Answer:
    return Answer(_json({"message": message}, status=400))


def _now() -> str:
    # Server local time, as the vendor's serializer writes it.
    return datetime.now().astimezone().strftime(DATE_FORMAT)


def _query_int(request: web.Request, name: str, default: int) -> int:
    """`GetQueryInt`: a missing or non-numeric value is the default."""
    text = request.query.get(name, "")
    try:
        return int(text)
    except ValueError:
        return default


def _page_links(url: str, top: int, skip: int, count: int) -> dict[str, str]:
    """`PageResponse.Count`'s links, integer divisions included."""
    base = url.split("?", 1)[0]
    pages = count // top
    index = skip // top

    def link(at: int) -> str:
        return f"{base}?{urlencode({'top': top, 'skip': at})}"

    links: dict[str, str] = {}
    if skip > 0:
        links["first"] = link(0)
        links["prev"] = link((index - 1) * top)
    if top + skip < count:
        links["next"] = link((index + 1) * top)
        links["last"] = link((pages - 1) * top)
    return links


def _password_ok(password: str, restriction: str) -> bool:
    letters = any(c.isascii() and c.isalpha() for c in password)
    digits = any(c.isdigit() for c in password)
    symbols = any(not c.isalnum() for c in password)
    if restriction == "LetterAndDigit":
        return letters and digits
    if restriction == "LetterAndDigitAndSymbol":
        return letters and digits and symbols
    return True


def _user_name_ok(user_name: str) -> bool:
    name = user_name.replace("@", "").replace(".", "")
    return not any(
        c in _USERNAME_FORBIDDEN or c in _DIRECTORY_FORBIDDEN or ord(c) < 32 for c in name
    )


def _typed(key: str, value: Any, default: Any, crash: Callable[[], Answer]) -> Any:
    """A posted value converted to the column's type; what cannot convert is a server error."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise crash()
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise crash()
    if value is None:
        return "" if isinstance(default, str) else None
    return value if isinstance(value, str) else str(value)


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot >= 0 else ""


async def _json_body(request: web.Request) -> object:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
