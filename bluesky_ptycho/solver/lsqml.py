"""LSQ-ML: least-squares maximum-likelihood ptychography (Odstrcil, Menzel &
Guizar-Sicairos, Opt. Express 26, 3108, 2018).

Per batch: the exit-wave update ``chi`` follows from the noise model
(Gaussian: amplitude projection; Poisson: a Newton step of the Poisson
likelihood in Fourier space); object and probe directions are the
preconditioned gradients; the steps along them are the least-squares
solution of a 2 x 2 system per frame, averaged over the batch.

The 2 x 2 systems need inner products of the exit-wave changes
``dO_j P_m`` and ``O_j dP_m`` with each other and with ``chi``; summing over
the probe modes first turns every one into a (B, h, w) product, so no
(B, modes, h, w) array is formed beyond ``chi`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .communicator import Communicator
from .decomposition import merge_ranks
from .engine import Engine
from .forward import gather_patches
from .intensity import corrected_amplitudes, corrected_exit_wave_update
from .options import NOISE_MODELS, MinibatchOptions, check_alpha, option
from .positions import move_positions, position_shifts
from .regions import CanvasRegion
from .state import SolverState, mode_power
from .updates import (
    UpdateTerms,
    add_scaled_in,
    frame_inner,
    mode_sum,
    probe_terms_of_every_rank,
    regularised_step,
    regularised_step_in,
    update_terms,
)

STEP_REGULARISATION = 1e-3


def step_products(obj, object_direction, probe, probe_direction, corners, chi, kernels=None):
    """The per-frame inner products of the LSQ-ML step equations.

    With ``O_j``, ``dO_j`` the patches of ``obj`` and ``object_direction`` at
    ``corners`` and ``P``, ``dP`` the probe and its direction (summed over
    modes where two appear): ``a11 = |dO P|^2``, ``r1 = Re<dO P, chi>``,
    ``a22 = |O dP|^2``, ``r2 = Re<O dP, chi>``, ``a12 = Re<dO P, O dP>``.

    ``kernels``: the compiled kernels, or None for the array expressions.

    Returns
    -------
    (a11, r1, a22, r2, a12), each (B,); the last three are None when
    ``probe_direction`` is None.
    """
    if kernels is not None:
        with_probe = probe_direction is not None
        products = kernels.lsqml_step_products(
            obj, object_direction, probe, probe if probe_direction is None else probe_direction, corners, chi
        )
        return tuple(products[:2]) + (tuple(products[2:]) if with_probe else (None, None, None))
    shape = probe.shape[-2:]
    object_change = gather_patches(object_direction, corners, shape)
    a11 = ((object_change.real**2 + object_change.imag**2) * mode_power(probe)).sum(axis=(-2, -1))
    r1 = frame_inner(object_change, mode_sum(probe, chi))
    if probe_direction is None:
        return a11, r1, None, None, None
    patches = gather_patches(obj, corners, shape)
    a22 = ((patches.real**2 + patches.imag**2) * mode_power(probe_direction)).sum(axis=(-2, -1))
    r2 = frame_inner(patches, mode_sum(probe_direction, chi))
    overlap = (probe.conj() * probe_direction).sum(axis=0)
    a12 = frame_inner(object_change, patches * overlap)
    return a11, r1, a22, r2, a12


def solve_steps(a11, a22, a12, r1, r2):
    """Per-frame solution of ``[[a11, a12], [a12, a22]] @ (s_o, s_p) = (r1, r2)``, lightly regularised."""
    a11 = a11 * (1 + STEP_REGULARISATION) + 1e-30
    a22 = a22 * (1 + STEP_REGULARISATION) + 1e-30
    determinant = a11 * a22 - a12 * a12
    return (a22 * r1 - a12 * r2) / determinant, (a11 * r2 - a12 * r1) / determinant


@dataclass
class LSQMLOptions(MinibatchOptions):
    """LSQ-ML's options."""

    algorithm = "lsqml"
    noise_model: str = option(
        "poisson", "the likelihood: 'poisson' (counts) or 'gaussian' (amplitudes)", choices=NOISE_MODELS
    )
    alpha: float = option(0.1, "regularisation of the update directions, 0..1")

    def validate(self) -> None:
        super().validate()
        check_alpha(self.alpha)


