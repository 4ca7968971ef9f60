"""Typed containers for a ptychography experiment and for a reconstruction result.

Conventions (SI units throughout):

* frames are photon counts, shape (N, H, W), zero spatial frequency at the
  centre of each frame (as a detector records it);
* positions are sample positions in metres, shape (N, 2), columns (x, y)
  as in CXI ``translation``;
* images in the sample plane (object, probe) are indexed (row=y, column=x).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

PLANCK_TIMES_C = 6.62607015e-34 * 299792458.0  # J m
ELECTRON_VOLT = 1.602176634e-19  # J
# metres per unit of the lengths users type and plans record
LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9}


def wavelength_from_energy(energy_joule: float) -> float:
    """Photon wavelength in metres for a photon energy in joules."""
    if not energy_joule > 0:
        raise ValueError(f"photon energy must be positive, got {energy_joule!r} J")
    return PLANCK_TIMES_C / energy_joule


def energy_from_wavelength(wavelength: float) -> float:
    """Photon energy in joules for a wavelength in metres."""
    if not wavelength > 0:
        raise ValueError(f"wavelength must be positive, got {wavelength!r} m")
    return PLANCK_TIMES_C / wavelength


def combined(weights, eigen_probes):
    """``sum_k weights[:, k] * eigen_probes[k]``: (B, h, w) of (B, K) real weights and (K, h, w) eigen-probes.

    Element-wise, not as a matrix product: BLAS's threads spin on the
    cores after a product, and the FFTs that follow it ran 8x slower.
    """
    total = weights[:, 0, None, None] * eigen_probes[0]
    for k in range(1, len(eigen_probes)):
        total += weights[:, k, None, None] * eigen_probes[k]
    return total


@dataclass
class ProbeVariation:
    """Frames' changes of the first probe mode, ``V_j = sum_k weights[j, k] * eigen_probes[k]`` (:mod:`.variable_probe`).

    ``weights`` (B, K) real and ``eigen_probes`` (K, h, w) complex, on one
    array module; the compiled kernels form each ``V_j`` row by row as they go.
    """

    weights: Any
    eigen_probes: Any

    def frames(self):
        """Every ``V_j``, (B, h, w)."""
        return combined(self.weights, self.eigen_probes)

    def of(self, index) -> ProbeVariation:
        """The changes of the frames at ``index`` (an index array of the weights' array module) alone."""
        return ProbeVariation(self.weights[index], self.eigen_probes)


def kernel_variation(variation: ProbeVariation | None, n_frames: int, probe) -> tuple[Any, Any]:
    """``(weights, eigen_probes)`` of ``variation`` as the compiled kernels take them: (B, K) and (K, h, w), K = 0 for None."""
    if variation is not None:
        return variation.weights, variation.eigen_probes
    return np.zeros((n_frames, 0), np.float32), np.zeros((0, *probe.shape[1:]), probe.dtype)


@dataclass(frozen=True)
class Geometry:
    """Far-field geometry of the instrument.

    Parameters
    ----------
    wavelength
        Photon wavelength in metres.
    detector_distance
        Sample-to-detector distance in metres.
    detector_pixel_size
        Edge of one (square) detector pixel in metres.
    frame_shape
        (H, W) of the diffraction frames used for reconstruction.
    """

    wavelength: float
    detector_distance: float
    detector_pixel_size: float
    frame_shape: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("wavelength", "detector_distance", "detector_pixel_size"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"Geometry.{name} must be a positive number, got {value!r}")
        shape = tuple(int(n) for n in self.frame_shape)
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"Geometry.frame_shape must be (H, W) >= 2, got {self.frame_shape!r}")
        object.__setattr__(self, "frame_shape", shape)

    @classmethod
    def from_energy(
        cls,
        energy_joule: float,
        detector_distance: float,
        detector_pixel_size: float,
        frame_shape: tuple[int, int],
    ) -> Geometry:
        """Build a geometry from the photon energy in joules instead of the wavelength."""
        return cls(
            wavelength_from_energy(energy_joule),
            detector_distance,
            detector_pixel_size,
            frame_shape,
        )

    @property
    def energy(self) -> float:
        """Photon energy in joules."""
        return energy_from_wavelength(self.wavelength)

    def to_dict(self) -> dict[str, Any]:
        """The geometry as plain JSON (SI units)."""
        return {
            "wavelength": self.wavelength,
            "detector_distance": self.detector_distance,
            "detector_pixel_size": self.detector_pixel_size,
            "frame_shape": list(self.frame_shape),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Geometry:
        """The inverse of :meth:`to_dict`."""
        return cls(
            float(values["wavelength"]),
            float(values["detector_distance"]),
            float(values["detector_pixel_size"]),
            tuple(values["frame_shape"]),
        )

    def mismatches(self, other: Geometry, tolerance: float = 0.01) -> list[str]:
        """What differs between this geometry and ``other`` beyond ``tolerance`` (relative), in words."""
        found = []
        if self.frame_shape != other.frame_shape:
            found.append(f"frame shape {self.frame_shape} against {other.frame_shape}")
        for name, value, unit, scale in (
            ("photon energy", "energy", "eV", ELECTRON_VOLT),
            ("detector distance", "detector_distance", "m", 1.0),
            ("detector pixel size", "detector_pixel_size", "um", 1e-6),
        ):
            mine, theirs = getattr(self, value), getattr(other, value)
            if abs(mine - theirs) > tolerance * abs(theirs):
                found.append(f"{name} {mine / scale:.5g} {unit} against {theirs / scale:.5g} {unit}")
        return found

    @property
    def field_of_view(self) -> float:
        """Edge in metres of the sample area one frame sees: wavelength x distance / detector pixel."""
        return self.wavelength * self.detector_distance / self.detector_pixel_size

    @property
    def sample_pixel_size(self) -> tuple[float, float]:
        """(y, x) size in metres of one pixel of the reconstructed images."""
        h, w = self.frame_shape
        return (self.field_of_view / h, self.field_of_view / w)


# what far-field X-ray ptychography uses; a value outside is most likely a unit mistake
PLAUSIBLE_GEOMETRY = {
    "photon energy": (100 * ELECTRON_VOLT, 100e3 * ELECTRON_VOLT, ELECTRON_VOLT, "eV"),
    "detector distance": (0.05, 50.0, 1.0, "m"),
    "detector pixel size": (1e-6, 2e-3, 1e-6, "um"),
    "object pixel size": (0.3e-9, 5e-6, 1e-9, "nm"),
}


def geometry_warnings(geometry: Geometry) -> list[str]:
    """Warnings naming each geometry value outside what X-ray ptychography uses (likely a unit mistake)."""
    values = {
        "photon energy": geometry.energy,
        "detector distance": geometry.detector_distance,
        "detector pixel size": geometry.detector_pixel_size,
        "object pixel size": max(geometry.sample_pixel_size),
    }
    warnings = []
    for name, value in values.items():
        low, high, unit, unit_name = PLAUSIBLE_GEOMETRY[name]
        if not low <= value <= high:
            warnings.append(
                f"suspicious geometry: {name} {value / unit:.4g} {unit_name} is outside "
                f"{low / unit:g}-{high / unit:g} {unit_name}; check its unit"
            )
    return warnings


@dataclass
class PtychoData:
    """One ptychographic dataset: frames, positions, geometry and optional extras.

    Parameters
    ----------
    frames
        Photon counts, (N, H, W), zero frequency at the frame centre, as
        recorded (unsigned 16- or 32-bit integers from a detector; reals
        are taken too).
    positions
        Sample positions in metres, (N, 2), columns (x, y).
    geometry
        The instrument geometry; its ``frame_shape`` must equal (H, W).
    mask
        Optional (H, W) boolean array, True where the detector pixel is good.
    probe
        Optional initial probe in the sample plane, (modes, H, W) complex.
    object
        Optional initial object, 2-D complex, with the sample pixel size.
    probe_defocus
        Optional distance in metres of the sample from the probe focus
        (positive: sample downstream of the focus).
    """

    frames: np.ndarray
    positions: np.ndarray
    geometry: Geometry
    mask: np.ndarray | None = None
    probe: np.ndarray | None = None
    object: np.ndarray | None = None
    probe_defocus: float | None = None

    def __post_init__(self) -> None:
        self.frames, self.positions = validate_frames_and_positions(
            self.frames, self.positions, self.geometry.frame_shape
        )
        if self.mask is not None:
            self.mask = validate_mask(self.mask, self.geometry.frame_shape)
        if self.probe is not None:
            self.probe = validate_probe(self.probe, self.geometry.frame_shape)

    def __len__(self) -> int:
        return self.frames.shape[0]


def validate_frames_and_positions(
    frames: Any, positions: Any, frame_shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check frames and positions; return the frames as given (counts as recorded: no copy) and the positions as float64.

    Raises
    ------
    ValueError
        Naming the problem: wrong dimensions, different lengths, no frames,
        a frame shape other than ``frame_shape``, frames that are not real
        numbers, non-finite or negative counts, non-finite positions.
    """
    frames = np.asarray(frames)
    positions = np.asarray(positions, dtype=np.float64)
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    if frames.ndim != 3:
        raise ValueError(f"frames must have shape (N, H, W), got shape {frames.shape}")
    if positions.ndim == 1 and positions.shape == (2,):
        positions = positions[np.newaxis]
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2) as (x, y) metres, got {positions.shape}")
    if frames.shape[0] == 0:
        raise ValueError("the dataset is empty: no frames were given")
    if frames.shape[0] != positions.shape[0]:
        raise ValueError(
            f"frames and positions have different lengths: {frames.shape[0]} frames, "
            f"{positions.shape[0]} positions"
        )
    if frame_shape is not None and tuple(frames.shape[1:]) != tuple(frame_shape):
        raise ValueError(f"frames have shape {frames.shape[1:]}, the geometry expects {frame_shape}")
    if frames.dtype.kind not in "uif":
        raise ValueError(f"frames must be photon counts (integers or reals), got type {frames.dtype}")
    # reductions, not element-wise tests: no temporary the size of the frames
    if frames.dtype.kind == "f" and not np.isfinite(frames.sum(dtype=np.float64)):
        bad = int(np.count_nonzero(~np.isfinite(frames)))
        raise ValueError(f"frames contain {bad} non-finite (NaN or inf) values")
    if frames.dtype.kind != "u" and frames.min() < 0:
        bad = int(np.count_nonzero(frames < 0))
        raise ValueError(f"frames contain {bad} negative counts")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain non-finite (NaN or inf) values")
    return frames, positions


def validate_mask(mask: Any, frame_shape: tuple[int, int]) -> np.ndarray:
    """Return ``mask`` as a boolean (H, W) array, True for good pixels."""
    mask = np.asarray(mask)
    if mask.shape != tuple(frame_shape):
        raise ValueError(f"mask has shape {mask.shape}, the frames have shape {tuple(frame_shape)}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask marks every detector pixel as bad")
    return mask


def validate_probe(probe: Any, frame_shape: tuple[int, int]) -> np.ndarray:
    """Return ``probe`` as a (modes, H, W) complex64 array, checking its shape."""
    probe = np.asarray(probe)
    if probe.ndim == 2:
        probe = probe[np.newaxis]
    if probe.ndim != 3:
        raise ValueError(f"probe must have shape (modes, H, W), got {probe.shape}")
    if probe.shape[1:] != tuple(frame_shape):
        raise ValueError(
            f"probe has shape {probe.shape[1:]} but the frames are {tuple(frame_shape)}: "
            "the probe must have the frame shape"
        )
    if not np.all(np.isfinite(probe)):
        raise ValueError("probe contains non-finite values")
    return probe.astype(np.complex64)


@dataclass
class ReconstructionResult:
    """A snapshot of a reconstruction.

    Attributes
    ----------
    object
        Complex transmission function, 2-D, pixel size ``pixel_size``.
    probe
        Probe modes in the sample plane, (modes, H, W), strongest first.
    positions
        Refined positions in metres, (N, 2), columns (x, y).
    pixel_size
        (y, x) size in metres of one object / probe pixel.
    object_origin
        (x, y) position in metres that puts the probe's top-left pixel on
        the object's top-left pixel.
    cost_history
        Normalised Fourier amplitude cost after each iteration.
    iterations
        Total iterations done so far.
    settings
        The settings used, as a plain dictionary.
    wall_time
        Seconds spent iterating.
    extra
        Anything an algorithm reports beyond the above (e.g. the defocus estimate).
    geometry
        The geometry the data were recorded with (None where unknown, e.g.
        a result file written before it was recorded): what a reused probe
        is checked against.
    frame_scales
        (N,) each frame's beam amplitude relative to the scan's mean, where
        the intensity was corrected (:mod:`.intensity`), else None: the
        model of frame ``j`` is ``frame_scales[j]`` times probe times object.
    eigen_probes, eigen_weights
        (K, h, w) and (N, K), where the probe varied through the scan
        (:mod:`.variable_probe`), else None: frame ``j``'s first probe mode
        is ``probe[0] + sum_k eigen_weights[j, k] * eigen_probes[k]``
        (:meth:`frame_probes`).
    """

    object: np.ndarray
    probe: np.ndarray
    positions: np.ndarray
    pixel_size: tuple[float, float]
    object_origin: tuple[float, float]
    cost_history: list[float]
    iterations: int
    settings: dict[str, Any]
    wall_time: float
    extra: dict[str, Any] = field(default_factory=dict)
    geometry: Geometry | None = None
    frame_scales: np.ndarray | None = None
    eigen_probes: np.ndarray | None = None
    eigen_weights: np.ndarray | None = None

    #: the attributes that hold one row per frame, in the frames' order
    PER_FRAME: ClassVar[tuple[str, ...]] = ("positions", "frame_scales", "eigen_weights")

    def of_frames(self, frames) -> ReconstructionResult:
        """This result with only the rows of ``frames`` (a slice or indices) in its per-frame arrays."""
        rows = {name: getattr(self, name) for name in self.PER_FRAME}
        return replace(self, **{name: None if v is None else v[frames] for name, v in rows.items()})

    def frame_probes(self, frames: slice) -> np.ndarray:
        """The probe modes that lit ``frames``: (B, modes, h, w), or (1, modes, h, w) where every frame had the same."""
        if self.eigen_probes is None:
            return self.probe[None]
        probes = np.repeat(self.probe[None], len(self.eigen_weights[frames]), axis=0)
        probes[:, 0] += combined(self.eigen_weights[frames], self.eigen_probes)
        return probes

    @property
    def n_frames(self) -> int:
        """Number of frames the reconstruction used."""
        return int(self.positions.shape[0])

    @property
    def warnings(self) -> list[str]:
        """What the reconstruction warned about: suspicious geometry, a flipped defocus, positions or the probe's variation held at their bound, recovered divergence."""
        warnings = list(self.extra.get("warnings", []))
        if self.extra.get("probe_defocus_sign_corrected"):
            warnings.append(f"probe defocus sign corrected to {self.extra['probe_defocus']:.4g} m")
        refinement = self.extra.get("position_refinement", {})
        if refinement.get("frames_at_bound"):
            warnings.append(
                f"position refinement ran away: {refinement['frames_at_bound']} frames were held at "
                f"{refinement['bound_px']:g} pixels from the positions they started from"
            )
        variation = self.extra.get("variable_probe", {})
        if variation.get("frames_at_bound"):
            warnings.append(
                f"the probe's variation ran away: {variation['frames_at_bound']} frames were held at "
                f"{variation['bound']:g} of the probe"
            )
        for event in self.extra.get("divergence", []):
            warnings.append(
                f"diverged at iteration {event['iteration']} (cost {event['cost']:.3g}, best "
                f"{event['best']:.3g}): best state restored, {event['action']}"
            )
        return warnings

    @property
    def final_cost(self) -> float:
        """Cost after the last iteration (NaN before the first)."""
        return self.cost_history[-1] if self.cost_history else float("nan")
