"""Gradient-based refinement of scan positions, bounded, and the record of how far they moved.

For each frame the exit-wave change ``chi`` that the data ask for is projected
onto the derivative of the exit wave with respect to a shift of the object
patch, ``P * dO/drow`` and ``P * dO/dcol``; the least-squares shift along each
axis is that projection over the derivative's squared norm (as in LSQ-ML),
damped by :data:`SHIFT_DAMPING` where the frame's photons say little about
its position (:data:`SHIFT_NOISE`).

A patch starts at its position's nearest pixel, so that shift is measured
from the pixel, not from the position: added to the position, it stopped
frames as they came into the right pixel, half a pixel from where they
belong (docs/imperfect-scans.md). A frame on its way somewhere
(:mod:`.position_gains`) still takes it, as it says which way; any other
takes the shift measured at its own position, from the exit-wave change
asked of the patch moved there to first order (:func:`subpixel_exit_waves`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .backend import empty_aligned, to_numpy
from .data import ProbeVariation, kernel_variation
from .forward import exit_waves, fourier_step, gather_patches
from .state import SolverState

if TYPE_CHECKING:
    from .settings import ReconstructionSettings

# a refined position stays within this share of the frame's smaller edge of where the reconstruction took it
MAX_OFFSET_SHARE = 0.25
#: pixels: a frame whose shift's photon noise may be this large along an axis takes half its shift.
#: The frames are photon counts and the FFTs unitary, so the exit waves are in square-root photons,
#: whose noise is at most 1/2, and a frame's shift has at most ``1 / (2 sqrt(denominator))``
#: pixels of it, ``sum |P dO|^2`` the denominator. Without the damping, frames of weakly
#: scattering samples at 1e4 photons (denominators of 1-10) drifted off with the object, up to
#: 4.5 px from 0.3-0.8 px recorded; at 0.2 px up to 2.3 px; at 0.1 px they stayed nearer, but
#: frames half a step off came in too slowly for the previews (docs/imperfect-scans.md)
SHIFT_NOISE = 0.2
#: in photons per pixel²: added to every least-squares shift's denominator
SHIFT_DAMPING = 1 / (4 * SHIFT_NOISE**2)


def patch_gradients(obj, corners, shape: tuple[int, int]):
    """Central-difference derivatives (d/drow, d/dcolumn) of the object patches at ``corners``, each (B, h, w).

    Read from patches one pixel larger on every side (the canvas keeps that
    pixel around every patch), so a batch touches only its own patches.
    """
    h, w = shape
    grown = gather_patches(obj, corners - 1, (h + 2, w + 2))
    half = obj.real.dtype.type(0.5)
    return (
        (grown[:, 2:, 1:-1] - grown[:, :-2, 1:-1]) * half,
        (grown[:, 1:-1, 2:] - grown[:, 1:-1, :-2]) * half,
    )


def position_shifts(
    state: SolverState,
    frames: np.ndarray,
    corners,
    chi,
    amplitude,
    settings: ReconstructionSettings,
    noise_model: str = "gaussian",
    variation: ProbeVariation | None = None,
) -> np.ndarray:
    """The moves (rows, columns) in pixels of a batch's patches: their steps times their least-squares shifts.

    Parameters
    ----------
    state
        The current reconstruction.
    frames
        (B,) the batch's frames.
    corners
        (B, 2) integer corners of the batch.
    chi
        (B, modes, h, w) exit-wave change asked for by the data.
    amplitude
        (B, h, w) the measured amplitudes it was asked for against.
    settings
        Its ``position_step``: the share of each least-squares shift taken, grown frame by
        frame while a frame is on its way (:mod:`.position_gains`); its ``max_position_step``:
        the largest shift returned along each axis, in pixels.
    noise_model, variation
        As the algorithm's Fourier step took them (:func:`.intensity.corrected_exit_wave_update`),
        for :func:`shifts_from_positions`.

    Returns
    -------
    (B, 2) host array of shifts, with the batch's mean shift removed (a common
    translation of every position is not determined by the data).
    """

    def at_positions(settled: np.ndarray) -> np.ndarray:
        index = state.xp.asarray(np.flatnonzero(settled))
        return shifts_from_positions(
            state,
            frames[settled],
            corners[index],
            amplitude[index],
            noise_model,
            None if variation is None else variation.of(index),
        )

    return stepped_shifts(state, frames, gradient_shifts(state, corners, chi), settings, at_positions)


def stepped_shifts(
    state: SolverState,
    frames: np.ndarray,
    from_patch: np.ndarray,
    settings: ReconstructionSettings,
    at_positions: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The moves of ``frames`` (B, 2): each its step times its least-squares shift, bounded.

    The shift from the patch (:func:`gradient_shifts`) while the frame is on
    its way, else ``at_positions(settled)``: the shifts (S, 2) of the S
    frames that ``settled`` (B,) marks, measured at their positions
    (:func:`shifts_from_positions`; asked only for those, and not when
    there are none). None: from the patch too. The batch's mean move is
    taken out, and each move is clipped to ``settings.max_position_step``
    pixels along each axis.
    """
    gains = state.position_gains
    steps = gains.follow(frames, from_patch, settings.position_step)
    shifts = from_patch
    settled = ~gains.on_its_way(frames)
    if at_positions is not None and settled.any():
        shifts = from_patch.copy()
        shifts[settled] = at_positions(settled)
    moves = steps[:, None] * shifts
    return np.clip(moves - moves.mean(axis=0), -settings.max_position_step, settings.max_position_step)


