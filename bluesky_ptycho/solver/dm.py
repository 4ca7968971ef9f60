"""Difference map (Thibault et al., Ultramicroscopy 109, 338, 2009), relaxed as
RAAR (Luke, Inverse Problems 21, 37, 2005) for noisy data.

With ``beta = DMOptions.relaxation`` the exit waves ``psi`` become
``beta * (psi + P_F(2 P_O psi - psi) - P_O psi) + (1 - beta) * P_F(P_O psi)``;
``beta = 1`` is the classical difference map, ``beta < 1`` damps the
oscillations that noise drives.

The exit waves are kept in Fourier space, where ``F(2 O P - psi)`` is
``2 F(O P) - F(psi)``: each iteration needs one forward FFT (of the model,
which also gives the cost) and one inverse FFT (of the updated exit waves)
per frame. All frames form one batch: the overlap projection is global; on
several ranks its sums are summed over the ranks (:mod:`.decomposition`).
The pass visits the frames block by spatially compact block
(:func:`.regions.spatial_order`), the order their far fields are stored in:
the canvas a block covers stays in cache however large the scan's area.

The overlap projection updates the object from the exit waves and the probe,
then the probe from the exit waves and the new object ``O'``. Both come from
one pass over the frames, so the updated exit waves are never stored (with
several modes they would outgrow the cache). The probe fits ``psi = P O'``
weighted by the object the pass had, ``O``:
``P = sum_j conj(O_j) psi_j / sum_j conj(O_j) O'_j``. Where ``O' = O`` this
is the usual update; the pass gives the numerator, one pass over the object
patches the denominator. Weighting by ``O'`` instead would need the exit
waves again; updating the probe from ``O`` alone (denominator
``sum_j |O_j|^2``) ignores the object's change and diverges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import empty_aligned
from .decomposition import sum_over_ranks
from .engine import Engine
from .farfields import PRECISIONS, StoredFarFields
from .forward import (
    amplitude_misfit,
    exit_waves_at,
    good_photons,
    kernel_mask,
    measured_amplitude_factor,
    model_amplitude,
)
from .intensity import corrected_amplitudes
from .options import AlgorithmOptions, option
from .positions import gradient_shifts, stepped_shifts, within_bound
from .probe import rotate_modes, shift_ramp
from .regions import spatial_order
from .state import SolverState
from .updates import patch_overlap, update_terms

OVERLAP_DAMPING = 1e-3
# mixing the modes is a pass over every stored exit wave, and DM's fixed point
# does not depend on the modes' basis: results are orthogonalised anyway
ORTHOGONALIZE_EVERY = 10


@dataclass
class DMOptions(AlgorithmOptions):
    """The difference map's options; all frames form one batch."""

    algorithm = "dm"
    relaxation: float = option(0.75, "RAAR relaxation beta, (0, 1]: 1 is the classical difference map")
    farfield_precision: str = option(
        "half",
        "precision of every frame's stored far fields: single takes twice the memory (see farfields)",
        choices=PRECISIONS,
    )

    def validate(self) -> None:
        if not 0.0 < self.relaxation <= 1.0:
            raise ValueError(f"relaxation must be within (0, 1], got {self.relaxation}")


