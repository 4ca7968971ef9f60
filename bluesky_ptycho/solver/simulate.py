"""Simulated far-field ptychography: test objects, probes, scans and data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import fft2
from .data import Geometry, PtychoData
from .forward import exit_waves, gather_patches, model_amplitude
from .probe import add_modes, normalize_power, propagate

DEFAULT_ENERGY_J = 8000 * 1.602176634e-19
DEFAULT_DISTANCE = 2.0
DEFAULT_PIXEL = 75e-6


def siemens_star(shape: tuple[int, int], spokes: int = 24, low: float = 0.3) -> np.ndarray:
    """Amplitude of a Siemens star filling ``shape``: values ``low`` and 1."""
    y, x = np.indices(shape, dtype=float)
    y -= (shape[0] - 1) / 2
    x -= (shape[1] - 1) / 2
    angle = np.arctan2(y, x)
    radius = np.hypot(y, x) / (min(shape) / 2)
    star = (np.sin(spokes / 2 * angle) > 0) & (radius < 0.95)
    star |= radius < 0.06
    # soften edges by half a pixel so the band limit does not alias
    kernel = np.fft.fft2(np.exp(-(y**2 + x**2) / 0.5), s=shape)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(star.astype(float)) * np.abs(kernel) / np.abs(kernel).max()))
    return (low + (1 - low) * np.clip(smooth, 0, 1)).astype(np.float32)


def test_object(shape: tuple[int, int], max_phase: float = 1.0) -> np.ndarray:
    """A complex test object: Siemens-star amplitude and a smooth phase pattern."""
    amplitude = siemens_star(shape)
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    phase = np.sin(2.5 * np.pi * x) * np.cos(1.5 * np.pi * y) + np.exp(
        -((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.1
    )
    phase *= max_phase / np.abs(phase).max()
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def fermat_spiral(n: int, step: float) -> np.ndarray:
    """``n`` positions (x, y) on a Fermat spiral with mean neighbour distance ~``step``, centred."""
    k = np.arange(n)
    radius = step * np.sqrt(k) * 0.57
    angle = k * np.pi * (3 - np.sqrt(5))
    positions = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return positions - positions.mean(axis=0)


def aperture_probe(shape: tuple[int, int], diameter: float, curvature: float = 0.5) -> np.ndarray:
    """A soft-edged circular aperture of ``diameter`` pixels with a quadratic phase of ``curvature`` rad at its edge."""
    y, x = np.indices(shape, dtype=float)
    r = np.hypot(y - shape[0] / 2, x - shape[1] / 2) / (diameter / 2)
    amplitude = 0.5 * (1 - np.tanh((r - 1) * diameter / 3))
    return (amplitude * np.exp(1j * curvature * r**2)).astype(np.complex64)


def focused_probe(geometry: Geometry, pupil_radius: float, defocus: float) -> np.ndarray:
    """A zone-plate-like probe: a filled pupil of ``pupil_radius`` detector pixels, ``defocus`` metres from the focus."""
    h, w = geometry.frame_shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    pupil = 0.5 * (1 - np.tanh((np.hypot(fy, fx) - pupil_radius) * 2)).astype(np.complex64)
    focus = np.fft.fftshift(np.fft.ifft2(pupil))
    return propagate(focus.astype(np.complex64), geometry, defocus).astype(np.complex64)


def probe_diameter(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter in pixels of the centred disc holding ``fraction`` of the probe's power."""
    intensity = np.sum(np.abs(np.atleast_3d(probe).reshape(-1, *probe.shape[-2:])) ** 2, axis=0)
    y, x = np.indices(intensity.shape)
    cy = np.sum(y * intensity) / intensity.sum()
    cx = np.sum(x * intensity) / intensity.sum()
    r = np.hypot(y - cy, x - cx).ravel()
    order = np.argsort(r)
    enclosed = np.cumsum(intensity.ravel()[order]) / intensity.sum()
    return 2 * float(r[order][np.searchsorted(enclosed, fraction)])


