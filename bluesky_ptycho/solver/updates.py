"""Object and probe update terms shared by the algorithms.

For exit-wave changes ``diff`` (B, modes, h, w) of a batch of frames these
return the numerators and denominators of the classical least-squares
updates; each algorithm decides how to weight and combine them.
"""

from __future__ import annotations

from .forward import scatter_patches, stamp_patch
from .state import SolverState


def mode_sum(probe, waves):
    """``sum_m conj(probe_m) * waves_m`` for waves (B, modes, h, w): (B, h, w)."""
    if probe.shape[0] == 1:
        return waves[:, 0] * probe[0].conj()
    return (probe.conj()[None] * waves).sum(axis=1)


def object_update_terms(state: SolverState, corners, diff, per_frame=None):
    """Object numerator ``sum_j sum_m conj(P_m) diff_jm`` and illumination ``sum_j |P|^2``.

    Both are full-canvas arrays (the illumination real); ``corners`` are the
    batch's patch corners. ``per_frame`` may pass ``mode_sum(probe, diff)``
    when the caller has it already.
    """
    xp = state.xp
    if per_frame is None:
        per_frame = mode_sum(state.probe, diff)
    numerator = xp.zeros_like(state.object)
    scatter_patches(numerator, corners, per_frame)
    illumination = stamp_patch(state.illumination_weights(), corners, state.object.shape)
    return numerator, illumination


def probe_update_terms(patches, diff):
    """Probe numerator ``sum_j conj(O_j) diff_j`` (modes, h, w) and ``sum_j |O_j|^2`` (h, w)."""
    numerator = (patches.conj()[:, None] * diff).sum(axis=0)
    weights = (patches.real**2 + patches.imag**2).sum(axis=0)
    return numerator, weights


def regularised_step(numerator, weights, alpha: float):
    """``numerator / ((1 - alpha) * weights + alpha * max(weights))`` (rPIE's preconditioner)."""
    largest = weights.max()
    return numerator / ((1 - alpha) * weights + (alpha + 1e-6) * largest + 1e-30)
