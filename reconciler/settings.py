"""Process settings (DESIGN A3): RECONCILER_* environment variables, then reconciler.toml.

Read once, at the entry point. No I/O beyond reading the optional TOML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """How this reconciler process runs; what it reconciles lives in the desired state."""

    model_config = SettingsConfigDict(
        env_prefix="RECONCILER_", toml_file="reconciler.toml", extra="forbid"
    )

    desired: Path = Field(Path("desired.yaml"), description="Desired-state file or directory")
    state_dir: Path = Field(Path("state"), description="Runtime data: store, lock, saved plans")
    store_url: str | None = Field(
        None, description="Default sqlite:///<state_dir>/reconciler.sqlite3; postgresql://…"
    )
    replica_id: str | None = Field(
        None,
        description="This process in /status and lock holders; default hostname-pid",
        min_length=1,
        max_length=200,
    )
    lock_wait: float = Field(
        60.0, ge=0, description="Seconds apply and adopt wait for a target another writes"
    )
    leadership_check: float = Field(
        5.0, gt=0, description="Seconds between a replica's looks for targets nobody owns"
    )
    interval: float = Field(60.0, gt=0, description="Seconds between daemon passes")
    stall_timeout: float = Field(
        900.0,
        ge=0,
        description="Seconds a daemon pass may finish no step (a request, a lock poll, a read) "
        "before the process counts as hung (/healthz 503, no watchdog ping, so it is "
        "restarted); 0: never",
    )
    listen: str = Field("127.0.0.1:9180", description="host:port of the daemon's HTTP endpoints")
    log_format: Literal["auto", "json", "console"] = "auto"
    webhook_secret: SecretStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.state_dir / 'reconciler.sqlite3'}"
