"""Target kinds: one adapter module per vendor API, and the registry that builds them. No I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reconciler.core.records import KindSpec
from reconciler.targets import nebula_pass, siteserver, sophon_fog, sophon_sight
from reconciler.targets.base import Target, TargetSettings
from reconciler.targets.http import Backoff


@dataclass(frozen=True, slots=True, kw_only=True)
class KindEntry:
    """What the composition root needs to know about one kind."""

    spec: KindSpec
    settings: type[TargetSettings]
    build: Callable[[str, TargetSettings, Backoff | None], Target]


def _nebula_pass(name: str, settings: TargetSettings, backoff: Backoff | None) -> Target:
    assert isinstance(settings, nebula_pass.Settings)
    return nebula_pass.NebulaPass(name, settings, backoff=backoff)


def _sophon_fog(name: str, settings: TargetSettings, backoff: Backoff | None) -> Target:
    assert isinstance(settings, sophon_fog.Settings)
    return sophon_fog.SophonFog(name, settings, backoff=backoff)


def _sophon_sight(name: str, settings: TargetSettings, backoff: Backoff | None) -> Target:
    assert isinstance(settings, sophon_sight.Settings)
    return sophon_sight.SophonSight(name, settings, backoff=backoff)


def _siteserver(name: str, settings: TargetSettings, backoff: Backoff | None) -> Target:
    assert isinstance(settings, siteserver.Settings)
    return siteserver.SiteServer(name, settings, backoff=backoff)


KINDS: dict[str, KindEntry] = {
    nebula_pass.NAME: KindEntry(
        spec=nebula_pass.KIND, settings=nebula_pass.Settings, build=_nebula_pass
    ),
    siteserver.NAME: KindEntry(
        spec=siteserver.KIND, settings=siteserver.Settings, build=_siteserver
    ),
    sophon_fog.NAME: KindEntry(
        spec=sophon_fog.KIND, settings=sophon_fog.Settings, build=_sophon_fog
    ),
    sophon_sight.NAME: KindEntry(
        spec=sophon_sight.KIND, settings=sophon_sight.Settings, build=_sophon_sight
    ),
}
