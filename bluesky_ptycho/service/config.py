"""The reconstruction service's configuration file (TOML): the bus, the catalog, the runner, the scans, the service.

Every table and field is checked when the file is read; the first problem
is reported in one line that names the field (``bus.address: Field
required``), so a service that starts has a configuration that works.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..io.pixel_mask import read_pixel_mask
from ..scan_metadata import GEOMETRY_KEYS, PTYCHO_KEYS
from ..solver import DetectorSettings, ReconstructionSettings


class ConfigError(ValueError):
    """The configuration file cannot be used; the message is one line naming the file and the field."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def private_file(path: Path | None) -> Path | None:
    """``path``, if only its owner can read it (a secret's file); else a ValueError saying how to fix it."""
    if path is None:
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    if mode & 0o077:
        raise ValueError(f"{path} is readable by others (mode {mode:04o}): chmod 600 {path}")
    return path


class ZmqBusConfig(_Table):
    """Bluesky's 0MQ proxy (``bluesky-0MQ-proxy``): the service subscribes to its out address."""

    kind: Literal["zmq"]
    address: str = Field(description="the proxy's out address, host:port")
    prefix: str = Field(
        "", description="only documents published with this prefix (bluesky's Publisher prefix)"
    )
    reconnect_max_s: float = Field(30.0, gt=0, description="the longest wait between reconnection attempts")
    receive_queue: int = Field(
        20_000,
        ge=0,
        description="documents 0MQ holds for the service while it is busy (its RCVHWM; 0: no limit); "
        "beyond them the proxy drops documents",
    )


class NatsBusConfig(_Table):
    """NATS JetStream, as ``bluesky-nats``'s NATSPublisher publishes (``<subject>.<document name>``)."""

    kind: Literal["nats"]
    servers: list[str] = Field(default_factory=lambda: ["nats://localhost:4222"])
    stream: str = "bluesky"
    subject: str = Field("events.volatile", description="the publisher's subject, without the document name")
    durable: str = Field(
        "bluesky-ptycho", description="the durable consumer: a restart resumes where it stopped"
    )
    reconnect_max_s: float = Field(30.0, gt=0)


class KafkaBusConfig(_Table):
    """Kafka, as ``bluesky-kafka``'s Publisher publishes (one topic per beamline)."""

    kind: Literal["kafka"]
    bootstrap_servers: str = Field(description="host:port[,host:port...]")
    topics: list[str] = Field(min_length=1)
    group_id: str = "bluesky-ptycho"
    consumer_config: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra librdkafka settings (security.protocol, sasl.username, ...)"
    )
    sasl_password_file: Path | None = Field(
        None, description="a file readable only by its owner: sasl.password"
    )

    _private = field_validator("sasl_password_file")(private_file)

    @field_validator("consumer_config")
    @classmethod
    def _not_twice(cls, values: dict) -> dict:
        for key, field in (
            ("group.id", "group_id"),
            ("bootstrap.servers", "bootstrap_servers"),
            ("sasl.password", "sasl_password_file"),
        ):
            if key in values:
                raise ValueError(f"give {key!r} as bus.{field}, not in consumer_config")
        return values

    def librdkafka_settings(self) -> dict[str, str | int | float | bool]:
        """``consumer_config`` with the password read from its file."""
        if self.sasl_password_file is None:
            return dict(self.consumer_config)
        return {**self.consumer_config, "sasl.password": self.sasl_password_file.read_text().strip()}


BusConfig = Annotated[ZmqBusConfig | NatsBusConfig | KafkaBusConfig, Field(discriminator="kind")]


class CatalogConfig(_Table):
    """Where reconstructions are written: a Tiled URI or profile, or the embedded catalog (no ``uri``)."""

    uri: str | None = None
    directory: Path | None = Field(None, description="the embedded catalog's directory")
    api_key_file: Path | None = Field(
        None, description="a file readable only by its owner holding the API key"
    )
    spool_directory: Path | None = Field(None, description="where runs wait while the catalog is down")

    _private = field_validator("api_key_file")(private_file)

    def api_key(self) -> str | None:
        """The API key from ``api_key_file``, or None (Tiled then reads ``TILED_API_KEY``)."""
        return self.api_key_file.read_text().strip() if self.api_key_file else None


