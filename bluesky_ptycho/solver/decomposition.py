"""One scan over several ranks: which frames each rank owns, and how the ranks' estimates become one.

Every rank holds its own frames (and, for DM, their far fields) and a copy of
the object canvas and the probe, the same on every rank at the start of each
iteration:

- DM visits every frame in one batch: the ranks' update sums (object and
  probe numerators and weights) are summed over the ranks
  (:meth:`~.communicator.Communicator.sum`), which is the single-process
  update to float32 rounding.
- The minibatch algorithms (rPIE, ePIE, LSQ-ML) go through their own frames'
  batches in step (as many on every rank, each ``batch_size / ranks``
  frames, :meth:`~.engine.Engine.batches`):
  each batch's probe update sums (and LSQ-ML's probe step length) are summed
  over the ranks, so the probe stays one; each rank updates its own copy of
  the object from its batches, and :func:`merge_ranks` makes one object of
  them once per iteration.

"stripes" (the default) gives each rank a compact stripe of the scan across
its longer extent, so that the ranks' objects overlap only at the stripes'
edges; "round-robin" deals the frames out in turn, so that every rank covers
the whole scan and the merge averages every pixel.
"""

from __future__ import annotations

import numpy as np

from .forward import stamp_patch
from .state import SolverState

DECOMPOSITIONS = ("stripes", "round-robin")
# below this, a rank's patches cannot overlap one another (see Reconstructor's overlap check)
FRAMES_PER_RANK = 2
# added to rank 0's weights before the merge, as a share of its largest: where no rank illuminates the
# canvas, rank 0's object wins
UNLIT_WEIGHT = 1e-6


def assign_frames(positions: np.ndarray, ranks: int, decomposition: str = "stripes") -> list[np.ndarray]:
    """Each rank's frames: sorted indices into ``positions`` (N, 2), every frame in exactly one rank.

    Raises
    ------
    ValueError
        For an unknown decomposition, or fewer than ``FRAMES_PER_RANK`` frames per rank.
    """
    if decomposition not in DECOMPOSITIONS:
        raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")
    n_frames = len(positions)
    if ranks < 1 or n_frames < FRAMES_PER_RANK * ranks:
        raise ValueError(
            f"{ranks} ranks for {n_frames} frames: each rank needs at least {FRAMES_PER_RANK} frames; "
            f"use at most {n_frames // FRAMES_PER_RANK} ranks"
        )
    if decomposition == "round-robin":
        return [np.arange(rank, n_frames, ranks) for rank in range(ranks)]
    axis = int(np.argmax(np.ptp(positions, axis=0)))
    order = np.argsort(positions[:, axis], kind="stable")
    return [np.sort(part) for part in np.array_split(order, ranks)]


def match_canvas(state: SolverState) -> None:
    """Grow this rank's canvas to the union of every rank's (collective): one shape and origin on every rank.

    Ranks grow their canvases on their own when their positions move; this is
    called before anything canvas-sized is summed over the ranks.
    """
    if state.comm.size == 1:
        return
    pixel = np.asarray(state.pixel_size)
    start = (
        state.origin[::-1] / pixel
    )  # (rows, columns) of canvas pixel (0, 0), whole pixels apart on every rank
    end = start + state.object.shape
    low, high = state.comm.extent(start, end)
    state.pad_canvas(np.rint(start - low).astype(int), np.rint(high - end).astype(int))


def merge_ranks(state: SolverState) -> None:
    """One object on every rank after an iteration in which each rank updated its own (collective).

    The object is the ranks' objects weighted by the illumination of each
    rank's frames (rank 0's where no rank's frames illuminate it). The probe
    needs nothing: its update sums are summed over the ranks batch by batch,
    so it is the same on every rank. Nothing happens in one process.

    Adding up the ranks' object changes instead (as one process applies
    batch after batch) overshoots: measured on 300 x 64² (rPIE, 40
    iterations, R-factor against 0.116 in one process), 0.177 on stripes and
    0.585 round-robin, against 0.138 and 0.139 with these weights.
    """
    comm = state.comm
    if comm.size == 1:
        return
    match_canvas(state)
    weights = stamp_patch(state.illumination_weights(), state.corners, state.object.shape)
    weights = state.xp.maximum(weights, 0, out=weights)  # the FFT convolution leaves rounding below zero
    if comm.rank == 0:
        weights += weights.dtype.type(UNLIT_WEIGHT * float(weights.max()))
    weighted = comm.sum(state.object * weights)
    state.object = (weighted / comm.sum(weights)).astype(state.object.dtype, copy=False)