class DifferenceMap(Engine):
    """Difference map (``algorithm="dm"``): every iteration visits every frame (its far fields are one state)."""

    visits_some_frames = False
    collectives_per_batch = 0

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.farfield = None
        self.order = np.arange(0)
        self.workspace = None
        self.stored_workspace = None

    def frames_added(self, state: SolverState, n_before: int) -> None:
        xp, backend = state.xp, state.backend
        if self.farfield is None:
            self.farfield = StoredFarFields(backend, self.settings.options.farfield_precision)
        new = n_before + spatial_order(state.positions[n_before:])
        self.order = np.concatenate([self.order[:n_before], new])
        shape = state.probe.shape
        self.farfield.grow(state.n_frames, shape)
        largest = max(part.stop - part.start for part in self.parts(state))
        self.workspace = empty_aligned((largest, *shape), state.probe.dtype, xp)
        if self.farfield.precision != "single":
            self.stored_workspace = empty_aligned((largest, *shape), state.probe.dtype, xp)
        self.start_far_fields(state, self.parts(state, n_before))

    def start_far_fields(self, state: SolverState, parts: list[slice]) -> None:
        """Store the far fields of the model's exit waves in the rows of ``parts``."""
        backend = state.backend
        for part in parts:
            waves = exit_waves_at(
                state.object,
                state.corners[self.order[part]],
                state.probe,
                out=self.workspace[: part.stop - part.start],
                kernels=backend.kernels,
            )
            self.farfield.put(part, backend.fft2(waves, overwrite_x=True))

    def parts(self, state: SolverState, first: int = 0) -> list[slice]:
        """The stored far fields from row ``first`` on, in :meth:`chunks` of consecutive rows within a page.

        Row ``r`` holds the far fields of frame ``self.order[r]``.
        """
        return [
            slice(int(chunk[0]), int(chunk[-1]) + 1)
            for run in self.farfield.runs(first, state.n_frames)
            for chunk in self.chunks(np.arange(run.start, run.stop), state)
        ]

    def iterate(
        self, state: SolverState, iteration: int, rng: np.random.Generator, frames: np.ndarray | None = None
    ) -> float:
        cost, terms, backend = 0.0, None, state.backend
        probe_too = self.updates_probe(iteration)
        correct = self.corrects_intensity(iteration)
        # one pass, chunk by chunk in cache: Fourier side, then the object's and the probe's sums
        for part in self.parts(state):
            frames = self.order[part]
            corners = state.corners[frames]
            model = exit_waves_at(
                state.object,
                corners,
                state.probe,
                out=self.workspace[: len(corners)],
                kernels=backend.kernels,
            )
            model = backend.fft2(model, overwrite_x=True)
            model_photons = state.xp.empty(len(corners), np.float64) if correct else None
            amplitude = corrected_amplitudes(state, frames, correct)
            cost += self.update_far_fields(state, part, model, amplitude, model_photons)
            if correct:
                state.intensity.observe(frames, model_photons)
            psi = backend.ifft2(model, overwrite_x=True)
            terms = update_terms(state, corners, psi, for_probe=probe_too, terms=terms)
        sum_over_ranks(state, [terms.object_numerator, terms.illumination])
        if probe_too:
            state.comm.sum(terms.probe_numerator)
        previous = state.object
        largest = state.comm.most(float(terms.illumination.max()))  # every rank's canvas, as one process's
        state.object = damped_quotient(terms.object_numerator, terms.illumination, state.object, largest)
        if probe_too:
            overlap = patch_overlap(state, previous, state.object, state.corners[self.order])
            overlap = state.comm.sum(overlap)  # see the module docstring
            state.probe = damped_quotient(terms.probe_numerator, overlap, state.probe)
            self.finish_probe(state, iteration)
        if self.refines_positions(iteration):
            self.refine_positions(state)
        return cost

    def update_far_fields(self, state: SolverState, part: slice, model, amplitude, model_photons) -> float:
        """:func:`fourier_update` of the far fields in rows ``part``; ``model`` (``F(P O)``) becomes the updated ones.

        Returns the amplitude misfit of ``model``. Far fields in half precision
        are read and written by one compiled pass where there are kernels.
        """
        kernels, stored, beta = state.backend.kernels, self.farfield, self.settings.options.relaxation
        if kernels is not None and stored.precision == "half":
            mask, photons = kernel_arguments(state.mask, model, amplitude, model_photons)
            return kernels.difference_map_fourier_half(
                model, stored.bits(part), stored.unscale, stored.scale, amplitude, mask, beta, photons
            )
        chunk = stored.chunk(part, self.stored_workspace)
        cost = fourier_update(model, chunk, amplitude, state.mask, beta, model_photons, kernels)
        stored.keep(part, chunk)
        model[...] = chunk
        return cost

    def refines_positions(self, iteration: int) -> bool:
        """Every second iteration: its refinement needs a pass of its own over the stored far fields.

        Measured on simulated scans with a pixel of position error (three
        seeds), refining every second iteration left the positions closer
        to the truth (0.37-0.43 px rms against 0.45-0.51) at 1.26x an
        iteration without refinement instead of 1.53x.
        """
        return super().refines_positions(iteration) and iteration % 2 == 0

    def refine_positions(self, state: SolverState) -> None:
        """Move every position along the gradient of the updated model's misfit to the exit waves.

        The exit waves come back from the stored far fields, chunk by chunk.
        Each frame takes the shift measured from its patch's pixel: measured
        at its own position (:func:`.positions.shifts_from_positions`, as rPIE
        and LSQ-ML take it once a frame has come near), frames 1 px off came
        in more slowly here (0.48 px rms after 120 iterations, against 0.39).
        """
        backend, shifts = state.backend, []
        for part in self.parts(state):
            corners = state.corners[self.order[part]]
            waves = self.farfield.read(part, self.workspace[: len(corners)])
            chi = backend.ifft2(waves, overwrite_x=True)
            chi -= exit_waves_at(state.object, corners, state.probe, kernels=backend.kernels)
            shifts.append(gradient_shifts(state, corners, chi))
        moves = np.empty_like(state.positions)
        moves[self.order] = stepped_shifts(state, self.order, np.concatenate(shifts), self.settings)
        state.set_positions(within_bound(state, state.positions + moves))

    def orthogonalizes(self, iteration: int) -> bool:
        """Every ``ORTHOGONALIZE_EVERY`` iterations: each time the stored exit waves are rotated too."""
        return iteration % ORTHOGONALIZE_EVERY == 0

    def calm_down(self) -> str:
        """Relax further towards the plain projection (RAAR's smaller beta damps more)."""
        options = self.settings.options
        options.relaxation /= 2
        return f"dm relaxation halved to {options.relaxation:g}"

    def restored(self, state: SolverState) -> None:
        """Start the stored exit waves again from the restored object and probe."""
        self.farfield = None
        self.frames_added(state, 0)

    def positions_jumped(self, state: SolverState, frames: np.ndarray) -> None:
        """Start the stored exit waves of ``frames`` again from the model at their new positions.

        Left as they were, they would hold the object where the frames were,
        and refinement (:meth:`refine_positions`) would pull the frames back.
        """
        rows = np.flatnonzero(np.isin(self.order, frames))
        self.start_far_fields(state, [slice(int(row), int(row) + 1) for row in rows])

    def probe_shifted(self, state: SolverState, shift: tuple[int, int]) -> None:
        """Shift the stored exit waves with probe and object (a Fourier phase ramp)."""
        ramp = shift_ramp(state.frame_shape, shift, state.xp).astype(state.probe.dtype)

        def shifted(waves) -> None:
            waves *= ramp

        self.farfield.change(self.parts(state), shifted, self.stored_workspace)

    def modes_rotated(self, state: SolverState, rotation) -> None:
        """Mix the stored exit waves' modes as the probe's were: each must stay its mode's."""
        self.farfield.change(
            self.parts(state),
            lambda waves: rotate_modes(waves, rotation, state.backend.kernels),
            self.stored_workspace,
        )


