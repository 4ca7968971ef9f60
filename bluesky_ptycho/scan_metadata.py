"""The scan-metadata contract: where a ptychography scan records its frames, positions and geometry.

The one owner of the keys, their units and how they are read. A scan's
metadata is, key by key, the first of:

1. the callback's overrides (set once in the beamline profile, for plans
   that do not record a key, such as Bluesky's own ``rel_spiral_fermat`` or
   ``rel_grid_scan``; ``start["motors"]`` cannot stand in for ``x_key`` and
   ``y_key``: its order is not the plan's x, y);
2. ``start["ptycho"]`` (:data:`PTYCHO_KEYS`; what this package's plans record);
3. for the instrument geometry: the devices' configuration in the frames'
   descriptor (ophyd ``configuration_attrs``), through the mapping of
   geometry keys to signal names set once in the profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from .solver.data import ELECTRON_VOLT, LENGTH_UNITS, Geometry
from .solver.scan_area import ScanArea

PTYCHO_KEYS = {
    "data_key": "event data key of the diffraction frames",
    "x_key": "event data key of the sample x position",
    "y_key": "event data key of the sample y position",
    "position_unit": "unit of the positions: 'um', 'nm', 'mm' or 'm'",
    "photon_energy_ev": "photon energy in eV",
    "detector_distance_m": "sample-detector distance in m",
    "detector_pixel_size_m": "detector pixel edge in m",
    "scan_area": "optional [x_min, x_max, y_min, y_max] the positions are planned to cover, in position_unit",
}
REQUIRED_KEYS = (
    "data_key",
    "x_key",
    "y_key",
    "photon_energy_ev",
    "detector_distance_m",
    "detector_pixel_size_m",
)
# the keys the devices' configuration may give: {key: signal name, or (signal name, factor to the key's unit)}
GEOMETRY_KEYS = ("photon_energy_ev", "detector_distance_m", "detector_pixel_size_m")
ConfigurationSignals = Mapping[str, "str | tuple[str, float]"]


def start_metadata(start: dict, overrides: Mapping) -> dict:
    """A scan's metadata from its start document and the overrides (steps 1-2 above)."""
    given = {**start.get("ptycho", {}), **overrides}
    return {key: value for key, value in given.items() if value is not None}


def signal_and_factor(source: str | tuple[str, float]) -> tuple[str, float]:
    """A configuration mapping's value as (signal name, factor to the key's unit)."""
    return (source, 1.0) if isinstance(source, str) else source


def configuration_metadata(descriptor: dict, signals: ConfigurationSignals) -> dict:
    """The geometry keys that ``signals`` map to configuration values recorded in ``descriptor``.

    Raises
    ------
    ValueError
        If ``signals`` names a key that is not a geometry key, or a recorded value is not a number.
    """
    recorded = {}
    for device in (descriptor.get("configuration") or {}).values():
        recorded.update(device.get("data") or {})
    values = {}
    for key, source in signals.items():
        if key not in GEOMETRY_KEYS:
            raise ValueError(
                f"{key!r} is not read from device configuration (only {', '.join(GEOMETRY_KEYS)})"
            )
        name, factor = signal_and_factor(source)
        if name in recorded:
            try:
                values[key] = float(recorded[name]) * float(factor)
            except (TypeError, ValueError):
                raise ValueError(
                    f"configuration signal {name!r} ({key}) is {recorded[name]!r}, not a number"
                ) from None
    return values


@dataclass
class ScanGeometry:
    """Where a scan's frames and positions are, and the instrument geometry."""

    data_key: str
    x_key: str
    y_key: str
    position_unit: str
    photon_energy_ev: float
    detector_distance_m: float
    detector_pixel_size_m: float
    scan_area: ScanArea | None = None
    binning: int = 1  # detector pixels along each edge of a reconstruction pixel (DetectorSettings.binning)

    @classmethod
    def from_metadata(cls, metadata: dict, configured: ConfigurationSignals | None = None) -> ScanGeometry:
        """Build from a scan's metadata (:func:`start_metadata`, completed by :func:`configuration_metadata`).

        ``configured``: the geometry keys the profile maps to device
        configuration, named in the message when they were not recorded.

        Raises
        ------
        ValueError
            Naming every missing key, an unknown position unit or a bad scan area.
        """
        missing = [key for key in REQUIRED_KEYS if metadata.get(key) is None]
        if missing:
            configured = configured or {}
            hints = [
                f"{key} (configuration signal {signal_and_factor(configured[key])[0]!r} not recorded)"
                if key in configured
                else key
                for key in missing
            ]
            raise ValueError(
                f"the scan lacks the ptycho keys {', '.join(hints)} (put them in start['ptycho'], "
                "pass them to PtychoCallback, or map them to device configuration signals)"
            )
        unit = metadata.get("position_unit", "um")
        if unit not in LENGTH_UNITS:
            raise ValueError(f"unknown position_unit {unit!r}; use one of {', '.join(LENGTH_UNITS)}")
        area = metadata.get("scan_area")
        if area is not None:
            try:
                area = ScanArea(*(float(value) * LENGTH_UNITS[unit] for value in area))
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"scan_area {area!r} is not [x_min, x_max, y_min, y_max] in {unit}: {error}"
                ) from None
        return cls(
            data_key=metadata["data_key"],
            x_key=metadata["x_key"],
            y_key=metadata["y_key"],
            position_unit=unit,
            photon_energy_ev=float(metadata["photon_energy_ev"]),
            detector_distance_m=float(metadata["detector_distance_m"]),
            detector_pixel_size_m=float(metadata["detector_pixel_size_m"]),
            scan_area=area,
        )

    @property
    def metres_per_position_unit(self) -> float:
        """What one unit of the recorded positions is, in metres."""
        return LENGTH_UNITS[self.position_unit]

    @cached_property
    def field_of_view_m(self) -> float:
        """Edge in metres of the sample area one frame sees (:attr:`Geometry.field_of_view`; any frame size)."""
        return self.geometry((2, 2)).field_of_view

    def geometry(self, frame_shape: tuple[int, int]) -> Geometry:
        """The solver's geometry for frames of ``frame_shape`` (of binned pixels)."""
        return Geometry.from_energy(
            self.photon_energy_ev * ELECTRON_VOLT,
            self.detector_distance_m,
            self.detector_pixel_size_m * self.binning,
            frame_shape,
        )
