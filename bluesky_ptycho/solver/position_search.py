"""Frames stuck far from their true positions: found by their misfit, searched for on a grid, moved.

Gradient refinement (:mod:`.positions`) moves each frame towards the nearest
position the object agrees with. A frame recorded half a scan step or more
off can settle into a wrong one and stay there, and its misfit then stands
out against the other frames'. Such a frame is tried at every point of a
coarse grid within the refinement's bound of where the scan recorded it,
against the current object, then on a fine grid around the best point, and
moved there where that fits better by more than the misfits' spread and
lies beyond the fine grid (nearer moves are the gradient's to make).

A frame's misfit is taken with its photons matched to the model's where it
is tried (its own scale, :mod:`.intensity`, was fitted where it was stuck).
The search tries every point, and the frame's current one, with the
shared probe: where the probe varies through the scan (:mod:`.variable_probe`)
a stuck frame's variation was fitted to make up for the wrong position, and
lit by it the frame fits its true position worse; a frame moved starts
again without a variation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .backend import to_numpy
from .forward import exit_waves_at, model_amplitude
from .positions import offset_bound, within_bound
from .state import SolverState

# a frame is searched for where its misfit lies this many robust standard deviations above the median
OUTLIER_DEVIATIONS = 3.0
# pixels between the coarse grid's points: a frame a few pixels from its true position fits
# visibly better than one further off (porous and star samples, 128² frames), so the grid
# lands in the right basin
COARSE_SPACING = 4
# the fine grid's radius: the coarse grid's cell around its best point, and a pixel more
FINE_RADIUS = np.sqrt(2) * (COARSE_SPACING // 2 + 1)
# the MAD of a normal distribution times this is its standard deviation
MAD_TO_STANDARD_DEVIATION = 1.4826
# a frame is moved only where it fits better by this many robust standard deviations of the scan's
# misfits: frames stuck far off fit their best point 1.5-6.8 better (porous, half a step, 1e5 photons);
# at 1e4 photons a frame that stands out by chance fits the best of some 300 points 0.0-0.2 better
# (a weak-phase star), and moving it there took it 20-30 px away
MIN_IMPROVEMENT = 1.0


def frame_misfits(
    state: SolverState, frames: np.ndarray, corners: np.ndarray, own_probe: bool = True
) -> np.ndarray:
    """Each frame's amplitude R-factor, ``sum |s a_model - a| / sum a`` over good pixels, at ``corners``.

    ``s`` matches the model's photons in the good pixels to the frame's.

    Parameters
    ----------
    state
        The current reconstruction: object, probe, measured amplitudes and mask.
    frames
        (B,) frame indices, or (1,): one frame at every one of ``corners`` (its candidates).
    corners
        (B, 2) integer host array of patch corners on the canvas.
    own_probe
        Light each frame with its own probe (the shared one plus its
        variation, where the probe varies), or with the shared probe.

    Returns
    -------
    (B,) host array.
    """
    xp = state.xp
    measured = state.measured.gather(frames)
    variable = state.variable_probe if own_probe else None
    variation = None if variable is None else variable.variation(np.broadcast_to(frames, len(corners)))
    waves = exit_waves_at(
        state.object, xp.asarray(corners), state.probe, kernels=state.backend.kernels, variation=variation
    )
    model = model_amplitude(state.backend.fft2(waves, overwrite_x=True))
    if state.mask is not None:
        model, measured = model * state.mask, measured * state.mask
    scale = xp.sqrt(xp.sum(measured**2, axis=(1, 2)) / xp.maximum(xp.sum(model**2, axis=(1, 2)), 1e-30))
    misfit = xp.sum(xp.abs(scale[:, None, None] * model - measured), axis=(1, 2))
    return to_numpy(misfit) / np.maximum(to_numpy(xp.sum(measured, axis=(1, 2))), 1e-30)


def disk_offsets(radius: float, spacing: int) -> np.ndarray:
    """(K, 2) integer offsets (rows, columns) ``spacing`` apart within ``radius`` of (0, 0)."""
    steps = np.arange(-int(radius // spacing), int(radius // spacing) + 1) * spacing
    offsets = np.stack(np.meshgrid(steps, steps, indexing="ij"), axis=-1).reshape(-1, 2)
    return offsets[np.hypot(offsets[:, 0], offsets[:, 1]) <= radius]


def best_fit(
    state: SolverState, frame: int, candidates: np.ndarray, parts: Callable[[np.ndarray], list[np.ndarray]]
) -> tuple[np.ndarray, float]:
    """The candidate position (2,) of ``candidates`` (K, 2) at which ``frame`` fits best, and its misfit there.

    Every candidate is lit by the shared probe (:func:`frame_misfits`); no
    candidate on the canvas: the frame's position, at an infinite misfit.

    Candidates whose patch would leave the canvas (or its rim,
    :meth:`.SolverState.within_rim`) are not tried; ``parts`` splits the
    candidates into groups computed at once.
    """
    corners = np.rint(candidates).astype(np.int64)
    inside = state.within_rim(corners)
    candidates, corners = candidates[inside], corners[inside]
    if not len(candidates):
        return state.positions[frame], np.inf
    misfits = np.concatenate(
        [
            frame_misfits(state, np.array([frame]), corners[part], own_probe=False)
            for part in parts(np.arange(len(corners)))
        ]
    )
    best = int(np.argmin(misfits))
    return candidates[best], float(misfits[best])


def search_stuck_frames(
    state: SolverState, frames: np.ndarray, parts: Callable[[np.ndarray], list[np.ndarray]]
) -> tuple[np.ndarray, dict]:
    """Search the ``frames`` whose misfit stands out for where they fit, and move them there, in place.

    The median and spread of the misfits are every rank's; each rank
    searches its own frames. Returns this rank's frames moved, and the
    record: frames ``searched`` and ``moved``, over every rank.
    """
    current = np.concatenate(
        [
            frame_misfits(state, frames[part], state.host_corners[frames[part]])
            for part in parts(np.arange(len(frames)))
        ]
    )
    everyone = np.concatenate(state.comm.gather(current))
    median = np.median(everyone)
    spread = MAD_TO_STANDARD_DEVIATION * np.median(np.abs(everyone - median))
    stuck = current > median + OUTLIER_DEVIATIONS * spread
    coarse = disk_offsets(offset_bound(state.frame_shape), COARSE_SPACING)
    fine = disk_offsets(FINE_RADIUS, 1)
    searched = frames[stuck]
    starts = state.pixels(state.start_positions[searched])
    positions, moved = state.positions.copy(), []
    for frame, start in zip(searched, starts, strict=True):
        best, _ = best_fit(state, frame, start + coarse, parts)
        best, fit = best_fit(state, frame, best + fine, parts)
        here = frame_misfits(state, np.array([frame]), state.host_corners[[frame]], own_probe=False)[0]
        if here - fit > MIN_IMPROVEMENT * spread and np.hypot(*(best - positions[frame])) > COARSE_SPACING:
            positions[frame] = best
            moved.append(frame)
    moved = np.array(moved, dtype=np.int64)
    if len(moved):
        state.set_positions(within_bound(state, positions, moved))
        state.position_gains.restart(moved)
        if state.variable_probe is not None:
            state.variable_probe.restart(moved)
    n_searched, n_moved = state.comm.totals(len(searched), len(moved))
    return moved, {"searched": int(n_searched), "moved": int(n_moved)}
