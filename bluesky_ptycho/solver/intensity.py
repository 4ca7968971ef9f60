"""Each frame's share of the beam: the beam's power changes through a scan (top-up, a monochromator's drift).

Frame ``j`` records ``c_j^2`` times the photons the model (probe times
object) predicts, with ``c_j`` the beam's amplitude at that frame relative
to the scan's mean (``mean c_j^2 = 1``; the probe carries the mean power).
The algorithms fit the model to the measured amplitudes divided by ``c_j``
(:func:`corrected_exit_wave_update`); each time a frame is visited its
``c_j`` becomes the square root of its measured photons over the model's,
both over the good pixels, and after every iteration the scales are
brought back to a mean square of one over every rank's frames.

Off by default (``ReconstructionSettings.intensity_correction``);
docs/imperfect-scans.md says what it was measured to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .backend import to_numpy
from .communicator import Communicator
from .forward import exit_wave_update

if TYPE_CHECKING:
    from .state import SolverState


@dataclass
class FrameIntensity:
    """Every frame's beam amplitude relative to the scan's mean, and its measured photons.

    Attributes
    ----------
    scales
        (N,) ``c_j``, host float64, 1 until the frame is first visited (a
        job that continues a previous result fits them anew).
    photons
        (N,) measured photons in each frame's good pixels: the
        reconstructor's own array (:meth:`take`).
    """

    scales: np.ndarray = field(default_factory=lambda: np.ones(0))
    photons: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def take(self, photons: np.ndarray) -> None:
        """Every frame's measured ``photons``, the frames new here at a scale of 1."""
        self.photons = photons
        self.scales = np.concatenate([self.scales, np.ones(len(photons) - len(self.scales))])

    def observe(self, frames: np.ndarray, model_photons) -> None:
        """New scales of ``frames`` from the model's photons in their good pixels (any array module)."""
        self.scales[frames] = np.sqrt(self.photons[frames] / np.maximum(to_numpy(model_photons), 1e-30))

    def normalise(self, comm: Communicator) -> None:
        """Scales to a mean square of one over every rank's frames (collective)."""
        squares, count = comm.totals(np.sum(self.scales**2), len(self.scales))
        mean_square = squares / count
        if mean_square > 0:
            self.scales /= np.sqrt(mean_square)


def corrected_amplitudes(state: SolverState, frames, correct: bool):
    """The measured amplitudes of ``frames`` (indices or a slice), each divided by its scale where ``correct``."""
    amplitude = state.measured.gather(frames)
    if not correct:
        return amplitude
    scales = state.intensity.scales[frames].astype(amplitude.dtype)
    return amplitude / state.xp.asarray(scales)[:, None, None]


def corrected_exit_wave_update(
    state: SolverState,
    chunk: np.ndarray,
    corners,
    amplitude,
    noise_model: str = "gaussian",
    correct: bool = False,
    variation=None,
):
    """:func:`.forward.exit_wave_update` of the frames ``chunk`` at ``corners`` against their ``amplitude``.

    ``amplitude``: :func:`corrected_amplitudes` of ``chunk`` with the same
    ``correct``; with it the scales of ``chunk`` are observed from this model.
    ``variation``: the frames' change of the first probe mode
    (:mod:`.variable_probe`), or None.
    """
    model_photons = state.xp.empty(len(chunk), np.float64) if correct else None
    update = exit_wave_update(
        state.backend,
        state.probe,
        state.object,
        corners,
        amplitude,
        state.mask,
        noise_model,
        model_photons,
        variation,
    )
    if correct:
        state.intensity.observe(chunk, model_photons)
    return update
