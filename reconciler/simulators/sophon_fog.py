"""A SophonFogSys face box (SE3/SE5 "AI mini box") in memory: the person, group and image API
of vendors.md §1 on port 5555, unauthenticated.

No I/O of its own (`base.serve()` puts it on a socket); the choices the docs leave open are listed
on `SophonFogSimulator`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import secrets
from collections.abc import Collection, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Literal, TypeGuard

import orjson
from aiohttp import web

from reconciler.simulators.base import Answer, Faults, Route, Simulator, note_items

USERS = "/SophonFogSys/api/users"
GROUPS = "/SophonFogSys/api/groups"
IMAGES = "/SophonFace/api/images/{image_id}"
WIPE = "/SophonFogSys/api/WipeData"
PERMISSIONS = "/SophonFogSys/api/permissions"
PERMISSION_IDS = "/SophonFace/api/permissions"

#: The documented code table (MQ-interface doc, applied to REST [I]): code -> symbolic status.
STATUSES: Mapping[int, str] = {
    40000: "BAD_REQUEST",
    40001: "UNSUPPORT_CONTENT_TYPE",
    40002: "EMPTY_REQUEST_JSON",
    40003: "IMAGE_ERROR",
    40004: "NO_FACE",
    40005: "BOOLEAN_ARGUMENT_ERROR",
    40006: "LOW_QUALITY_ERROR",
    40007: "IMAGE_SIZE_TOO_LARGE_ERROR",
    40008: "EMPTY_GROUP_ERROR",
    40009: "ENROLL_FACE_SIZE_NOT_ENOUGH_ERROR",
    40010: "BAD_FEATURE_ERROR",
    40011: "IDENTITY_EXSIT_ERROR",
    40012: "GROUP_NAME_ERROR",
    40013: "GROUP_NOT_LOAD",
    40014: "STRANGER_NOT_DELETE",
    40015: "GROUP_LEN_ERROR",
    40091: "PARAM_ERROR",
    40400: "NOT_FOUND",
    40401: "ID_NOT_FOUND",
    40491: "NOT_FOUND",
    41300: "PAYLOAD_TOO_LARGE",
    41591: "CONTENT_TYPE_ERROR",
    50072: "SERVER_PROCESS_FAILED",
    50100: "NOT_IMPLEMENTED",
}

#: info.type: 1 staff (the default, also when absent), 2 visitor, 3 blacklist, 4 stranger, 5 VIP.
USER_TYPES = frozenset({1, 2, 3, 4, 5})
FIQA_LEVELS = frozenset({"high", "middle", "low", "custom", "no"})
FLAGS = (
    "need_bring_pic",
    "import_mode",
    "ignore_exist",
    "create_no_exit_permission",
    "support_single_face",
)
DEFAULT_GROUP = "default_group"
#: What an omitted `permission_ids` becomes, on create and on update (documented on PUT).
DEFAULT_PERMISSIONS = ("0",)

# Validation limits: none is documented, all are [I].
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64
MAX_TEXT_CHARS = 128
MAX_PERMISSIONS = 100
MAX_PHOTO_BYTES = 4 * 1024 * 1024
MAX_LIMIT = 1000
MAX_DELETE_IDS = 1000
#: "About 50,000 faces per box" [S], enforced per group as GROUP_LEN_ERROR [I].
DEFAULT_CAPACITY = 50_000

_IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
_DATA_URL = "data:image/"

Paging = Literal["offset", "page"]
MissingInBatch = Literal["skip", "fail"]


class SophonFogSimulator(Simulator):
    """`/SophonFogSys/api/{users,groups,WipeData}` and `/SophonFace/api/images` (V5R7C01).

    Choices where the docs are silent [I], which the adapter must not rely on beyond this list:

    - No auth at all. Success: HTTP 200 `{"data": …}`. Failure: HTTP `code // 100` (40004 -> 400,
      40401 -> 404, 50100 -> 501) with `{"error": {"code", "message", "status"}}`, `status` the
      code's symbolic name. Request bodies must be JSON (`application/json`): an empty body is
      40002, another content type 40001, unparsable JSON or a non-object 40000; a wrong type of
      any documented field is 40091 PARAM_ERROR (40005 for the booleans).
    - Limits: identity_id 1..64 characters; `info.name` 1..64; `ext_info` values strings of at
      most 128; at most 100 `permission_ids`; photos at most 4 MB
      (40007) and JPEG or PNG by their magic bytes (40003), base64 with or without a
      `data:image/...;base64,` prefix; `limit` 1..1000; 1000 ids per batch delete;
      `capacity` persons per group (40015 GROUP_LEN_ERROR on the next new one).
    - Faces: photos whose exact bytes are in `faceless` answer 40004 NO_FACE; in `low_quality`,
      40006 unless `fiqa_level` is "no". An accepted photo adds one face (a new `image_id` in
      `image_ids` and a `face_id` in `face_ids`; `info.image_id` is the newest); with
      `support_single_face: true` the previous faces are dropped first. A PUT with `reg_photo`
      always adds a face, it never replaces one.
    - Create (`POST`): an existing identity_id is 40011 unless `ignore_exist: true`, which adds
      the person to the named groups and updates info (unless the box is built with
      `honour_ignore_exist=False`, a firmware that answers 40011 anyway). On create and update,
      `info` keys given replace the stored ones (`ext_info` as a whole), keys omitted are kept,
      except `permission_ids`, which resets to `["0"]` when omitted. `info.type` omitted is 1 on
      create. `info.user_id` defaults to identity_id and cannot be changed by PUT (40091).
      `import_mode: true` (features instead of photos) answers 50100.
    - Listing (`GET users?group_name=`): enrolment order; `skip_num` is an offset
      (`paging="offset"`) or a page index (`paging="page"`); `pagination` is left out when built
      with `pagination=False` (older firmware); `reg_photo` is always "" in answers, as in every
      vendor example; photos are served by `/SophonFace/api/images/<image_id>`. An unknown group
      is 40012. Without `group_name` and `identity_id` the listing is 40091.
    - Delete: `{"identity_id"}` answers 40401 when unknown. `{"identity_ids": [...]}` deletes
      the ids it finds and answers `{"identity_ids": [deleted], "message"}`, leaving the unknown
      ones out (`missing_in_batch="skip"`); with `missing_in_batch="fail"` a batch naming an
      unknown id deletes nothing and answers 40401. A delete removes the person from every group
      with its faces. Built with `batch_delete=False` (firmware before V5R7C01), a body with
      `identity_ids` deletes nobody and answers as a single delete of nobody, with success.
    - Permission groups: built with `permissions` (name -> id, a UUID), the box lists their
      names at `GET /SophonFogSys/api/permissions` (`{"permissions_list": [{name,
      description}]}`) and gives a name's id at `GET /SophonFace/api/permissions?info.name=
      &exact=true` (`[{"_id", "info": {"name"}}]`); `permission_ids` other than theirs and "0"
      are 40091 PARAM_ERROR unless `create_no_exit_permission: true`, which creates them (named
      by their id). Built without (None), it is a firmware without that API: both routes answer
      40400, and ids are not checked.
    - `POST /SophonFogSys/api/WipeData` clears persons, faces and groups (default_group is
      recreated empty) and counts in `dangerous_calls`: a client must never make one.
    """

    def __init__(
        self,
        *,
        groups: Iterable[str] = (DEFAULT_GROUP,),
        paging: Paging = "offset",
        pagination: bool = True,
        faceless: Collection[bytes] = (),
        low_quality: Collection[bytes] = (),
        capacity: int = DEFAULT_CAPACITY,
        honour_ignore_exist: bool = True,
        missing_in_batch: MissingInBatch = "skip",
        permissions: Mapping[str, str] | None = None,
        batch_delete: bool = True,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(faults=faults)
        self.batch_delete = batch_delete
        #: Permission group name -> id; None: no permission API, ids unchecked.
        self.permissions: dict[str, str] | None = None if permissions is None else dict(permissions)
        self.paging: Paging = paging
        self.pagination = pagination
        self.faceless = set(faceless)
        self.low_quality = set(low_quality)
        self.capacity = capacity
        self.honour_ignore_exist = honour_ignore_exist
        self.missing_in_batch: MissingInBatch = missing_in_batch
        #: group_name -> {"group_name", "description", "group_id"}.
        self.groups: dict[str, dict[str, str]] = {}
        #: identity_id -> the stored person, as the listing shows it (enrolment order).
        self.identities: dict[str, dict[str, Any]] = {}
        #: image_id -> photo bytes, as /SophonFace/api/images/<image_id> serves them.
        self.images: dict[str, bytes] = {}
        #: Calls of POST /SophonFogSys/api/WipeData, which wipes the box.
        self.dangerous_calls = 0
        #: group -> its members in enrolment order, valid while `_listed_at` matches: paging a
        #: large box must not rebuild the group's list for every page.
        self._listed: dict[str, list[str]] = {}
        self._listed_at: tuple[int, int] = (-1, -1)
        self._generation = 0
        for name in groups:
            self.add_group(name)

    # -- seeding and inspection (the cross-kind contract) ------------------------------------

    def add_group(self, name: str, description: str = "") -> None:
        self.groups[name] = {
            "group_name": name,
            "description": description,
            "group_id": secrets.token_hex(12),
        }

    def add_person(
        self,
        person_id: str,
        name: str,
        *,
        group: str = DEFAULT_GROUP,
        photo: bytes | None = None,
        **info: Any,
    ) -> None:
        """Enrol a person directly, as if by hand at the box's own UI (for seeding)."""
        if group not in self.groups:
            self.add_group(group)
        person = self._blank(person_id)
        person["group_name"] = [group]
        person["info"].update({"name": name, "permission_ids": list(DEFAULT_PERMISSIONS)} | info)
        if photo is not None:
            self._add_face(person, photo, single=True)
        self.identities[person_id] = person
        self._generation += 1

    def person_names(self) -> dict[str, str]:
        return {pid: str(p["info"].get("name", "")) for pid, p in self.identities.items()}

    def photo_of(self, person_id: str) -> bytes | None:
        person = self.identities.get(person_id)
        image_id = person["info"].get("image_id") if person is not None else None
        return self.images.get(image_id) if isinstance(image_id, str) else None

    def faces_of(self, person_id: str) -> list[bytes]:
        """Every face photo the person has, oldest first."""
        person = self.identities.get(person_id)
        if person is None:
            return []
        return [self.images[i] for i in person["info"]["image_ids"] if i in self.images]

    def members(self, group: str) -> list[str]:
        """The group's identity ids in enrolment order (the listing's order)."""
        # Keyed by the count too, so a test that edits `identities` directly is still seen.
        version = (self._generation, len(self.identities))
        if version != self._listed_at:
            self._listed, self._listed_at = {}, version
        listed = self._listed.get(group)
        if listed is None:
            listed = [pid for pid, p in self.identities.items() if group in p["group_name"]]
            self._listed[group] = listed
        return listed

    # -- the API ------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("POST", USERS, self._create, write=True),
            Route("GET", USERS, self._get),
            Route("PUT", USERS, self._update, write=True),
            Route("DELETE", USERS, self._delete, write=True),
            Route("GET", GROUPS, self._groups),
            Route("POST", GROUPS, self._create_group, write=True),
            Route("GET", IMAGES, self._image),
            Route("POST", WIPE, self._wipe, write=True),
            Route("GET", PERMISSIONS, self._permission_names),
            Route("GET", PERMISSION_IDS, self._permission_ids),
        ]

    def error_response(self, status: int, message: str) -> web.Response:
        code = {404: 40400, 405: 40000, 413: 41300}.get(status, status * 100)
        return _error(code, message, status=status)

    async def _create(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        note_items(request, 1)
        return _data(self._enrol(body))

    def _enrol(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST users: everything is checked before anything changes (all or nothing)."""
        identity_id = _identity_id(body.get("identity_id"))
        groups = self._group_names(body.get("group_name"))
        flags = {flag: _flag(body, flag, default=flag == "need_bring_pic") for flag in FLAGS}
        fiqa = body.get("fiqa_level")
        if fiqa is not None and fiqa not in FIQA_LEVELS:
            raise _refusal(40091, f"fiqa_level must be one of {', '.join(sorted(FIQA_LEVELS))}")
        if flags["import_mode"]:
            raise _refusal(50100, "import_mode (features instead of photos) is not simulated")
        info = _info(body.get("info"), creating=True)
        self._check_permissions(info, create=flags["create_no_exit_permission"])
        photo = self._photo(body.get("reg_photo"), fiqa) if flags["need_bring_pic"] else None
        existing = self.identities.get(identity_id)
        if existing is not None and (not flags["ignore_exist"] or not self.honour_ignore_exist):
            raise _refusal(40011, f"identity {identity_id} already exists")
        for group in groups:
            joining = existing is None or group not in existing["group_name"]
            # The member count is only worth taking when the box as a whole is that full.
            full = len(self.identities) >= self.capacity
            if joining and full and len(self.members(group)) >= self.capacity:
                raise _refusal(40015, f"group {group} is full ({self.capacity} persons)")

        person = existing if existing is not None else self._blank(identity_id)
        person["group_name"] += [g for g in groups if g not in person["group_name"]]
        self._generation += 1
        _merge_info(person["info"], info)
        if photo is not None:
            self._add_face(person, photo, single=flags["support_single_face"])
        self.identities[identity_id] = person
        return {"identity_id": identity_id, "reg_photo": ""} | self._shown(person, "group_name")

    async def _update(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        note_items(request, 1)
        person = self._stored(_identity_id(body.get("identity_id")))
        if "info" not in body:
            raise _refusal(40091, "info is required (it may be {})")
        info = _info(body["info"], creating=False)
        create = _flag(body, "create_no_exit_permission", default=False)
        self._check_permissions(info, create=create)
        user_id = info.get("user_id")
        if user_id is not None and user_id != person["info"]["user_id"]:
            raise _refusal(40091, "editing the employee number (user_id) is forbidden")
        reg_photo = body.get("reg_photo")
        photo = None if reg_photo is None else self._photo(reg_photo, None)
        _merge_info(person["info"], info)
        if photo is not None:
            self._add_face(person, photo, single=False)
        return _data(
            {"identity_id": person["identity_id"], "image_id": person["info"]["image_id"]}
            | self._shown(person, "group_name")
        )

    async def _get(self, request: web.Request) -> web.Response:
        query = request.query
        if "identity_id" in query:
            person = self._stored(query["identity_id"])
            return _data({"identities_list": [self._shown(person)]})
        if "group_name" not in query:
            raise _refusal(40091, "group_name (or identity_id) is required")
        group = query["group_name"]
        if group not in self.groups:
            raise _refusal(40012, f"group {group} does not exist")
        skip = _query_int(query, "skip_num", 0)
        limit = _query_int(query, "limit", 10, low=1, high=MAX_LIMIT)
        listed = self.members(group)
        name = query.get("identity_name")
        if name:
            listed = [i for i in listed if name in str(self.identities[i]["info"].get("name"))]
        start = skip if self.paging == "offset" else skip * limit
        page: dict[str, Any] = {
            "identities_list": [
                self._shown(self.identities[i]) for i in listed[start : start + limit]
            ]
        }
        if self.pagination:
            page["pagination"] = _pagination(skip, limit, len(listed))
        return _data(page)

    async def _delete(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if not self.batch_delete and "identity_ids" in body:
            # Firmware before V5R7C01 reads identity_id only: it "removes" nobody, cheerfully.
            note_items(request, 1)
            return _data(
                {"identity_id": None, "group_name": [], "message": "have remove from group success"}
            )
        if ("identity_id" in body) == ("identity_ids" in body):
            raise _refusal(40091, "give identity_id or identity_ids")
        if "identity_id" in body:
            note_items(request, 1)
            person = self._stored(_identity_id(body["identity_id"]))
            self._remove(person["identity_id"])
            return _data(
                {
                    "identity_id": person["identity_id"],
                    "group_name": list(person["group_name"]),
                    "message": "have remove from group success",
                }
            )
        ids = body["identity_ids"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_DELETE_IDS:
            raise _refusal(40091, f"identity_ids must be a list of 1..{MAX_DELETE_IDS} ids")
        note_items(request, len(ids))
        checked = [_identity_id(i) for i in ids]
        missing = [i for i in checked if i not in self.identities]
        if missing and self.missing_in_batch == "fail":
            raise _refusal(40401, f"identity {missing[0]} not found")
        deleted = [i for i in dict.fromkeys(checked) if i in self.identities]
        for identity_id in deleted:
            self._remove(identity_id)
        return _data({"identity_ids": deleted, "message": "have remove from group success"})

    async def _groups(self, request: web.Request) -> web.Response:
        query = request.query
        if "group_name" in query:
            group = self.groups.get(query["group_name"])
            if group is None:
                raise _refusal(40012, f"group {query['group_name']} does not exist")
            return _data({"groups_list": [dict(group)]})
        skip = _query_int(query, "skip_num", 0)
        limit = _query_int(query, "limit", 10, low=1, high=MAX_LIMIT)
        groups = list(self.groups.values())
        start = skip if self.paging == "offset" else skip * limit
        return _data(
            {
                "groups_list": [dict(g) for g in groups[start : start + limit]],
                "pagination": _pagination(skip, limit, len(groups)),
            }
        )

    async def _create_group(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        name = body.get("group_name")
        description = body.get("description", "")
        if not isinstance(name, str) or not name or "," in name or len(name) > MAX_ID_CHARS:
            return _error(40012, f"group_name must be 1..{MAX_ID_CHARS} characters, no comma")
        if not isinstance(description, str):
            return _error(40091, "description must be a string")
        if name in self.groups:
            return _error(40012, f"group {name} already exists")
        self.add_group(name, description)
        return _data(dict(self.groups[name]))

    async def _permission_names(self, request: web.Request) -> web.Response:
        if self.permissions is None:
            raise _refusal(40400, "not found")
        names = [{"name": name, "description": ""} for name in self.permissions]
        return _data({"permissions_list": names})

    async def _permission_ids(self, request: web.Request) -> web.Response:
        if self.permissions is None:
            raise _refusal(40400, "not found")
        name = request.query.get("info.name")
        exact = request.query.get("exact", "false").lower() == "true"
        found = [
            {"_id": permission_id, "info": {"name": known}}
            for known, permission_id in self.permissions.items()
            if name is None or known == name or (not exact and name in known)
        ]
        return _data(found)

    def _check_permissions(self, info: Mapping[str, Any], *, create: bool) -> None:
        """permission_ids the box knows (all or nothing), or creates with the flag."""
        if self.permissions is None or "permission_ids" not in info:
            return
        known = set(self.permissions.values()) | set(DEFAULT_PERMISSIONS)
        unknown = [i for i in info["permission_ids"] if i not in known]
        if unknown and not create:
            raise _refusal(40091, f"permission id {unknown[0]} does not exist")
        for permission_id in unknown:
            self.permissions[permission_id] = permission_id

    async def _image(self, request: web.Request) -> web.Response:
        image = self.images.get(request.match_info["image_id"])
        if image is None:
            return _error(40400, "image not found")
        media = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
        return web.Response(body=image, content_type=media)

    async def _wipe(self, request: web.Request) -> web.Response:
        self.dangerous_calls += 1
        self._generation += 1
        self.identities.clear()
        self.images.clear()
        self.groups.clear()
        self.add_group(DEFAULT_GROUP)
        return _data({"success": True})

    # -- state helpers ---------------------------------------------------------------------

    def _group_names(self, value: object) -> list[str]:
        if not isinstance(value, str) or not value:
            raise _refusal(40091, "group_name is required: a group, or several comma-separated")
        names = [name.strip() for name in value.split(",")]
        for name in names:
            if name not in self.groups:
                raise _refusal(40012, f"group {name} does not exist")
        return list(dict.fromkeys(names))

    def _photo(self, value: object, fiqa_level: object) -> bytes:
        """Decode and check a reg_photo; the face checks answer as a real box's would."""
        if value is None:
            raise _refusal(40091, "reg_photo is required unless need_bring_pic is false")
        if not isinstance(value, str):
            raise _refusal(40003, "reg_photo must be a base64 string")
        text = value
        if text.startswith(_DATA_URL):
            _, comma, text = text.partition(",")
            if not comma:
                raise _refusal(40003, "reg_photo is a data URL without data")
        try:
            image = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _refusal(40003, "reg_photo is not valid base64") from None
        if len(image) > MAX_PHOTO_BYTES:
            raise _refusal(40007, f"image is larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MB")
        if not image.startswith(_IMAGE_MAGICS):
            raise _refusal(40003, "image is not a JPEG or PNG")
        if image in self.faceless:
            raise _refusal(40004, "no face detected in the image")
        if image in self.low_quality and fiqa_level != "no":
            raise _refusal(40006, "face quality is too low")
        return image

    def _add_face(self, person: dict[str, Any], image: bytes, *, single: bool) -> None:
        info = person["info"]
        if single:
            for old in info["image_ids"]:
                self.images.pop(old, None)
            info["image_ids"], info["face_ids"] = [], []
        image_id = secrets.token_hex(12)
        self.images[image_id] = image
        info["image_ids"].append(image_id)
        info["face_ids"].append(secrets.token_hex(12))
        info["image_id"] = image_id

    def _remove(self, identity_id: str) -> None:
        self._generation += 1
        person = self.identities.pop(identity_id)
        for image_id in person["info"]["image_ids"]:
            self.images.pop(image_id, None)

    def _blank(self, identity_id: str) -> dict[str, Any]:
        return {
            "identity_id": identity_id,
            "group_name": [],
            "info": {
                "name": "",
                "type": 1,
                "user_id": identity_id,
                "image_id": "",
                "image_ids": [],
                "face_ids": [],
                "permission_ids": list(DEFAULT_PERMISSIONS),
                "permission_names": [],
                "ext_info": {},
                "description": "",
            },
        }

    def _stored(self, identity_id: str) -> dict[str, Any]:
        person = self.identities.get(identity_id)
        if person is None:
            raise _refusal(40401, f"identity {identity_id} not found")
        return person

    def _shown(self, person: dict[str, Any], *keys: str) -> dict[str, Any]:
        """A person as answers show it (a copy); `keys` picks some of its top-level keys.

        reg_photo is always "" (see the class docstring); info.group_ids are the groups' ids.
        """
        info = copy.deepcopy(person["info"])
        info["group_ids"] = [
            self.groups[g]["group_id"] for g in person["group_name"] if g in self.groups
        ]
        shown = {
            "identity_id": person["identity_id"],
            "group_name": list(person["group_name"]),
            "reg_photo": "",
            "info": info,
        }
        return {k: shown[k] for k in (*keys, "info")} if keys else shown


def _pagination(skip: int, limit: int, total: int) -> dict[str, int]:
    return {
        "skip_num": skip,
        "limit": limit,
        "num_pages": math.ceil(total / limit),
        "total_count": total,
    }


def _merge_info(stored: dict[str, Any], given: Mapping[str, Any]) -> None:
    stored.update(given)
    if "permission_ids" not in given:
        stored["permission_ids"] = list(DEFAULT_PERMISSIONS)


def _info(value: object, *, creating: bool) -> dict[str, Any]:
    """The `info` of a create or update, checked; only the keys given (plus defaults)."""
    if not isinstance(value, dict):
        raise _refusal(40091, "info must be an object")
    info: dict[str, Any] = dict(value)
    for reserved in ("image_id", "image_ids", "face_ids", "group_ids"):
        info.pop(reserved, None)  # server-generated: never taken from a client
    if creating or "name" in info:
        name = info.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise _refusal(40091, f"info.name must be a string of 1..{MAX_NAME_CHARS} characters")
    if "type" in info or creating:
        kind = info.get("type", 1)
        if not _is_int(kind) or kind not in USER_TYPES:
            raise _refusal(40091, "info.type must be 1, 2, 3, 4 or 5")
        info["type"] = kind
    if "user_id" in info:
        user_id = info["user_id"]
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_ID_CHARS:
            raise _refusal(40091, f"info.user_id must be 1..{MAX_ID_CHARS} characters")
    if "permission_ids" in info:
        ids = info["permission_ids"]
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_PERMISSIONS
            or not all(isinstance(i, str) and 1 <= len(i) <= MAX_ID_CHARS for i in ids)
        ):
            raise _refusal(
                40091, f"info.permission_ids must be a list of at most {MAX_PERMISSIONS} ids"
            )
    if "ext_info" in info:
        ext = info["ext_info"]
        if not isinstance(ext, dict) or not all(
            isinstance(v, str) and len(v) <= MAX_TEXT_CHARS for v in ext.values()
        ):
            raise _refusal(
                40091, f"info.ext_info must map keys to strings of at most {MAX_TEXT_CHARS}"
            )
    return info


def _identity_id(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise _refusal(40091, f"identity_id must be a string of 1..{MAX_ID_CHARS} characters")
    return value


def _flag(body: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _refusal(40005, f"{key} must be true or false")
    return value


def _query_int(
    query: Mapping[str, str], key: str, default: int, *, low: int = 0, high: int = 10**9
) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise _refusal(40091, f"{key} must be an integer in {low}..{high}")
    return int(text)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise _refusal(40002, "request body is empty: a JSON object is required")
    if request.content_type != "application/json":
        raise _refusal(40001, f"content type {request.content_type} is not supported")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _refusal(40000, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _refusal(40000, "request body must be a JSON object")
    return body


def _refusal(code: int, message: str) -> Answer:
    """Raised anywhere in a handler: the box answers with this error, having changed nothing."""
    return Answer(_error(code, message))


def _data(data: object) -> web.Response:
    return web.Response(body=orjson.dumps({"data": data}), content_type="application/json")


def _error(code: int, message: str, *, status: int | None = None) -> web.Response:
    if status is None:
        status = code // 100
    try:
        HTTPStatus(status)
    except ValueError:
        status = HTTPStatus.BAD_REQUEST.value
    symbol = STATUSES.get(code) or _phrase(status)
    body = {"error": {"code": code, "message": message, "status": symbol}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"