class RunnerConfig(_Table):
    """Where reconstructions run (docs/federation.md)."""

    kind: Literal["local", "mpi", "dask", "globus-compute", "globus-flow"] = "local"
    process: bool = Field(True, description="local: in a worker process at lower priority")
    scheduler: str | None = Field(None, description="dask: the scheduler address, tcp://host:8786")
    endpoint_id: str | None = Field(None, description="globus-compute: the endpoint")
    ranks: int | None = Field(None, ge=1, description="mpi: the MPI ranks every job runs on, on this machine")
    staging_directory: Path | None = Field(
        None, description="mpi, dask, globus-compute: frames staged as files here"
    )
    max_in_flight: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _needs(self) -> RunnerConfig:
        needed = {"mpi": "ranks", "dask": "scheduler", "globus-compute": "endpoint_id"}.get(self.kind)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"a {self.kind} runner needs runner.{needed}")
        if self.kind == "globus-flow" and self.max_in_flight is not None:
            raise ValueError("a globus-flow runner takes max_in_flight from the Globus settings")
        return self


class ReconstructionConfig(_Table):
    """What the callback does with each scan (see :class:`~bluesky_ptycho.callbacks.PtychoCallback`)."""

    preview_every: int = Field(50, ge=0)
    preview_iterations: int = Field(20, ge=0)
    queue_previews: bool = False
    initial_probe: str | None = Field(None, description='"latest", or a result file')
    final: dict[str, Any] = Field(default_factory=dict, description="ReconstructionSettings.final(**final)")
    preview: dict[str, Any] | None = Field(None, description="ReconstructionSettings(**preview)")

    @field_validator("final", "preview")
    @classmethod
    def _settings(cls, values: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if values is not None:
            try:
                _SETTINGS_FROM[info.field_name](**values)  # what the service will make of them
            except (TypeError, ValueError) as error:
                raise ValueError(str(error)) from None
        return values

    def final_settings(self) -> ReconstructionSettings:
        return _SETTINGS_FROM["final"](**self.final)

    def preview_settings(self) -> ReconstructionSettings | None:
        return None if self.preview is None else _SETTINGS_FROM["preview"](**self.preview)


# the final's table overrides the final defaults; the preview's is a whole settings of its own
_SETTINGS_FROM = {"final": ReconstructionSettings.final, "preview": ReconstructionSettings}


class DetectorConfig(_Table):
    """How raw detector frames become reconstruction frames (:class:`~bluesky_ptycho.solver.DetectorSettings`)."""

    frame_size: int | None = Field(None, ge=2, description="the square reconstructed around the beam")
    beam_centre: tuple[float, float] | None = Field(None, description="(row, column); None: measured")
    binning: int = Field(1, ge=1)
    saturation: float | None = Field(None, gt=0)
    pixel_mask: str | None = Field(None, description="FILE.h5[:DATASET] or FILE.npy (0 good)")

    @field_validator("pixel_mask")
    @classmethod
    def _readable(cls, spec: str | None) -> str | None:
        if spec is not None:
            read_pixel_mask(spec)
        return spec

    def settings(self) -> DetectorSettings:
        values = self.model_dump()
        if self.pixel_mask is not None:
            values["pixel_mask"] = read_pixel_mask(self.pixel_mask)
        return DetectorSettings(**values)


class ServiceOptions(_Table):
    """The service process itself."""

    log_file: Path | None = Field(None, description="None: log to standard error (journald under systemd)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    stop_grace_s: float = Field(
        60.0, ge=0, description="on SIGTERM, how long running reconstructions may finish"
    )


class ServiceConfig(_Table):
    """The whole configuration file."""

    bus: BusConfig
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    reconstruction: ReconstructionConfig = Field(default_factory=ReconstructionConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    geometry: dict[str, Any] = Field(
        default_factory=dict, description="PtychoCallback's geometry overrides (data_key, x_key, ...)"
    )
    configuration_signals: dict[str, str | tuple[str, float]] = Field(
        default_factory=dict, description="geometry keys read from the detector's configuration signals"
    )
    service: ServiceOptions = Field(default_factory=ServiceOptions)

    @field_validator("geometry")
    @classmethod
    def _geometry_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(values) - set(PTYCHO_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; the keys are {sorted(PTYCHO_KEYS)}")
        return values

    @field_validator("configuration_signals")
    @classmethod
    def _configurable_keys(cls, values: dict) -> dict:
        unknown = sorted(set(values) - set(GEOMETRY_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; the keys are {sorted(GEOMETRY_KEYS)}")
        return values


def load_config(path: str | os.PathLike) -> ServiceConfig:
    """Read and check the configuration file at ``path``.

    Raises
    ------
    ConfigError
        One line naming the file and the first field that is wrong.
    """
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    try:
        return ServiceConfig.model_validate(values)
    except ValidationError as invalid:
        first = invalid.errors()[0]
        location = list(first["loc"])
        bus = values.get("bus")
        if location[:1] == ["bus"] and isinstance(bus, dict) and location[1:2] == [bus.get("kind")]:
            del location[1]  # pydantic names the bus kind chosen (the tagged union's member): not a field
        field = ".".join(str(part) for part in location) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {field}: {message}") from None