class LSQML(Engine):
    """LSQ-ML with minibatches, Gaussian or Poisson noise model; optionally a probe varying through the scan."""

    varies_probe = True
    #: the probe's sums, then its step length (which needs them summed)
    collectives_per_batch = 2

    def iterate(
        self, state: SolverState, iteration: int, rng: np.random.Generator, frames: np.ndarray | None = None
    ) -> float:
        s = self.settings
        options = s.options
        xp = state.xp
        update_probe = self.updates_probe(iteration)
        cost = 0.0
        kernels = state.backend.kernels
        variable = state.variable_probe
        for batch in self.batches(state, rng, frames):
            numerator, illumination = state.object_sums()
            terms, parts, amplitudes, variations = UpdateTerms(numerator, illumination), [], [], []
            refines = self.refines_positions(iteration)
            region = CanvasRegion.covering(state.host_corners[batch], state.frame_shape, state.object.shape)
            for chunk in self.chunks(batch, state):
                index = xp.asarray(chunk)
                corners = state.corners[index]
                variation = None if variable is None else variable.variation(chunk)
                correct = self.corrects_intensity(iteration)
                amplitude = corrected_amplitudes(state, chunk, correct)
                chi, chunk_cost = corrected_exit_wave_update(
                    state, chunk, corners, amplitude, options.noise_model, correct, variation
                )
                cost += chunk_cost
                terms = update_terms(
                    state, corners, chi, for_probe=update_probe, terms=terms, variation=variation
                )
                parts.append((chunk, corners, chi))
                amplitudes.append(amplitude if refines else None)  # kept for the positions' shifts alone
                variations.append(variation)
            probe_direction = step_probe = None
            if update_probe:
                probe_terms_of_every_rank(state, terms)
                probe_direction = regularised_step(terms.probe_numerator, terms.probe_weights, options.alpha)
            moves = []
            if parts:  # on several ranks a batch may be empty (see Engine.batches)
                regularised_step_in(region, numerator, illumination, options.alpha, kernels)
                object_direction = numerator
                products = [
                    step_products(
                        state.object,
                        object_direction,
                        state.probe,
                        probe_direction,
                        corners,
                        chi,
                        kernels,
                    )
                    for _, corners, chi in parts
                ]
                a11, r1, a22, r2, a12 = (
                    None if column[0] is None else xp.concatenate(column)
                    for column in zip(*products, strict=True)
                )
                if update_probe:
                    step_object, step_probe = solve_steps(a11, a22, a12, r1, r2)
                else:
                    step_object = r1 / (a11 * (1 + STEP_REGULARISATION) + 1e-30)
                if refines:
                    moves = [
                        (
                            chunk,
                            position_shifts(
                                state, chunk, corners, chi, amplitude, s, options.noise_model, variation
                            ),
                        )
                        for (chunk, corners, chi), amplitude, variation in zip(
                            parts, amplitudes, variations, strict=True
                        )
                    ]
                add_scaled_in(
                    region, state.object, object_direction, s.object_step * mean_step(step_object), kernels
                )
            if update_probe:
                probe_step = s.probe_step * mean_step(step_probe, state.comm)
                state.probe += np.float32(probe_step) * probe_direction
                if self.varies_probe_in(iteration):
                    variable.fit_weights(state, parts, options.alpha, probe_step)
            move_positions(state, moves)
        merge_ranks(state)
        if self.varies_probe_in(iteration):
            variable.fit_eigen_probes(state.comm, state.probe[0], self.corrects_intensity(iteration))
        if update_probe:
            self.finish_probe(state, iteration)
        return cost


def mean_step(steps, comm: Communicator | None = None) -> float:
    """Batch step: the mean of the per-frame steps, negative ones counted as zero.

    Given the ranks' ``comm``, the mean over every rank's batch (``steps``
    None: this rank's was empty).
    """
    if comm is None or comm.size == 1:
        return float(steps.clip(0, None).mean())
    total, count = comm.totals(
        0.0 if steps is None else float(steps.clip(0, None).sum()), 0 if steps is None else len(steps)
    )
    return total / count if count else 0.0
