"""Per-kind knowledge the cross-kind contract suite needs: how to stand up each simulator, the
target settings that reach it, credentials that must fail, and the minimum write calls."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.simulators.base import Simulator
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.siteserver import ApiVersion, SiteServerSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.simulators.sophon_sight import SophonSightSimulator


@dataclass(frozen=True, slots=True, kw_only=True)
class Harness:
    #: What the suite calls this variant (a kind, or a kind and its API version).
    label: str
    kind: str
    simulator: Callable[[], Simulator]
    #: Target settings (besides url) that log in to the simulator.
    settings: Mapping[str, Any]
    #: Overrides that must be refused, with the secret they carry; None: the kind has no login.
    wrong_credentials: Mapping[str, Any] | None
    #: The secret values of `settings`, which must never appear in any output.
    secrets: tuple[str, ...]
    #: The fewest write calls the API allows for a first sync: (persons, with photos, departments).
    first_sync_writes: Callable[[int, int, int], int]
    #: The fewest write calls for deleting n persons.
    delete_writes: Callable[[int], int]


NEBULA = Harness(
    label="nebula_pass",
    kind="nebula_pass",
    simulator=lambda: NebulaPassSimulator(username="admin", password="nebula-pw-123"),
    settings={"username": "admin", "password": "nebula-pw-123", "batch_size": 100},
    wrong_credentials={"password": "not-the-password"},
    secrets=("nebula-pw-123", "not-the-password"),
    # One batch upsert per 100 persons, photos inline; the device has no departments.
    first_sync_writes=lambda persons, photos, departments: math.ceil(persons / 100),
    delete_writes=lambda persons: math.ceil(persons / 100),
)

FOG = Harness(
    label="sophon_fog",
    kind="sophon_fog",
    simulator=SophonFogSimulator,
    settings={},
    wrong_credentials=None,  # the box's API has no login at all (vendors.md §1)
    secrets=(),
    # One POST per person (no batch create), photos inline; no departments.
    first_sync_writes=lambda persons, photos, departments: persons,
    delete_writes=lambda persons: math.ceil(persons / 50),
)

SIGHT = Harness(
    label="sophon_sight",
    kind="sophon_sight",
    simulator=lambda: SophonSightSimulator(appkey="ak-1", secret="sight-secret-123"),
    settings={"appkey": "ak-1", "secret": "sight-secret-123"},
    wrong_credentials={"secret": "not-the-secret"},
    secrets=("sight-secret-123", "not-the-secret"),
    # One addOrEdit per person (no batch), one upload per photo, one addOrEdit per department.
    first_sync_writes=lambda persons, photos, departments: persons + photos + departments,
    delete_writes=lambda persons: math.ceil(persons / 50),
)


def _siteserver(version: ApiVersion) -> Harness:
    return Harness(
        label=f"siteserver-{version}",
        kind="siteserver",
        simulator=lambda: SiteServerSimulator(api_version=version, api_key="cms-key-123"),
        settings={"api_key": "cms-key-123", "api_version": version, "initial_password": "Pw0rd-x"},
        wrong_credentials={"api_key": "not-the-key"},
        secrets=("cms-key-123", "not-the-key", "Pw0rd-x"),
        # One POST per user (no batch), one avatar upload per photo; no departments.
        first_sync_writes=lambda persons, photos, departments: persons + photos,
        delete_writes=lambda persons: persons,
    )


HARNESSES: dict[str, Harness] = {
    h.label: h for h in (NEBULA, FOG, SIGHT, _siteserver(6), _siteserver(7))
}
