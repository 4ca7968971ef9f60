"""Difference map (Thibault et al., Ultramicroscopy 109, 338, 2009), relaxed as
RAAR (Luke, Inverse Problems 21, 37, 2005) for noisy data.

With ``beta = settings.dm_relaxation`` the exit waves ``psi`` become
``beta * (psi + P_F(2 P_O psi - psi) - P_O psi) + (1 - beta) * P_F(P_O psi)``;
``beta = 1`` is the classical difference map, ``beta < 1`` damps the
oscillations that noise drives.

The exit waves are kept in Fourier space, where ``F(2 O P - psi)`` is
``2 F(O P) - F(psi)``: each iteration needs one forward FFT (of the model,
which also gives the cost) and one inverse FFT (of the updated exit waves)
per frame. The overlap projection updates the object from the exit waves and
the probe, then the probe from the exit waves and the new object. All frames
form one batch: the overlap projection is global.
"""

from __future__ import annotations

import numpy as np

from .backend import fft2, ifft2
from .engine import Engine
from .forward import (
    amplitude_misfit,
    apply_measured_amplitude,
    exit_waves,
    gather_patches,
    model_amplitude,
)
from .positions import refine_positions
from .probe import shift_ramp
from .state import SolverState
from .updates import object_update_terms, probe_update_terms

OVERLAP_DAMPING = 1e-3


class DifferenceMap(Engine):
    """Difference map (``algorithm="dm"``)."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.farfield = None

    def frames_added(self, state: SolverState, n_before: int) -> None:
        xp = state.xp
        index = xp.arange(n_before, state.n_frames)
        patches = gather_patches(state.object, state.corners[index], state.frame_shape)
        new = fft2(exit_waves(state.probe, patches), workers=state.workers)
        self.farfield = new if self.farfield is None else xp.concatenate([self.farfield, new])

    def iterate(self, state: SolverState, iteration: int, rng: np.random.Generator) -> float:
        shape = state.frame_shape
        patches = gather_patches(state.object, state.corners, shape)
        model = fft2(exit_waves(state.probe, patches), workers=state.workers)
        model_amp = model_amplitude(model)
        cost = amplitude_misfit(model_amp, state.amplitude, state.mask)
        beta = self.settings.dm_relaxation
        reflected = 2 * model - self.farfield
        apply_measured_amplitude(reflected, model_amplitude(reflected), state.amplitude, state.mask)
        self.farfield += reflected
        self.farfield -= model
        if beta < 1:
            apply_measured_amplitude(model, model_amp, state.amplitude, state.mask)
            self.farfield *= beta
            self.farfield += (1 - beta) * model
        del reflected, model
        psi = ifft2(self.farfield, workers=state.workers)
        numerator, illumination = object_update_terms(state, state.corners, psi)
        state.object = damped_quotient(numerator, illumination, state.object)
        if self.updates_probe(iteration):
            patches = gather_patches(state.object, state.corners, shape)
            numerator, weights = probe_update_terms(patches, psi)
            state.probe = damped_quotient(numerator, weights, state.probe)
            self.finish_probe(state)
        if self.refines_positions(iteration):
            everything = np.arange(state.n_frames)
            chi = psi - exit_waves(state.probe, gather_patches(state.object, state.corners, shape))
            refine_positions(state, everything, chi, self.settings.max_position_step)
        return cost

    def probe_shifted(self, state: SolverState, shift: tuple[int, int]) -> None:
        """Shift the stored exit waves with probe and object (a Fourier phase ramp)."""
        self.farfield *= shift_ramp(state.frame_shape, shift, state.xp).astype(self.farfield.dtype)


def damped_quotient(numerator, weights, previous):
    """``(numerator + d * previous) / (weights + d)`` with ``d`` a small fraction of max(weights).

    Where nothing illuminates a pixel it keeps its previous value.
    """
    damping = OVERLAP_DAMPING * weights.max() + 1e-30
    return ((numerator + damping * previous) / (weights + damping)).astype(previous.dtype, copy=False)
