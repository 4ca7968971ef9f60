"""Gradient-based refinement of scan positions.

For each frame the exit-wave change ``chi`` that the data ask for is projected
onto the derivative of the exit wave with respect to a shift of the object
patch, ``P * dO/drow`` and ``P * dO/dcol``; the least-squares shift along each
axis is that projection over the derivative's squared norm (as in LSQ-ML).
"""

from __future__ import annotations

import numpy as np

from .backend import array_module, to_numpy
from .forward import gather_patches
from .state import SolverState


def object_gradients(obj):
    """Central-difference derivatives (d/drow, d/dcolumn) of the object."""
    xp = array_module(obj)
    d_row, d_col = xp.gradient(obj)
    return d_row.astype(obj.dtype, copy=False), d_col.astype(obj.dtype, copy=False)


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
    for gradient in object_gradients(state.object):
        derivative = state.probe[None] * gather_patches(gradient, corners, shape)[:, None]
        numerator = xp.sum((derivative.conj() * chi).real, axis=(1, 2, 3))
        denominator = xp.sum(derivative.real**2 + derivative.imag**2, axis=(1, 2, 3))
        shifts.append(numerator / (denominator + 1e-6 * denominator.max() + 1e-30))
    return to_numpy(xp.stack(shifts, axis=1)).astype(np.float64)


def bounded_shifts(shifts: np.ndarray, max_step: float) -> np.ndarray:
    """``shifts`` (B, 2) without their mean, each within ``max_step`` pixels."""
    return np.clip(shifts - shifts.mean(axis=0), -max_step, max_step)


def refine_positions(state: SolverState, batch: np.ndarray, chi, max_step: float) -> None:
    """Move the positions of the frames ``batch`` along their cost gradient, in place."""
    shifts = position_shifts(state, state.corners[state.xp.asarray(batch)], chi, max_step)
    positions = state.positions.copy()
    positions[batch] += shifts
    state.set_positions(positions)
