"""Globus configuration: one TOML settings file plus environment variables, validated.

The file is ``globus.toml`` in the user's config directory (or the path in
``BLUESKY_PTYCHO_GLOBUS_SETTINGS``); every setting can also come from an
environment variable ``BLUESKY_PTYCHO_GLOBUS_<NAME>``, which wins over the
file. Secrets (``client_secret``) are read from the environment only and are
never shown. ``bluesky-ptycho globus deploy`` records the ids it creates in
``globus-deployment.json`` next to the settings file; settings left unset
take them from there.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import platformdirs
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "BLUESKY_PTYCHO_GLOBUS_"
SETTINGS_FILE_ENV = f"{ENV_PREFIX}SETTINGS"


class GlobusConfigError(ValueError):
    """The Globus configuration is missing a setting or holds a bad value; the message says how to fix it."""


def settings_file() -> Path:
    """The settings file in use: ``$BLUESKY_PTYCHO_GLOBUS_SETTINGS`` or ``<config dir>/globus.toml``."""
    configured = os.environ.get(SETTINGS_FILE_ENV)
    if configured:
        return Path(configured)
    return Path(platformdirs.user_config_dir("bluesky-ptycho")) / "globus.toml"


def deployment_file() -> Path:
    """Where ``globus deploy`` keeps the ids and checksums of what it registered."""
    return settings_file().with_name("globus-deployment.json")


def token_file() -> Path:
    """The Globus token file (created 0600; refused when others can read it)."""
    return settings_file().with_name("globus-tokens.db")


class GlobusSettings(BaseSettings):
    """Where the beamline's frames go, where they are reconstructed, and how to log in."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    client_id: UUID | None = Field(
        None,
        description="Globus Auth client id: a native app (people) or a confidential client (service account)",
    )
    client_secret: SecretStr | None = Field(
        None,
        description="secret of a confidential client; environment only (BLUESKY_PTYCHO_GLOBUS_CLIENT_SECRET)",
    )
    beamline_collection_id: UUID | None = Field(
        None, description="Globus collection holding the staging directory"
    )
    beamline_collection_path: str | None = Field(
        None, description="the staging directory, as a path in that collection"
    )
    local_staging_directory: Path | None = Field(
        None, description="the same directory, as a path on this machine"
    )
    beamline_collection_mapped: bool = Field(
        False, description="True for a GCS mapped collection (needs data_access)"
    )
    facility_collection_id: UUID | None = Field(
        None, description="Globus collection at the computing facility"
    )
    facility_collection_path: str | None = Field(
        None, description="staging directory there, as a collection path"
    )
    facility_filesystem_path: str | None = Field(
        None, description="the same directory, as the compute endpoint sees it"
    )
    facility_collection_mapped: bool = Field(
        False, description="True for a GCS mapped collection (needs data_access)"
    )
    compute_endpoint_id: UUID | None = Field(None, description="Globus Compute endpoint at the facility")
    function_id: UUID | None = Field(
        None, description="registered reconstruction function (set by globus deploy)"
    )
    inline_function_id: UUID | None = Field(
        None,
        description="registered function for jobs with their frames inline, the Executor path (set by globus deploy)",
    )
    function_serialization: Literal["reference", "source"] = Field(
        "reference",
        description="how deploy registers the functions: by reference to the installed package, or as source "
        "(for endpoints whose allowed_serializers admit only source strategies)",
    )
    flow_id: UUID | None = Field(None, description="the deployed flow (set by globus deploy)")
    subscription_id: UUID | None = Field(
        None,
        description="Globus subscription the flow is deployed under (flows without one expire after 30 days)",
    )
    flow_starters: list[str] = Field(
        default_factory=list,
        description="who may run the flow besides you: identity or group URNs, or all_authenticated_users",
    )
    flow_administrators: list[str] = Field(
        default_factory=list, description="who may update or delete the flow besides you (URNs)"
    )
    flow_viewers: list[str] = Field(
        default_factory=list, description="who may see the flow besides its starters (URNs)"
    )
    compute_user_endpoint_config: dict[str, Any] = Field(
        default_factory=dict,
        description="user options the endpoint's user_config_template.yaml.j2 renders (e.g. account, queue)",
    )
    compute_resource_specification: dict[str, Any] = Field(
        default_factory=dict,
        description="per-task resources for engines that take them (e.g. num_nodes, ranks_per_node)",
    )
    run_timeout_s: float | None = Field(
        None,
        gt=0,
        description="seconds before a flow run is cancelled and failed (default: the flow's own WaitTimes)",
    )
    on_inactive: Literal["cancel", "wait"] = Field(
        "cancel",
        description="a run stopped for a consent: cancel it (the scan goes on) or wait for `globus resume`",
    )
    poll_interval_s: float = Field(5.0, gt=0, description="seconds between flow run status checks")
    max_in_flight: int = Field(8, ge=1, description="flow runs in flight at once")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=settings_file())

    def require(self, *names: str) -> None:
        """Raise :class:`GlobusConfigError` naming each of ``names`` that is not set, and how to set it."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            lines = [
                f"  {name}: {type(self).model_fields[name].description} "
                f"(add `{name} = ...` to {settings_file()} or set {ENV_PREFIX}{name.upper()})"
                for name in missing
            ]
            raise GlobusConfigError("Globus settings missing:\n" + "\n".join(lines))

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly values, the secret masked."""
        values = json.loads(self.model_dump_json())
        if self.client_secret is not None:
            values["client_secret"] = "********"
        return values


def load_globus_settings(**overrides: Any) -> GlobusSettings:
    """Read the settings file and environment (``overrides`` win), filling ids from the deployment record.

    Raises
    ------
    GlobusConfigError
        Naming each bad setting and the file it came from.
    """
    path = settings_file()
    if path.exists() and "client_secret" in tomllib.loads(path.read_text()):
        raise GlobusConfigError(
            f"{path} holds client_secret: secrets do not belong in files; remove it and set "
            f"{ENV_PREFIX}CLIENT_SECRET in the environment of the service instead"
        )
    try:
        settings = GlobusSettings(**overrides)
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise GlobusConfigError(
            f"bad Globus settings (from {path} or {ENV_PREFIX}* variables):\n{problems}"
        ) from None
    deployed = read_deployment()
    for name in ("function_id", "inline_function_id", "flow_id"):
        if getattr(settings, name) is None and deployed.get(name):
            setattr(settings, name, UUID(deployed[name]))
    return settings


def read_deployment() -> dict[str, Any]:
    """The deployment record (empty before the first ``globus deploy``)."""
    path = deployment_file()
    return json.loads(path.read_text()) if path.exists() else {}


def write_deployment(record: dict[str, Any]) -> Path:
    """Save the deployment record."""
    path = deployment_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
