"""LSQ-ML: least-squares maximum-likelihood ptychography (Odstrcil, Menzel &
Guizar-Sicairos, Opt. Express 26, 3108, 2018).

Per batch: the exit-wave update ``chi`` follows from the noise model
(Gaussian: amplitude projection; Poisson: a half gradient step of the Poisson
likelihood in Fourier space); object and probe directions are the
preconditioned gradients; the step along each is the least-squares solution of
a 2 x 2 system per frame, averaged over the batch.
"""

from __future__ import annotations

import numpy as np

from .engine import Engine
from .forward import exit_wave_update, exit_waves, gather_patches
from .positions import refine_positions
from .state import SolverState
from .updates import object_update_terms, probe_update_terms, regularised_step

STEP_REGULARISATION = 1e-3


def frame_inner(u, v):
    """``sum Re(conj(u) v)`` over every axis but the first, (B,)."""
    axes = tuple(range(1, u.ndim))
    return (u.real * v.real).sum(axis=axes) + (u.imag * v.imag).sum(axis=axes)


def optimal_steps(object_change, probe_change, chi):
    """Per-frame least-squares steps along the object and probe directions.

    Minimises ``|chi - a_o * object_change - a_p * probe_change|^2`` for each
    frame; ``probe_change`` may be None (object step only).
    """
    a11 = frame_inner(object_change, object_change)
    r1 = frame_inner(object_change, chi)
    if probe_change is None:
        return r1 / (a11 * (1 + STEP_REGULARISATION) + 1e-30), None
    a22 = frame_inner(probe_change, probe_change)
    a12 = frame_inner(object_change, probe_change)
    r2 = frame_inner(probe_change, chi)
    a11 = a11 * (1 + STEP_REGULARISATION) + 1e-30
    a22 = a22 * (1 + STEP_REGULARISATION) + 1e-30
    determinant = a11 * a22 - a12 * a12
    step_object = (a22 * r1 - a12 * r2) / determinant
    step_probe = (a11 * r2 - a12 * r1) / determinant
    return step_object, step_probe


class LSQML(Engine):
    """LSQ-ML with minibatches, Gaussian or Poisson noise model."""

    def iterate(self, state: SolverState, iteration: int, rng: np.random.Generator) -> float:
        s = self.settings
        xp = state.xp
        update_probe = self.updates_probe(iteration)
        cost = 0.0
        for batch in self.batches(state.n_frames, rng):
            index = xp.asarray(batch)
            corners = state.corners[index]
            patches = gather_patches(state.object, corners, state.frame_shape)
            chi, batch_cost = exit_wave_update(
                state.probe,
                patches,
                state.amplitude[index],
                state.mask,
                state.workers,
                noise_model=s.noise_model,
            )
            cost += batch_cost
            numerator, illumination = object_update_terms(state, corners, chi)
            object_direction = regularised_step(numerator, illumination, s.alpha)
            object_change = exit_waves(
                state.probe, gather_patches(object_direction, corners, state.frame_shape)
            )
            probe_direction = probe_change = None
            if update_probe:
                probe_numerator, probe_weights = probe_update_terms(patches, chi)
                probe_direction = regularised_step(probe_numerator, probe_weights, s.alpha)
                probe_change = exit_waves(probe_direction, patches)
            step_object, step_probe = optimal_steps(object_change, probe_change, chi)
            if self.refines_positions(iteration):
                refine_positions(state, batch, chi, s.max_position_step)
            state.object += np.float32(s.object_step * mean_step(step_object)) * object_direction
            if update_probe:
                state.probe += np.float32(s.probe_step * mean_step(step_probe)) * probe_direction
        if update_probe:
            self.finish_probe(state)
        return cost


def mean_step(steps) -> float:
    """Batch step: the mean of the per-frame steps, negative ones counted as zero."""
    return float(steps.clip(0, None).mean())
