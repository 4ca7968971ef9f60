"""rPIE and ePIE with minibatches (Maiden, Johnson & Li, Optica 4, 736, 2017).

Frames of a batch are updated together: their object and probe numerators
are summed and divided by the summed illumination, regularised by ``alpha``
(``alpha = 1`` gives ePIE's step ``1 / max|P|^2``). The object's step is
taken on the canvas region the batch's patches cover (:mod:`.regions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .decomposition import merge_ranks
from .engine import Engine
from .intensity import corrected_amplitudes, corrected_exit_wave_update
from .options import MinibatchOptions, check_alpha, option
from .positions import move_positions, position_shifts
from .regions import CanvasRegion
from .state import SolverState
from .updates import (
    UpdateTerms,
    add_regularised_step,
    add_scaled_in,
    probe_terms_of_every_rank,
    regularised_step_in,
    update_terms,
)


@dataclass
class RPIEOptions(MinibatchOptions):
    """rPIE's options."""

    algorithm = "rpie"
    alpha: float = option(0.1, "regularisation of the step, 0..1 (1: ePIE's 1/max|P|^2)")

    def validate(self) -> None:
        super().validate()
        check_alpha(self.alpha)


@dataclass
class EPIEOptions(RPIEOptions):
    """ePIE's options: rPIE's, with ``alpha`` pinned to 1."""

    algorithm = "epie"
    alpha: float = field(default=1.0, init=False)


class RPIE(Engine):
    """Regularised PIE: ``algorithm="rpie"``, and ``"epie"`` (:class:`EPIEOptions`)."""

    def iterate(
        self, state: SolverState, iteration: int, rng: np.random.Generator, frames: np.ndarray | None = None
    ) -> float:
        s = self.settings
        alpha = s.options.alpha
        update_probe = self.updates_probe(iteration)
        kernels = state.backend.kernels
        cost = 0.0
        for batch in self.batches(state, rng, frames):
            numerator, illumination = state.object_sums()
            terms, moves = UpdateTerms(numerator, illumination), []
            region = CanvasRegion.covering(state.host_corners[batch], state.frame_shape, state.object.shape)
            for chunk in self.chunks(batch, state):
                index = state.xp.asarray(chunk)
                corners = state.corners[index]
                correct = self.corrects_intensity(iteration)
                amplitude = corrected_amplitudes(state, chunk, correct)
                diff, chunk_cost = corrected_exit_wave_update(
                    state, chunk, corners, amplitude, correct=correct
                )
                cost += chunk_cost
                terms = update_terms(state, corners, diff, for_probe=update_probe, terms=terms)
                if self.refines_positions(iteration):
                    moves.append((chunk, position_shifts(state, chunk, corners, diff, amplitude, s)))
            if update_probe:
                probe_terms_of_every_rank(state, terms)
                add_regularised_step(
                    state.probe, terms.probe_numerator, terms.probe_weights, alpha, s.probe_step, kernels
                )
            if len(batch):  # on several ranks a batch may be empty (see Engine.batches)
                regularised_step_in(region, numerator, illumination, alpha, kernels)
                add_scaled_in(region, state.object, numerator, s.object_step, kernels)
            move_positions(state, moves)
        merge_ranks(state)
        if update_probe:
            self.finish_probe(state, iteration)
        return cost