def subpixel_exit_waves(
    state: SolverState, corners, offsets: np.ndarray, variation: ProbeVariation | None = None
):
    """Exit waves (B, modes, h, w) of the patches at ``corners`` moved by ``offsets`` (B, 2 px), to first order.

    Each patch is ``O + offset_row dO/drow + offset_col dO/dcol`` with the
    central differences of :func:`patch_gradients`; offsets are at most
    half a pixel, from a position to its nearest pixel. With the backend's
    compiled kernels, in one pass.
    """
    kernels = state.backend.kernels
    if kernels is not None:
        out = empty_aligned((len(offsets), *state.probe.shape), state.probe.dtype)
        variation_arrays = kernel_variation(variation, len(offsets), state.probe)
        offsets = offsets.astype(state.object.real.dtype)
        kernels.subpixel_exit_waves(state.object, corners, offsets, state.probe, *variation_arrays, out)
        return out
    row, column = patch_gradients(state.object, corners, state.frame_shape)
    offsets = state.xp.asarray(offsets, dtype=row.real.dtype)
    patches = gather_patches(state.object, corners, state.frame_shape)
    patches = patches + offsets[:, 0, None, None] * row + offsets[:, 1, None, None] * column
    return exit_waves(state.probe, patches, variation)


def shifts_from_positions(
    state: SolverState,
    frames: np.ndarray,
    corners,
    amplitude,
    noise_model: str = "gaussian",
    variation: ProbeVariation | None = None,
) -> np.ndarray:
    """The least-squares shifts (B, 2) of ``frames``, measured at their own positions; host array.

    Their patches are at ``corners``, ``amplitude`` their measured amplitudes
    (as :func:`.forward.exit_wave_update` takes them). The exit-wave change
    that the data ask of each patch moved to its position
    (:func:`subpixel_exit_waves`), projected as in :func:`gradient_shifts`.
    """
    offsets = state.positions[frames] - to_numpy(corners)
    waves = subpixel_exit_waves(state, corners, offsets, variation)
    chi, _ = fourier_step(state.backend, waves, amplitude, state.mask, noise_model)
    return gradient_shifts(state, corners, chi)


def gradient_shifts(state: SolverState, corners, chi) -> np.ndarray:
    """The least-squares shifts of the patches at ``corners`` for the change ``chi``, damped by :data:`SHIFT_DAMPING`: (B, 2) host array."""
    numerator, denominator = gradient_sums(state, corners, chi)
    return numerator / (denominator + SHIFT_DAMPING)


def gradient_sums(state: SolverState, corners, chi) -> tuple[np.ndarray, np.ndarray]:
    """Numerators and denominators (B, 2) of each patch's least-squares shift along rows and columns, host arrays."""
    kernels = state.backend.kernels
    if kernels is not None:
        numerator, denominator = kernels.position_gradient_sums(state.object, corners, state.probe, chi)
        return numerator.T, denominator.T
    xp = state.xp
    sums = []
    for gradient in patch_gradients(state.object, corners, state.frame_shape):
        derivative = state.probe[None] * gradient[:, None]
        sums.append(xp.sum((derivative.conj() * chi).real, axis=(1, 2, 3)))
        sums.append(xp.sum(derivative.real**2 + derivative.imag**2, axis=(1, 2, 3)))
    sums = to_numpy(xp.stack(sums, axis=1)).astype(np.float64)
    return sums[:, 0::2], sums[:, 1::2]


def move_positions(state: SolverState, moves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Add each ``(frames, shifts)`` pair's shifts (B, 2) to the positions of its frames, in place, within the bound.

    The algorithms move a batch's positions after its object update: the
    canvas may grow here, and the batch's sums are the size of the canvas
    they were taken on.
    """
    if not moves:
        return
    positions = state.positions.copy()
    for frames, shifts in moves:
        positions[frames] += shifts
    state.set_positions(within_bound(state, positions, np.concatenate([frames for frames, _ in moves])))


def offset_bound(frame_shape: tuple[int, int]) -> float:
    """How far, in pixels, a refined position may move from where the reconstruction took it."""
    return MAX_OFFSET_SHARE * min(frame_shape)


def within_bound(state: SolverState, positions: np.ndarray, moved: np.ndarray | None = None) -> np.ndarray:
    """``positions`` (N, 2 pixels), each pulled back to :func:`offset_bound` of its start where it went further.

    Only the ``moved`` frames (None: all) are looked at: a batch's moves cost
    its frames, not the scan's. Frames pulled back are marked in
    ``state.at_bound``: a refinement that runs away stays bounded, and the
    record says how many frames it held.
    """
    moved = np.arange(len(positions)) if moved is None else moved
    start = state.pixels(state.start_positions[moved])
    offset = positions[moved] - start
    distance = np.hypot(offset[:, 0], offset[:, 1])
    bound = offset_bound(state.frame_shape)
    over = distance > bound
    if over.any():
        held = moved[over]
        state.at_bound[held] = True
        positions = positions.copy()
        positions[held] = start[over] + offset[over] * (bound / distance[over])[:, None]
    return positions


def refinement_record(state: SolverState) -> dict:
    """How far refinement moved the positions from their start, in pixels, over every rank's frames.

    ``moved_rms_px`` and ``moved_max_px``; ``frames_at_bound``: frames held
    at ``bound_px`` (:func:`within_bound`).
    """
    comm = state.comm
    offset = state.positions - state.pixels(state.start_positions)
    squared = np.sum(offset**2, axis=1)
    squares, n_frames, at_bound = comm.totals(squared.sum(), len(squared), state.at_bound.sum())
    return {
        "moved_rms_px": float(np.sqrt(squares / max(n_frames, 1))),
        "moved_max_px": float(np.sqrt(comm.most(float(squared.max(initial=0.0))))),
        "bound_px": offset_bound(state.frame_shape),
        "frames_at_bound": int(at_bound),
    }
