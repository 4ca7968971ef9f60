"""Simulated far-field ptychography: test objects, probes, scans and data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .backend import fft2
from .data import Geometry, PtychoData
from .defocus import magnification_scale
from .forward import exit_waves, gather_patches, model_amplitude
from .imperfections import ProbeDrift, StageErrors, fly_path, stage_of_frames
from .probe import add_modes, moved_probes, normalize_power, orthogonalize_modes, propagate, shift_ramp

DEFAULT_ENERGY_J = 8000 * 1.602176634e-19
DEFAULT_DISTANCE = 2.0
DEFAULT_PIXEL = 75e-6
OBJECT_KINDS = ("star", "weak_phase", "porous")
# exit waves simulated at a time: a scan of any length needs memory for its frames only
SIMULATION_CHUNK_BYTES = 2**30
# pixels: true positions this close to the object's grid are on it
SUBPIXEL_TOLERANCE = 1e-6


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


def weak_phase_object(shape: tuple[int, int], max_phase: float = 0.4, absorption: float = 0.03) -> np.ndarray:
    """A thin Siemens star as a hard X-ray beam sees it: a weak phase object.

    Where the star's material is, the phase is ``max_phase`` and the amplitude
    ``1 - absorption``; elsewhere the object is 1 (little amplitude contrast).
    """
    return thin_sample(siemens_star(shape, low=0.0).astype(np.float64), max_phase, absorption)


def porous_object(
    shape: tuple[int, int],
    rng: np.random.Generator,
    max_phase: float = 0.4,
    absorption: float = 0.03,
    pore_size: float = 12.0,
) -> np.ndarray:
    """A thin porous sample as a hard X-ray beam sees it: a weak phase object with random, isotropic texture.

    Pores of about ``pore_size`` pixels (the correlation length of a smoothed
    random field cut at its median) in material of phase ``max_phase`` and
    amplitude ``1 - absorption``. Unlike a Siemens star it looks different
    wherever it is lit and in every direction, as measured porous samples
    do: a position error of a scan step is visible in every frame.
    """
    import scipy.ndimage  # here, not in every import of the solver

    field = scipy.ndimage.gaussian_filter(rng.normal(size=shape), pore_size / 3, mode="wrap")
    material = (field > np.median(field)).astype(np.float64)
    thickness = scipy.ndimage.gaussian_filter(material, 0.7)  # edges of a pixel, as the star's
    return thin_sample(thickness, max_phase, absorption)


def thin_sample(thickness: np.ndarray, max_phase: float, absorption: float) -> np.ndarray:
    """The transmission of a thin sample whose ``thickness`` (0-1) shifts the phase by up to ``max_phase`` and absorbs up to ``absorption``."""
    return ((1 - absorption * thickness) * np.exp(1j * max_phase * thickness)).astype(np.complex64)


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


def pupil(shape: tuple[int, int], radius: float, central_stop: float = 0.0) -> np.ndarray:
    """A soft-edged annular pupil in FFT order: ``radius`` detector pixels, inner edge ``central_stop * radius``."""
    h, w = shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    r = np.hypot(fy, fx)
    outer = 0.5 * (1 - np.tanh((r - radius) * 2))
    inner = 0.5 * (1 + np.tanh((r - central_stop * radius) * 2)) if central_stop > 0 else 1.0
    return (outer * inner).astype(np.complex64)


def focused_probe(
    geometry: Geometry,
    pupil_radius: float,
    defocus: float,
    central_stop: float = 0.0,
    order_sorting_aperture: float | None = None,
) -> np.ndarray:
    """A zone-plate probe ``defocus`` metres from its focus.

    Parameters
    ----------
    geometry
        The instrument geometry (the probe has its frame shape).
    pupil_radius
        Radius of the zone plate's bright-field disc on the detector, pixels.
    defocus
        Distance of the sample from the focus, m (+ = downstream).
    central_stop
        Diameter of the zone plate's central stop as a fraction of its own.
    order_sorting_aperture
        Diameter in sample pixels of the order-sorting aperture in the focal
        plane (None: none); it cuts the focus's outer rings.
    """
    focus = np.fft.fftshift(np.fft.ifft2(pupil(geometry.frame_shape, pupil_radius, central_stop)))
    if order_sorting_aperture is not None:
        focus *= aperture_probe(geometry.frame_shape, order_sorting_aperture, curvature=0.0).real
    return propagate(focus.astype(np.complex64), geometry, defocus).astype(np.complex64)


def partially_coherent_probe(
    focus_probe: np.ndarray, geometry: Geometry, defocus: float, source_size: float, n_modes: int
) -> np.ndarray:
    """The ``n_modes`` strongest coherent modes of a beam from a source of finite size.

    Each point of the source puts the focus ``focus_probe`` (H, W) at another
    place: the beam is the incoherent sum of the focus displaced over a
    Gaussian of RMS ``source_size`` focal-plane pixels, propagated ``defocus``
    metres. Its coherent modes (the eigenvectors of that ensemble) carry
    unequal power, strongest first, as a measured beam's do; the modes kept
    carry the total power.
    """
    if n_modes == 1 and source_size == 0:
        return propagate(focus_probe, geometry, defocus)[None].astype(np.complex64)
    steps = np.arange(-2, 3) * max(source_size, 1e-9)
    shifts = [(dy, dx) for dy in steps for dx in steps]
    weights = np.array([np.exp(-(dy**2 + dx**2) / (2 * max(source_size, 1e-9) ** 2)) for dy, dx in shifts])
    spectrum = np.fft.fft2(focus_probe)
    ensemble = np.stack(
        [
            np.sqrt(weight) * np.fft.ifft2(spectrum * shift_ramp(focus_probe.shape, shift))
            for weight, shift in zip(weights / weights.sum(), shifts, strict=True)
        ]
    )
    modes = orthogonalize_modes(ensemble.astype(np.complex64))[:n_modes]
    return propagate(modes, geometry, defocus).astype(np.complex64)


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


@dataclass(frozen=True)
class DetectorModel:
    """What a photon-counting or integrating detector adds to the diffracted intensity.

    Parameters
    ----------
    background
        Mean photons per pixel from air and stray scatter (Poisson), spread
        smoothly over the detector and stronger towards its centre.
    readout_noise
        RMS of Gaussian read noise in counts (0 for a counting detector).
    dead_fraction, hot_fraction
        Fractions of pixels that read 0 and that read a large constant.
    beamstop_radius
        Radius in pixels of the central beamstop (reads nothing); 0 for none.

    Every pixel the detector spoils (dead, hot, behind the beamstop) is
    False in the mask that :meth:`record` returns.
    """

    background: float = 0.0
    readout_noise: float = 0.0
    dead_fraction: float = 0.0
    hot_fraction: float = 0.0
    beamstop_radius: float = 0.0

    def record(self, intensity: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Counts (N, H, W) from expected photons ``intensity`` (centred), as :func:`counts_type` says, and the good-pixel mask."""
        h, w = intensity.shape[-2:]
        y, x = np.indices((h, w))
        radius = np.hypot(y - h / 2, x - w / 2)
        scatter = np.exp(-radius / (0.3 * min(h, w)))
        expected = intensity + self.background * scatter / scatter.mean()
        counts = rng.poisson(expected).astype(np.float32)
        if self.readout_noise > 0:
            counts += rng.normal(scale=self.readout_noise, size=counts.shape).astype(np.float32)
            counts = np.clip(np.rint(counts), 0, None)
        mask = radius >= self.beamstop_radius if self.beamstop_radius > 0 else np.ones((h, w), bool)
        dead = rng.random((h, w)) < self.dead_fraction
        hot = rng.random((h, w)) < self.hot_fraction
        counts[:, dead | ~mask] = 0
        counts[:, hot] = np.rint(10 * max(float(intensity.max()), 1.0))
        return counts.astype(counts_type(float(counts.max()))), mask & ~dead & ~hot


