"""The evolving reconstruction state shared by every algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np


@dataclass
class SolverState:
    """Arrays an algorithm reads and updates, all on the array module ``xp``.

    Attributes
    ----------
    xp
        numpy or cupy.
    object
        (Ho, Wo) complex64 object canvas.
    probe
        (modes, h, w) complex64 probe, centred.
    amplitude
        (N, h, w) float32 square roots of the measured counts, zero frequency
        at index 0.
    mask
        (h, w) boolean in FFT order, True for good pixels, or None.
    positions
        (N, 2) float64 host array: (row, column) of each patch's top-left
        pixel on the object canvas, fractional.
    corners
        (N, 2) integer device array: ``positions`` rounded.
    workers
        Threads for CPU FFTs.
    """

    xp: ModuleType
    object: object
    probe: object
    amplitude: object
    mask: object | None
    positions: np.ndarray
    corners: object
    workers: int | None = None

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.probe.shape[-2:])

    def update_corners(self) -> None:
        """Round ``positions`` into ``corners``, keeping every patch inside the canvas."""
        h, w = self.frame_shape
        limit = np.array(self.object.shape) - (h, w)
        self.positions = np.clip(self.positions, 0, limit)
        self.corners = self.xp.asarray(np.rint(self.positions).astype(np.int64))

    def illumination_weights(self):
        """Incoherent probe intensity ``sum_m |probe_m|^2``, (h, w)."""
        xp = self.xp
        return xp.sum(self.probe.real**2 + self.probe.imag**2, axis=0)
