"""The interface every reconstruction algorithm implements."""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from .probe import mode_rotation, recentre, rotate_modes
from .regions import spatial_blocks
from .state import SolverState
from .variable_probe import FIT_EVERY

if TYPE_CHECKING:
    from .settings import ReconstructionSettings

CHUNK_BYTES = 2 * 2**20


class Engine(ABC):
    """One reconstruction algorithm: iterates a :class:`SolverState` in place."""

    #: whether an iteration can visit some of the frames only (the minibatch
    #: algorithms); one that cannot visits every frame whatever it is given
    visits_some_frames = True
    #: whether it fits a probe that varies through the scan (:mod:`.variable_probe`)
    varies_probe = False
    #: collectives over the ranks after each batch that updates the probe (the probe's sums: one;
    #: each costs its messages' latency; a varying probe's fit adds one in the iterations that fit
    #: it); an engine whose only batch is every frame makes none
    collectives_per_batch = 1

    def __init__(self, settings: ReconstructionSettings) -> None:
        self.settings = settings

    def frames_added(self, state: SolverState, n_before: int) -> None:  # noqa: B027
        """Called after frames ``n_before:`` were appended to ``state``."""

    @abstractmethod
    def iterate(
        self, state: SolverState, iteration: int, rng: np.random.Generator, frames: np.ndarray | None = None
    ) -> float:
        """Do one iteration (0-based number ``iteration``) over ``frames`` (None: all); return their amplitude misfit."""

    def updates_probe(self, iteration: int) -> bool:
        """Whether the probe is updated in ``iteration``."""
        return iteration >= self.settings.probe_update_start

    def corrects_intensity(self, iteration: int) -> bool:
        """Whether each frame's share of the beam is fitted in ``iteration``."""
        s = self.settings
        return s.intensity_correction and iteration >= s.intensity_correction_start

    def varies_probe_in(self, iteration: int) -> bool:
        """Whether the probe's variation through the scan is fitted in ``iteration``: every ``FIT_EVERY``-th from its start."""
        s = self.settings
        return (
            s.variable_probe_modes > 0
            and iteration >= s.variable_probe_start
            and (iteration - s.variable_probe_start) % FIT_EVERY == 0
        )

    def refines_positions(self, iteration: int) -> bool:
        """Whether positions are refined in ``iteration``."""
        s = self.settings
        return s.position_correction and iteration >= s.position_correction_start

    def searches_positions(self, iteration: int) -> bool:
        """Whether stuck frames are searched for after ``iteration`` (:mod:`.position_search`)."""
        s = self.settings
        since = iteration - s.position_correction_start
        return (
            s.position_correction
            and s.position_search_every > 0
            and since > 0
            and since % s.position_search_every == 0
        )

    def batches(
        self, state: SolverState, rng: np.random.Generator, frames: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """Frame indices (of ``frames``, None: all) split into the batches of one iteration, in random order.

        Each batch is a random draw from one of the
        :func:`~.regions.spatial_blocks` of those frames (all of them up to
        ``BLOCK_FRAMES`` frames); the blocks come in random order. On several
        ranks a rank's batch is ``batch_size / ranks`` frames (the ranks'
        batches together are one process's), and empty batches follow so
        that every rank has as many (the probe's update sums are summed over
        the ranks batch by batch).
        """
        frames = np.arange(state.n_frames) if frames is None else np.asarray(frames)
        size = self.settings.options.effective_batch_size(len(frames))
        if state.comm.size > 1:  # a batch of the ranks together is a batch of one process
            everyone = int(state.comm.total(len(frames)))
            size = max(1, math.ceil(self.settings.options.effective_batch_size(everyone) / state.comm.size))
        blocks = [frames[block] for block in spatial_blocks(state.positions[frames])]
        batches = [
            batch
            for block in blocks
            for batch in np.array_split(block[rng.permutation(len(block))], math.ceil(len(block) / size))
        ]
        if len(blocks) > 1:
            batches = [batches[b] for b in rng.permutation(len(batches))]
        missing = state.comm.most(len(batches)) - len(batches)
        return batches + [frames[:0]] * missing

    def chunks(self, batch: np.ndarray, state: SolverState) -> list[np.ndarray]:
        """``batch`` split so that each part's exit waves (frames x modes) take about ``CHUNK_BYTES``.

        A batch's per-frame work (exit waves, FFTs, Fourier change, update
        sums) then runs part by part in cache: with K probe modes the waves of
        a whole batch are K times larger and would stream from memory.
        Each part's transforms (frames x modes) come in multiples of the FFT
        threads, which share out whole transforms: with two threads, three
        transforms take as long as four.
        """
        threads = state.backend.workers
        step = threads // math.gcd(threads, state.probe.shape[0])  # frames whose transforms share out evenly
        steps_per_part = max(1, CHUNK_BYTES // (state.probe.nbytes * step))
        n_steps = math.ceil(len(batch) / step)
        n_parts = math.ceil(n_steps / steps_per_part)
        edges = [min(len(batch), part * n_steps // n_parts * step) for part in range(n_parts + 1)]
        return [batch[first:last] for first, last in itertools.pairwise(edges)]

    def orthogonalizes(self, iteration: int) -> bool:
        """Whether the probe modes are orthogonalised after ``iteration``'s probe update."""
        return True

    def finish_probe(self, state: SolverState, iteration: int) -> None:
        """After a probe update: keep modes orthogonal and the probe centred."""
        if state.probe.shape[0] > 1 and self.orthogonalizes(iteration):
            rotation = mode_rotation(state.probe)
            state.probe = rotate_modes(state.probe, rotation, state.backend.kernels)
            if state.variable_probe is not None:
                state.variable_probe.follow_first_mode(rotation)
            self.modes_rotated(state, rotation)
        shift = recentre(state)
        if shift is not None:
            if state.variable_probe is not None:
                state.variable_probe.roll(shift)
            self.probe_shifted(state, shift)

    def positions_jumped(self, state: SolverState, frames: np.ndarray) -> None:  # noqa: B027
        """Called after the search (:mod:`.position_search`) moved ``frames`` far from where they were."""

    def probe_shifted(self, state: SolverState, shift: tuple[int, int]) -> None:  # noqa: B027
        """Called after probe and object were rolled by ``shift`` (rows, columns)."""

    def calm_down(self) -> str:
        """Lower the step after a divergence; return what was done, for the record."""
        s = self.settings
        s.object_step, s.probe_step = s.object_step / 2, s.probe_step / 2
        return f"object_step and probe_step halved to {s.object_step:g} and {s.probe_step:g}"

    def restored(self, state: SolverState) -> None:  # noqa: B027
        """Called after object, probe and positions were restored from an earlier iteration."""

    def modes_rotated(self, state: SolverState, rotation) -> None:  # noqa: B027
        """Called after the probe modes were mixed into ``sum_m rotation[m, k] probe_m`` (orthogonalised)."""
