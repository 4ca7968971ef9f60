"""The evolving reconstruction state shared by every algorithm."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .backend import ArrayBackend
from .communicator import Communicator
from .frames import MeasuredAmplitudes
from .intensity import FrameIntensity
from .position_gains import PositionGains

if TYPE_CHECKING:
    from .variable_probe import VariableProbe

# a canvas that must grow grows by at least this share of its size on that side: a scan whose frames
# come a few hundred at a time then copies its canvas (hundreds of MB at 50,000 frames) a few dozen
# times, not with every job
CANVAS_GROWTH = 1 / 8
#: pixels of canvas every patch keeps on each side: the central differences of :mod:`.positions` read them
CANVAS_RIM = 1


def canvas_margin(frame_shape: tuple[int, int]) -> np.ndarray:
    """Pixels (rows, columns) kept free around the scanned area of the object canvas."""
    h, w = frame_shape
    return np.array([max(4, h // 8), max(4, w // 8)])


def mode_power(modes):
    """``sum_m |modes_m|^2`` of (modes, h, w) complex modes: a real (h, w) array."""
    return (modes.real**2 + modes.imag**2).sum(axis=0)


@dataclass
class SolverState:
    """Arrays an algorithm reads and updates, all on the array module of ``backend``.

    Attributes
    ----------
    backend
        The array module, FFTs and kernels that compute on these arrays.
    object
        (Ho, Wo) complex64 object canvas.
    probe
        (modes, h, w) complex64 probe, centred.
    measured
        The square roots of the measured counts, zero frequency at index 0
        (float16, read as float32 a few frames at a time).
    mask
        (h, w) boolean in FFT order, True for good pixels, or None.
    positions
        (N, 2) float64 host array: (row, column) of each patch's top-left
        pixel on the object canvas, fractional.
    corners
        (N, 2) integer device array: ``positions`` rounded.
    host_corners
        The same corners, a host array.
    comm
        The ranks that share this scan, each with its own frames
        (:mod:`.decomposition`); the default is one process.
    start_positions
        (N, 2) (x, y) metres where the reconstruction took each frame's
        position (where :meth:`set_positions` first set it): what
        refinement is bounded by and measured from (:mod:`.positions`).
    at_bound
        (N,) True for frames whose refined position was held at that bound.
    position_gains
        Each frame's refinement step, grown while the frame is on its way somewhere (:mod:`.position_gains`).
    intensity
        Each frame's share of the beam, where it is corrected (:mod:`.intensity`), else None.
    variable_probe
        Eigen-probes and each frame's weights, where the probe varies through the scan (:mod:`.variable_probe`), else None.
    origin
        (x, y) in metres of canvas pixel (0, 0) as a patch corner.
    pixel_size
        (y, x) size in metres of one canvas pixel.
    """

    backend: ArrayBackend
    object: object
    probe: object
    measured: MeasuredAmplitudes
    mask: object | None
    positions: np.ndarray
    corners: object
    origin: np.ndarray
    pixel_size: tuple[float, float]
    host_corners: np.ndarray | None = None
    comm: Communicator = field(default_factory=Communicator)
    start_positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    at_bound: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    position_gains: PositionGains = field(default_factory=PositionGains)
    intensity: FrameIntensity | None = None
    variable_probe: VariableProbe | None = None
    _object_sums: tuple | None = field(default=None, repr=False)

    @property
    def xp(self) -> ModuleType:
        """The array module: numpy, cupy or the strict test module."""
        return self.backend.xp

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.probe.shape[-2:])

    def set_positions(self, positions: np.ndarray) -> None:
        """Store new positions (pixels), growing the canvas so every patch fits.

        Padding before the canvas moves ``origin`` so that the object stays
        where it is in metres. Every patch keeps :data:`CANVAS_RIM` pixels of
        canvas on each side.
        A side that grows grows by at least ``CANVAS_GROWTH`` of the canvas
        (:meth:`covered` is what the patches use of it).
        """
        h, w = self.frame_shape
        margin = canvas_margin(self.frame_shape)
        low = np.floor(positions.min(axis=0))
        before = np.where(low < CANVAS_RIM, margin - low, 0).astype(int)
        high = np.ceil(positions.max(axis=0)) + CANVAS_RIM + (h, w) - self.object.shape
        after = np.where(high > 0, high + margin, 0).astype(int)
        if before.any() or after.any():
            slack = (np.array(self.object.shape) * CANVAS_GROWTH).astype(int)
            before = np.where(before > 0, np.maximum(before, slack), 0)
            after = np.where(after > 0, np.maximum(after, slack), 0)
        self.positions = positions
        self.pad_canvas(before, after)
        known = len(self.start_positions)
        if len(positions) > known:  # frames new to the state start where they are first set
            self.start_positions = np.concatenate([self.start_positions, self.metres(self.positions[known:])])
            self.at_bound = np.concatenate([self.at_bound, np.zeros(len(positions) - known, bool)])
            self.position_gains.take(len(positions))

    def within_rim(self, corners: np.ndarray) -> np.ndarray:
        """(K,) True where the patch at each of ``corners`` (K, 2 host integers) keeps :data:`CANVAS_RIM` pixels of canvas on each side."""
        last = np.array(self.object.shape) - self.frame_shape - CANVAS_RIM
        return np.all((corners >= CANVAS_RIM) & (corners <= last), axis=1)

    def pad_canvas(self, before: np.ndarray, after: np.ndarray) -> None:
        """Add ``before`` (rows, columns) pixels before the canvas and ``after`` after it; the object stays where it is in metres."""
        if before.any() or after.any():
            # new area starts at the object's mean value, so that it joins the
            # reconstructed area without a jump in phase
            fill = complex(self.object.mean())
            self.object = self.xp.pad(
                self.object, ((before[0], after[0]), (before[1], after[1])), constant_values=fill
            )
        self.positions = self.positions + before
        self.origin = self.origin - before[::-1] * self.pixel_size[::-1]
        self.host_corners = np.rint(self.positions).astype(np.int64)
        self.corners = self.xp.asarray(self.host_corners)

    def object_sums(self) -> tuple:
        """Canvas-sized buffers for a batch's object numerator and illumination (complex, real).

        Kept from batch to batch, and zero but where a batch's sums are
        under way: whoever fills them clears what it wrote
        (:func:`.updates.regularised_step_in`, :func:`.updates.add_scaled_in`),
        so no batch pays for zeroing the whole canvas.
        """
        if self._object_sums is None or self._object_sums[0].shape != self.object.shape:
            real = self.object.real.dtype
            self._object_sums = (self.xp.zeros_like(self.object), self.xp.zeros(self.object.shape, real))
        return self._object_sums

    def covered(self) -> tuple[tuple[slice, slice], np.ndarray]:
        """The canvas rows and columns the patches cover with the margin around them, and (x, y) metres of its corner.

        What a result shows of the canvas: all of it, unless it grew by more than its scan needed.
        On several ranks, this rank's patches (:func:`.decomposition.join_parts` joins the ranks').
        """
        margin = canvas_margin(self.frame_shape)
        low, high = self.positions.min(axis=0), self.positions.max(axis=0)
        low = np.maximum(np.floor(low).astype(int) - margin, 0)
        high = np.ceil(high).astype(int) + self.frame_shape + margin + 1
        high = np.minimum(high, self.object.shape)
        return (slice(low[0], high[0]), slice(low[1], high[1])), self.metres(low[None].astype(float))[0]

    def metres(self, pixels: np.ndarray) -> np.ndarray:
        """(x, y) metres of canvas positions (rows, columns)."""
        return pixels[:, ::-1] * self.pixel_size[::-1] + self.origin

    def pixels(self, metres: np.ndarray) -> np.ndarray:
        """Canvas positions (rows, columns) of (x, y) metres."""
        return (metres - self.origin)[:, ::-1] / self.pixel_size

    def illumination_weights(self):
        """Incoherent probe intensity ``sum_m |probe_m|^2``, (h, w)."""
        return mode_power(self.probe)
