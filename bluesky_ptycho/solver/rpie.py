"""rPIE and ePIE with minibatches (Maiden, Johnson & Li, Optica 4, 736, 2017).

Frames of a batch are updated together: their object and probe numerators
are summed and divided by the summed illumination, regularised by ``alpha``
(``alpha = 1`` gives ePIE's step ``1 / max|P|^2``).
"""

from __future__ import annotations

import numpy as np

from .engine import Engine
from .forward import exit_wave_update, gather_patches
from .positions import refine_positions
from .state import SolverState
from .updates import object_update_terms, probe_update_terms, regularised_step


class RPIE(Engine):
    """Regularised PIE (``algorithm="rpie"``) and ePIE (``algorithm="epie"``)."""

    def iterate(self, state: SolverState, iteration: int, rng: np.random.Generator) -> float:
        s = self.settings
        alpha = 1.0 if s.algorithm == "epie" else s.alpha
        update_probe = self.updates_probe(iteration)
        cost = 0.0
        for batch in self.batches(state.n_frames, rng):
            index = state.xp.asarray(batch)
            corners = state.corners[index]
            patches = gather_patches(state.object, corners, state.frame_shape)
            diff, batch_cost = exit_wave_update(
                state.probe, patches, state.amplitude[index], state.mask, state.workers
            )
            cost += batch_cost
            numerator, illumination = object_update_terms(state, corners, diff)
            if update_probe:
                probe_numerator, probe_weights = probe_update_terms(patches, diff)
                state.probe += s.probe_step * regularised_step(probe_numerator, probe_weights, alpha)
            state.object += s.object_step * regularised_step(numerator, illumination, alpha)
            if self.refines_positions(iteration):
                refine_positions(state, batch, diff, s.max_position_step)
        if update_probe:
            self.finish_probe(state)
        return cost
