"""The interface every reconstruction algorithm implements."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from .probe import orthogonalize_modes, recentre
from .settings import ReconstructionSettings
from .state import SolverState


class Engine(ABC):
    """One reconstruction algorithm: iterates a :class:`SolverState` in place."""

    def __init__(self, settings: ReconstructionSettings) -> None:
        self.settings = settings

    def frames_added(self, state: SolverState, n_before: int) -> None:  # noqa: B027
        """Called after frames ``n_before:`` were appended to ``state``."""

    @abstractmethod
    def iterate(self, state: SolverState, iteration: int, rng: np.random.Generator) -> float:
        """Do one iteration (0-based number ``iteration``); return the amplitude misfit."""

    def updates_probe(self, iteration: int) -> bool:
        """Whether the probe is updated in ``iteration``."""
        return iteration >= self.settings.probe_update_start

    def refines_positions(self, iteration: int) -> bool:
        """Whether positions are refined in ``iteration``."""
        s = self.settings
        return s.position_correction and iteration >= s.position_correction_start

    def batches(self, n_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Frame indices split into the batches of one iteration, in random order."""
        size = self.settings.effective_batch_size(n_frames)
        return np.array_split(rng.permutation(n_frames), math.ceil(n_frames / size))

    def finish_probe(self, state: SolverState) -> None:
        """After a probe update: keep modes orthogonal and the probe centred."""
        if state.probe.shape[0] > 1:
            state.probe = orthogonalize_modes(state.probe)
        shift = recentre(state)
        if shift is not None:
            self.probe_shifted(state, shift)

    def probe_shifted(self, state: SolverState, shift: tuple[int, int]) -> None:  # noqa: B027
        """Called after probe and object were rolled by ``shift`` (rows, columns)."""
