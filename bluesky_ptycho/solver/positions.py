"""Gradient-based refinement of scan positions.

For each frame the exit-wave change ``chi`` that the data ask for is projected
onto the derivative of the exit wave with respect to a shift of the object
patch, ``P * dO/drow`` and ``P * dO/dcol``; the least-squares shift along each
axis is that projection over the derivative's squared norm (as in LSQ-ML).
"""

from __future__ import annotations

import numpy as np

from .backend import to_numpy
from .forward import gather_patches
from .state import SolverState


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


def position_shifts(state: SolverState, corners, chi, max_step: float) -> np.ndarray:
    """Least-squares shifts (rows, columns) in pixels of a batch's patches.

    Parameters
    ----------
    state
        The current reconstruction.
    corners
        (B, 2) integer corners of the batch.
    chi
        (B, modes, h, w) exit-wave change asked for by the data.
    max_step
        Largest shift returned along each axis, in pixels.

    Returns
    -------
    (B, 2) host array of shifts, with the batch's mean shift removed (a common
    translation of every position is not determined by the data).
    """
    return bounded_shifts(gradient_shifts(state, corners, chi), max_step)


def gradient_shifts(state: SolverState, corners, chi) -> np.ndarray:
    """The least-squares shifts of :func:`position_shifts`, as they are: (B, 2) host array."""
    xp = state.xp
    shape = state.frame_shape
    shifts = []
    for gradient in patch_gradients(state.object, corners, shape):
        derivative = state.probe[None] * gradient[:, None]
        numerator = xp.sum((derivative.conj() * chi).real, axis=(1, 2, 3))
        denominator = xp.sum(derivative.real**2 + derivative.imag**2, axis=(1, 2, 3))
        shifts.append(numerator / (denominator + 1e-6 * denominator.max() + 1e-30))
    return to_numpy(xp.stack(shifts, axis=1)).astype(np.float64)


def bounded_shifts(shifts: np.ndarray, max_step: float) -> np.ndarray:
    """``shifts`` (B, 2) without their mean, each within ``max_step`` pixels."""
    return np.clip(shifts - shifts.mean(axis=0), -max_step, max_step)


def move_positions(state: SolverState, moves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Add each ``(frames, shifts)`` pair's shifts (B, 2) to the positions of its frames, in place.

    The algorithms move a batch's positions after its object update: the
    canvas may grow here, and the batch's sums are the size of the canvas
    they were taken on.
    """
    if not moves:
        return
    positions = state.positions.copy()
    for frames, shifts in moves:
        positions[frames] += shifts
    state.set_positions(positions)