def fourier_update(model, farfield, amplitude, mask, beta: float, model_photons=None, kernels=None) -> float:
    """Replace the stored far fields by their difference-map (RAAR) update, in place.

    ``model`` (N, modes, h, w) is ``F(P O)``, ``farfield`` the stored far
    fields ``F(psi)``; see the module docstring for the update. Returns the
    amplitude misfit of ``model``. ``model_photons``, if given, an (N,) array
    filled with the photons of each frame's model in the good pixels.
    ``kernels``: the compiled kernels, or None for the array expressions.
    """
    if kernels is not None:
        mask, photons = kernel_arguments(mask, model, amplitude, model_photons)
        return kernels.difference_map_fourier(model, farfield, amplitude, mask, beta, photons)
    if model_photons is not None:
        model_photons[...] = good_photons(model, mask)
    model_amp = model_amplitude(model)
    cost = amplitude_misfit(model_amp, amplitude, mask)
    reflected = 2 * model - farfield
    reflected *= measured_amplitude_factor(model_amplitude(reflected), amplitude, mask)[:, None]
    farfield += reflected
    farfield -= model
    if beta < 1:
        model *= measured_amplitude_factor(model_amp, amplitude, mask)[:, None]
        farfield *= beta
        farfield += (1 - beta) * model
    return cost


def kernel_arguments(mask, model, amplitude, model_photons):
    """The mask and the photons' array as the compiled Fourier updates take them."""
    photons = np.empty(0) if model_photons is None else model_photons
    return kernel_mask(mask, model.shape[-2:], amplitude.dtype), photons


def damped_quotient(numerator, weights, previous, largest: float | None = None):
    """``(numerator + d * previous) / (weights + d)`` with ``d`` a small fraction of ``largest`` (default max(|weights|)).

    Where nothing illuminates a pixel it keeps its previous value.
    """
    largest = float(abs(weights).max()) if largest is None else largest
    damping = OVERLAP_DAMPING * largest + 1e-30
    return ((numerator + damping * previous) / (weights + damping)).astype(previous.dtype, copy=False)