@dataclass
class SimulatedData:
    """Simulated dataset and the truth it came from.

    ``data.positions`` are the nominal positions given to a reconstruction;
    ``true_positions`` (x, y metres) generated the frames. ``object_origin``
    is the (x, y) position of the true object's top-left pixel.
    """

    data: PtychoData
    true_object: np.ndarray
    true_probe: np.ndarray
    true_positions: np.ndarray
    object_origin: tuple[float, float]

    def illumination(self) -> np.ndarray:
        """Total probe intensity on the true object's grid over the true positions."""
        corners = true_corners(self)
        weights = np.sum(np.abs(self.true_probe) ** 2, axis=0)
        total = np.zeros(self.true_object.shape, dtype=np.float64)
        h, w = weights.shape
        for r, c in corners:
            total[r : r + h, c : c + w] += weights
        return total


def true_corners(sim: SimulatedData) -> np.ndarray:
    """Integer (row, column) corners of the true positions on the true object."""
    py, px = sim.data.geometry.sample_pixel_size
    offset = (sim.true_positions - np.asarray(sim.object_origin))[:, ::-1] / (py, px)
    return np.rint(offset).astype(np.int64)


def simulate(
    n_frames: int = 200,
    frame_size: int = 64,
    overlap: float = 0.7,
    photons: float | None = 1e6,
    probe_modes: int = 1,
    probe_kind: str = "aperture",
    probe_defocus: float = 0.0,
    position_error: float = 0.0,
    energy: float = DEFAULT_ENERGY_J,
    detector_distance: float = DEFAULT_DISTANCE,
    detector_pixel_size: float = DEFAULT_PIXEL,
    seed: int = 0,
) -> SimulatedData:
    """Simulate a far-field ptychography scan on a Fermat spiral.

    Parameters
    ----------
    n_frames, frame_size
        Number of frames and their edge in pixels.
    overlap
        Linear overlap of neighbouring probe footprints (0.7: neighbours are
        30 % of the probe diameter apart).
    photons
        Mean photons per frame (through a flat object); Poisson noise is
        applied. None: noise-free intensities scaled to 1e6 photons.
    probe_modes
        Incoherent probe modes (mixed state) of the simulated beam.
    probe_kind
        "aperture": a soft circular aperture of a third of the frame with a
        curved phase front. "focused": a zone-plate focus (pupil a sixth of the
        detector) seen ``probe_defocus`` metres downstream of the focus.
    probe_defocus
        Sample distance from the focus in metres, for ``probe_kind="focused"``.
    position_error
        RMS error in object pixels added to the nominal positions (the data
        are simulated at the true positions).
    energy, detector_distance, detector_pixel_size
        Geometry in SI units (joules, metres).
    seed
        Seed for the noise and position errors.

    Returns
    -------
    SimulatedData
        The positions of the true scan lie on the object's pixel grid, so the
        simulated frames are exactly what the forward model predicts.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be within [0, 1), got {overlap}")
    rng = np.random.default_rng(seed)
    shape = (frame_size, frame_size)
    geometry = Geometry.from_energy(energy, detector_distance, detector_pixel_size, shape)
    py, px = geometry.sample_pixel_size
    if probe_kind == "aperture":
        probe = aperture_probe(shape, frame_size / 3)
    elif probe_kind == "focused":
        probe = focused_probe(geometry, frame_size / 6, probe_defocus)
    else:
        raise ValueError(f"probe_kind must be 'aperture' or 'focused', got {probe_kind!r}")
    probe = add_modes(probe, probe_modes, weight=0.5)
    step = probe_diameter(probe) * (1 - overlap) * px
    positions = fermat_spiral(n_frames, step)
    positions = np.round(positions / (px, py)) * (px, py)
    margin = 4
    origin = positions.min(axis=0) - margin * np.array([px, py])
    corners = np.rint((positions - origin)[:, ::-1] / (py, px)).astype(np.int64)
    extent = corners.max(axis=0) + shape + margin
    obj = test_object(tuple(int(e) for e in extent))
    probe = normalize_power(probe, 1e6 if photons is None else photons)
    amplitude = model_amplitude(fft2(exit_waves(probe, gather_patches(obj, corners, shape))))
    intensity = np.fft.fftshift(amplitude**2, axes=(-2, -1))
    frames = intensity if photons is None else rng.poisson(intensity).astype(np.float32)
    nominal = positions + rng.normal(scale=position_error, size=positions.shape) * (px, py)
    data = PtychoData(frames=frames, positions=nominal, geometry=geometry)
    return SimulatedData(
        data=data,
        true_object=obj,
        true_probe=probe,
        true_positions=positions,
        object_origin=(float(origin[0]), float(origin[1])),
    )
