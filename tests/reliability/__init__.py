"""Reliability evidence: every kind under injected faults, and `apply` killed with SIGKILL.

Shared here: the four kinds' simulators and target settings, a desired state of persons written
to disk as the user would, and the check that a simulator holds exactly that state, once each.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.simulators.base import Faults, Simulator
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.siteserver import SiteServerSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.simulators.sophon_sight import SophonSightSimulator
from tests.conftest import JPEG

#: The secrets the desired state names as ${NAME}; never written into any file.
SECRETS: Mapping[str, str] = {
    "NEBULA_PASSWORD": "nebula-pw-5512",
    "SIGHT_SECRET": "sight-secret-7781",
    "CMS_API_KEY": "cms-key-4409",
    "CMS_PASSWORD": "Initial-pw-3306",
}
#: Declared departments (sophon_sight needs every person's department to exist first).
DEPARTMENTS: tuple[Mapping[str, str], ...] = (
    {"id": "HQ", "name": "Headquarters"},
    {"id": "D01", "name": "R&D", "parent": "HQ"},
    {"id": "D02", "name": "Sales", "parent": "HQ"},
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    """How to stand up one kind's simulator and the target settings (besides url) reaching it."""

    name: str
    simulator: Callable[[Faults], Simulator]
    settings: Mapping[str, Any]


NEBULA = Kind(
    name="nebula_pass",
    simulator=lambda faults: NebulaPassSimulator(
        username="admin", password=SECRETS["NEBULA_PASSWORD"], faults=faults
    ),
    settings={"username": "admin", "password": "${NEBULA_PASSWORD}", "batch_size": 5},
)
FOG = Kind(
    name="sophon_fog",
    simulator=lambda faults: SophonFogSimulator(faults=faults),
    settings={"page_size": 10, "delete_batch": 3},
)
SIGHT = Kind(
    name="sophon_sight",
    simulator=lambda faults: SophonSightSimulator(
        appkey="ak-1", secret=SECRETS["SIGHT_SECRET"], faults=faults
    ),
    settings={
        "appkey": "ak-1",
        "secret": "${SIGHT_SECRET}",
        "default_department": "HQ",
        "delete_batch": 3,
    },
)
CMS = Kind(
    name="siteserver",
    simulator=lambda faults: SiteServerSimulator(
        api_version=6, api_key=SECRETS["CMS_API_KEY"], faults=faults
    ),
    settings={
        "api_key": "${CMS_API_KEY}",
        "api_version": 6,
        "initial_password": "${CMS_PASSWORD}",
        "page_size": 10,
    },
)
KINDS: tuple[Kind, ...] = (NEBULA, FOG, SIGHT, CMS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """One desired person, as written in desired.yaml."""

    id: str
    name: str
    email: str
    department: str
    #: The photo's file name under photos/, or None.
    photo: str | None = None

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "department": self.department,
        }
        if self.photo is not None:
            entry["photo"] = f"photos/{self.photo}"
        return entry


def photo_bytes(name: str) -> bytes:
    """The content of photos/<name>: distinct per name, a JPEG by its magic number."""
    return JPEG + name.encode()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_desired(
    root: Path,
    targets: Mapping[str, Mapping[str, Any]],
    persons: Sequence[Spec],
) -> Path:
    """desired.yaml (and the photos it names) under root, as an operator would write them."""
    (root / "photos").mkdir(exist_ok=True)
    for spec in persons:
        if spec.photo is not None:
            (root / "photos" / spec.photo).write_bytes(photo_bytes(spec.photo))
    document = {
        "version": 1,
        "targets": {name: dict(settings) for name, settings in targets.items()},
        "departments": [dict(d) for d in DEPARTMENTS],
        "persons": [spec.entry() for spec in persons],
    }
    path = root / "desired.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), "utf-8")
    return path


def target_settings(kind: Kind, url: str, **extra: Any) -> dict[str, Any]:
    """A target of `kind` at url: no rate limit (the tests' loopback needs none), no mass-delete
    guard in the way of the few deletes the scenarios make."""
    return {
        "kind": kind.name,
        "url": url,
        "rate_limit": None,
        "max_deletes": 10,
        **kind.settings,
        **extra,
    }


def assert_holds_exactly(simulator: Simulator, persons: Iterable[Spec]) -> None:
    """The simulator holds exactly these persons (ids, names, photos), each exactly once."""
    wanted = {spec.id: spec for spec in persons}
    held = simulator.person_names()
    # Helpers are not assertion-rewritten: every assert says what differs.
    differences = {
        "missing": sorted(set(wanted) - set(held)),
        "extra": sorted(set(held) - set(wanted)),
        "renamed": sorted(p for p in set(wanted) & set(held) if held[p] != wanted[p].name),
    }
    assert not any(differences.values()), f"{type(simulator).__name__}: {differences}"
    for pid, spec in wanted.items():
        photo = photo_bytes(spec.photo) if spec.photo is not None else None
        assert simulator.photo_of(pid) == photo, f"photo of {pid}"
    if isinstance(simulator, SiteServerSimulator):
        # userName is the key: one user per userName, and the emails stay unique.
        names = collections.Counter(u["userName"] for u in simulator.users.values())
        twice = [n for n, count in names.items() if count > 1]
        assert twice == [], f"userNames held more than once: {twice}"
        assert len(simulator.users) == len(wanted), f"{len(simulator.users)} users"
        for pid, spec in wanted.items():
            user = simulator.user_named(pid)
            assert user is not None, pid
            assert user["email"] == spec.email, f"email of {pid}: {user['email']}"
    elif isinstance(simulator, NebulaPassSimulator):
        assert all(simulator.users[pid]["user_id"] == pid for pid in wanted), "user_id"
    elif isinstance(simulator, SophonFogSimulator):
        members = simulator.members("default_group")
        assert members == list(simulator.identities), f"group members: {members}"
        for pid, spec in wanted.items():
            # A second enrolment of a person would leave a second face.
            assert len(simulator.faces_of(pid)) == (1 if spec.photo else 0), f"faces of {pid}"
    elif isinstance(simulator, SophonSightSimulator):
        departments = sorted(simulator.departments)
        assert departments == sorted(d["id"] for d in DEPARTMENTS), f"departments {departments}"
        for pid, spec in wanted.items():
            dept = simulator.users[pid]["thirdDeptId"]
            assert dept == spec.department, f"department of {pid}: {dept}"
        platform_ids = [u["id"] for u in simulator.users.values()]
        assert len(set(platform_ids)) == len(platform_ids), f"platform ids {platform_ids}"
    else:  # pragma: no cover
        raise AssertionError(f"no duplicate check for {type(simulator).__name__}")
