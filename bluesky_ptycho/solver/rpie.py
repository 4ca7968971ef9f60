"""rPIE and ePIE with minibatches (Maiden, Johnson & Li, Optica 4, 736, 2017).

Frames of a batch are updated together: their object and probe numerators
are summed and divided by the summed illumination, regularised by ``alpha``
(``alpha = 1`` gives ePIE's step ``1 / max|P|^2``).
"""

from __future__ import annotations

import numpy as np

from .engine import Engine
from .forward import exit_wave_update
from .positions import refine_positions
from .state import SolverState
from .updates import add_regularised_step, update_terms


class RPIE(Engine):
    """Regularised PIE: ``algorithm="rpie"``, and ``"epie"`` (pinned to ``alpha = 1``)."""

    def iterate(self, state: SolverState, iteration: int, rng: np.random.Generator) -> float:
        s = self.settings
        update_probe = self.updates_probe(iteration)
        kernels = state.backend.kernels
        cost = 0.0
        for batch in self.batches(state.n_frames, rng):
            terms = None
            for chunk in self.chunks(batch, state):
                index = state.xp.asarray(chunk)
                corners = state.corners[index]
                diff, chunk_cost = exit_wave_update(
                    state.backend, state.probe, state.object, corners, state.amplitude, index, state.mask
                )
                cost += chunk_cost
                terms = update_terms(state, corners, diff, for_probe=update_probe, terms=terms)
                if self.refines_positions(iteration):
                    refine_positions(state, chunk, diff, s.max_position_step)
            if update_probe:
                add_regularised_step(
                    state.probe, terms.probe_numerator, terms.probe_weights, s.alpha, s.probe_step, kernels
                )
            add_regularised_step(
                state.object, terms.object_numerator, terms.illumination, s.alpha, s.object_step, kernels
            )
        if update_probe:
            self.finish_probe(state, iteration)
        return cost