@dataclass
class SimulatedData:
    """Simulated dataset and the truth it came from.

    ``data.positions`` are the nominal positions given to a reconstruction;
    ``true_positions`` (x, y metres) generated the frames. ``object_origin``
    is the (x, y) position of the true object's top-left pixel. A drifting
    probe's ``true_probes`` (stages, modes, h, w) lit successive equal shares
    of the scan (:func:`.imperfections.stage_of_frames`; ``true_probe`` is
    the first); a fly scan's ``fly_path`` (samples, N, 2) holds where the
    sample was during each exposure (``true_positions`` its middles).
    """

    data: PtychoData
    true_object: np.ndarray
    true_probe: np.ndarray
    true_positions: np.ndarray
    object_origin: tuple[float, float]
    true_probes: np.ndarray | None = None
    fly_path: np.ndarray | None = None

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
    return grid_places(sim.true_positions, sim.object_origin, sim.data.geometry.sample_pixel_size)[0]


def grid_places(
    positions: np.ndarray, origin, pixel_size: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Where ``positions`` (..., 2: x, y metres) are on an object whose first pixel is at ``origin`` (x, y).

    Returns their nearest pixels (..., 2: row, column; integers) and how
    far each position is from its pixel (..., 2 pixels, within a half).
    """
    exact = (positions - np.asarray(origin))[..., ::-1] / np.asarray(pixel_size)
    corners = np.rint(exact).astype(np.int64)
    return corners, exact - corners


def counts_type(largest: float) -> type:
    """The unsigned integer type a counting detector records counts up to ``largest`` in: 16 bits, or 32."""
    return np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of ``expected`` photons (N, h, w), as :func:`counts_type` says (the draws of one ``rng.poisson``).

    Drawn a frame at a time: no temporary of 64-bit integers the size of the scan.
    """
    counts = np.empty(expected.shape, np.uint16)
    for frame, photons in enumerate(expected):
        drawn = rng.poisson(photons)
        if counts.dtype != counts_type(float(drawn.max())):
            counts = counts.astype(np.uint32)
        counts[frame] = drawn
    return counts


def far_field_intensity(
    obj: np.ndarray,
    corners: np.ndarray,
    probe: np.ndarray,
    record: Callable[[np.ndarray], np.ndarray] | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Detector intensities (N, h, w), zero frequency centred, of ``probe`` on the patches at ``corners``.

    Computed ``SIMULATION_CHUNK_BYTES`` of exit waves at a time, in the
    precision of ``obj`` and ``probe``. ``record`` (expected photons of some
    frames -> what the detector records of them) turns each chunk into
    counts as it comes: a scan of any length then needs memory for its
    counts only. None: the noise-free intensities. ``offsets`` (N, 2):
    how far (rows, columns; within half a pixel) each frame's sample was
    from its corner, None: nowhere. The exit wave of the patch at
    ``corner + offset`` is that of the probe moved by ``offset`` (a Fourier
    shift) on the patch at ``corner``, moved by ``-offset``: the same
    intensity.
    """
    shape = probe.shape[-2:]
    per_chunk = max(1, SIMULATION_CHUNK_BYTES // (probe.size * np.result_type(obj, probe).itemsize))
    frames = None
    for first in range(0, len(corners), per_chunk):
        part = slice(first, first + per_chunk)
        patches = gather_patches(obj, corners[part], shape)
        if offsets is None:
            waves = exit_waves(probe, patches)
        else:
            waves = moved_probes(probe, offsets[part]) * patches[:, None]
        amplitude = model_amplitude(fft2(waves))
        chunk = np.fft.fftshift(amplitude**2, axes=(-2, -1))
        if record is not None:
            chunk = record(chunk)
        if frames is None:
            frames = np.empty((len(corners), *shape), chunk.dtype)
        elif frames.dtype != np.result_type(frames, chunk):  # 16-bit counts that need 32 bits now
            frames = frames.astype(np.result_type(frames, chunk))
        frames[part] = chunk
    return frames


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
    *,
    pupil_radius: float | None = None,
    central_stop: float = 0.0,
    order_sorting_aperture: float | None = None,
    source_size: float = 0.0,
    object_kind: str = "star",
    detector: DetectorModel | None = None,
    stage: StageErrors | None = None,
    fly_motion: float = 0.0,
    probe_drift: ProbeDrift | None = None,
    on_grid: bool = True,
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
        Mean photons per frame (through a flat object). None: noise-free
        intensities scaled to 1e6 photons.
    probe_modes
        Incoherent probe modes (mixed state) of the simulated beam.
    probe_kind
        "aperture": a soft circular aperture of a third of the frame with a
        curved phase front. "focused": a zone-plate focus seen
        ``probe_defocus`` metres downstream of the focus (see
        ``pupil_radius``, ``central_stop``, ``order_sorting_aperture``,
        ``source_size``).
    probe_defocus
        Sample distance from the focus in metres, for ``probe_kind="focused"``.
    position_error
        RMS error in object pixels added to the nominal positions (the data
        are simulated at the true positions).
    energy, detector_distance, detector_pixel_size
        Geometry in SI units (joules, metres).
    seed
        Seed for the noise and position errors.
    pupil_radius
        Radius of the zone plate's bright-field disc in detector pixels
        (default: a sixth of the frame).
    central_stop, order_sorting_aperture
        The zone plate's central stop (fraction of its diameter) and the
        order-sorting aperture's diameter in sample pixels; see :func:`focused_probe`.
    source_size
        RMS size of the source's image in the focal plane, pixels: above 0
        the beam is partially coherent and ``probe_modes`` are its strongest
        coherent modes (see :func:`partially_coherent_probe`).
    object_kind
        "star": a Siemens-star amplitude with a strong smooth phase;
        "weak_phase": a thin star with little amplitude contrast (:func:`weak_phase_object`);
        "porous": as thin, a random porous texture (:func:`porous_object`).
    detector
        Detector effects (background, read noise, dead and hot pixels,
        beamstop) with the mask of the pixels they spoil; None: Poisson noise only.
    stage
        How far the true positions are from the recorded ones, a clean
        spiral (:class:`.StageErrors`: random errors, scale, rotation, shear,
        drift); None: none beyond ``position_error``.
    fly_motion
        A fly scan: how far the sample moves during each exposure, in scan
        steps (each frame the incoherent sum over that motion, recorded at
        its middle); 0: a step scan.
    probe_drift
        A probe that changes slowly through the scan (:class:`.ProbeDrift`).
    on_grid
        The spiral's positions rounded to the object's pixels; False: where
        the spiral puts them, between pixels, as a real stage does.

    Returns
    -------
    SimulatedData
        A clean scan on the grid has its true positions on the object's
        pixels, so its frames are exactly what the forward model predicts; a
        clean scan off the grid, a ``stage``'s
        errors and a fly scan's motion put them between pixels, as a real
        stage does (each frame simulated with the probe moved by the
        fraction, :func:`far_field_intensity`): no reconstruction on the
        grid fits those frames exactly.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be within [0, 1), got {overlap}")
    if object_kind not in OBJECT_KINDS:
        raise ValueError(f"object_kind must be one of {OBJECT_KINDS}, got {object_kind!r}")
    rng = np.random.default_rng(seed)
    shape = (frame_size, frame_size)
    geometry = Geometry.from_energy(energy, detector_distance, detector_pixel_size, shape)
    py, px = geometry.sample_pixel_size
    if probe_kind == "aperture":
        probe = add_modes(aperture_probe(shape, frame_size / 3), probe_modes, weight=0.5)
    elif probe_kind == "focused":
        radius = frame_size / 6 if pupil_radius is None else pupil_radius
        focus = focused_probe(geometry, radius, 0.0, central_stop, order_sorting_aperture)
        if source_size > 0:
            probe = partially_coherent_probe(focus, geometry, probe_defocus, source_size, probe_modes)
        else:
            probe = add_modes(propagate(focus, geometry, probe_defocus), probe_modes, weight=0.5)
    else:
        raise ValueError(f"probe_kind must be 'aperture' or 'focused', got {probe_kind!r}")
    step = probe_diameter(probe) * (1 - overlap) * px
    pixel = np.array([px, py])
    recorded = fermat_spiral(n_frames, step)
    if on_grid:
        recorded = np.round(recorded / pixel) * pixel
    imperfect = np.random.default_rng([seed, 1])  # the noise's draws stay those of a perfect scan
    positions = recorded if stage is None else stage.true_positions(recorded, step, imperfect)
    path = fly_path(positions, fly_motion * step, (py, px)) if fly_motion else None
    visited = positions[None] if path is None else path
    margin = 4
    origin = np.round(visited.reshape(-1, 2).min(axis=0) / pixel) * pixel - margin * pixel
    corners, offsets = grid_places(visited, origin, (py, px))
    if np.abs(offsets).max() < SUBPIXEL_TOLERANCE:  # a scan on the grid: the frames are the forward model's
        offsets = None
    extent = tuple(int(e) for e in corners.reshape(-1, 2).max(axis=0) + shape + margin)
    if object_kind == "star":
        obj = test_object(extent)
    elif object_kind == "weak_phase":
        obj = weak_phase_object(extent)
    else:  # porous, with a generator of its own: one seed, one sample, whatever the scan and the noise draw
        obj = porous_object(extent, np.random.default_rng([seed, 2]))
    probe = normalize_power(probe, 1e6 if photons is None else photons)
    probes = None if probe_drift is None else probe_drift.probes(probe, geometry, imperfect)
    mask = None
    if photons is not None and detector is None and path is None and probes is None:
        # counted chunk by chunk: a scan of any length needs memory for its counts only
        moved = None if offsets is None else offsets[0]
        frames = far_field_intensity(
            obj, corners[0], probe, lambda expected: poisson_counts(expected, rng), moved
        )
    else:
        intensity = blurred_intensity(obj, corners, probe[None] if probes is None else probes, offsets)
        if photons is None:
            frames = intensity
        elif detector is None:
            frames = poisson_counts(intensity, rng)
        else:
            frames, mask = detector.record(intensity, rng)
    nominal = recorded + rng.normal(scale=position_error, size=positions.shape) * (px, py)
    data = PtychoData(frames=frames, positions=nominal, geometry=geometry, mask=mask)
    return SimulatedData(
        data=data,
        true_object=obj,
        true_probe=probe if probes is None else probes[0],
        true_positions=positions,
        object_origin=(float(origin[0]), float(origin[1])),
        true_probes=probes,
        fly_path=path,
    )


def blurred_intensity(
    obj: np.ndarray, corners: np.ndarray, probes: np.ndarray, offsets: np.ndarray | None = None
) -> np.ndarray:
    """Noise-free intensities (N, h, w) of frames whose sample may have moved and whose probe may have drifted.

    ``corners`` (samples, N, 2): where each frame's patch was at each sample
    of its exposure, the frame the mean over them, and ``offsets`` (the same
    shape, or None) how far the sample was from them (:func:`far_field_intensity`);
    ``probes`` (stages, modes, h, w): the probes that lit successive equal
    shares of the scan. One sample and one probe: :func:`far_field_intensity`'s frames.
    """
    samples, n_frames = corners.shape[:2]
    stages = stage_of_frames(n_frames, len(probes))
    intensity = np.zeros((n_frames, *probes.shape[-2:]), np.float32)
    for sample, at_sample in enumerate(corners):
        for stage, probe in enumerate(probes):
            lit = stages == stage
            moved = None if offsets is None else offsets[sample, lit]
            intensity[lit] += far_field_intensity(obj, at_sample[lit], probe, offsets=moved) / samples
    return intensity


def realistic(
    defocus: float,
    photons: float = 1e6,
    n_frames: int = 300,
    frame_size: int = 128,
    seed: int = 0,
    *,
    stage: StageErrors | None = None,
    fly_motion: float = 0.0,
    probe_drift: ProbeDrift | None = None,
    object_kind: str = "weak_phase",
    **geometry,
) -> SimulatedData:
    """A scan as hard as measured data: what the robustness benchmark and the tests judge defaults on.

    A zone plate with a central stop and an order-sorting aperture, ``defocus``
    metres out of focus, whose bright-field disc is sized so that the probe
    spans about 40 % of the frame (as an experimenter would choose); a
    partially coherent beam (three modes, the first carrying about 70-80 %);
    a weak-phase Siemens star (``object_kind="porous"``: a porous sample as
    thin, :func:`porous_object`); Poisson noise with background, dead and hot
    pixels and a beamstop (masked); the spiral's true positions where it puts
    them, between the object's pixels, as a real stage's are; position
    errors of 3 % of the step, or the ``stage``'s errors where given; a fly
    scan's ``fly_motion`` and a ``probe_drift`` as :func:`simulate` takes them. ``geometry`` takes
    ``energy``, ``detector_distance`` and ``detector_pixel_size`` (default:
    those of :func:`simulate`).
    """
    energy = geometry.get("energy", DEFAULT_ENERGY_J)
    distance = geometry.get("detector_distance", DEFAULT_DISTANCE)
    pixel = geometry.get("detector_pixel_size", DEFAULT_PIXEL)
    geometry = Geometry.from_energy(energy, distance, pixel, (frame_size, frame_size))
    magnification = magnification_scale(geometry) / abs(defocus)  # of the beam's shadow on the detector
    pupil_radius = float(np.clip(0.2 * frame_size * magnification, 5, 0.35 * frame_size))
    overlap = 0.7
    detector = DetectorModel(
        background=0.005 * photons / frame_size**2,
        dead_fraction=0.002,
        hot_fraction=0.0005,
        beamstop_radius=2.5,
    )
    sim = simulate(
        n_frames=n_frames,
        frame_size=frame_size,
        overlap=overlap,
        photons=photons,
        probe_modes=3,
        probe_kind="focused",
        probe_defocus=defocus,
        energy=energy,
        detector_distance=distance,
        detector_pixel_size=pixel,
        seed=seed,
        pupil_radius=pupil_radius,
        central_stop=0.4,
        order_sorting_aperture=0.5 * frame_size,
        source_size=frame_size / (8 * pupil_radius),
        object_kind=object_kind,
        detector=detector,
        stage=stage,
        fly_motion=fly_motion,
        probe_drift=probe_drift,
        on_grid=False,
    )
    if stage is not None:
        return sim
    step = probe_diameter(sim.true_probe) * (1 - overlap)
    nominal = sim.true_positions + np.random.default_rng(seed + 1).normal(
        scale=0.03 * step, size=sim.true_positions.shape
    ) * np.asarray(sim.data.geometry.sample_pixel_size[::-1])
    sim.data.positions = nominal
    return sim
