"""Object and probe update terms shared by the algorithms.

For exit-wave changes ``diff`` (B, modes, h, w) of a batch of frames these
return the numerators and denominators of the classical least-squares
updates; each algorithm decides how to weight and combine them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backend import array_module
from .data import kernel_variation
from .forward import gather_patches, scatter_patches, stamp_patch
from .regions import CanvasRegion
from .state import SolverState, mode_power


@dataclass
class UpdateTerms:
    """A batch's update terms; those not asked for are None.

    Attributes
    ----------
    object_numerator
        ``sum_j sum_m conj(P_m) diff_jm`` placed at each patch, canvas-sized.
    illumination
        ``sum_j sum_m |P_m|^2`` placed at each patch, canvas-sized, real.
    probe_numerator
        ``sum_j conj(O_j) diff_jm``, (modes, h, w).
    probe_weights
        ``sum_j |O_j|^2``, (h, w), real.
    """

    object_numerator: Any = None
    illumination: Any = None
    probe_numerator: Any = None
    probe_weights: Any = None


def frame_inner(u, v):
    """``sum Re(conj(u) v)`` over each frame's pixels, (B,)."""
    return (u.real * v.real + u.imag * v.imag).sum(axis=(-2, -1))


def mode_sum(probe, waves):
    """``sum_m conj(probe_m) * waves_m`` for waves (B, modes, h, w): (B, h, w)."""
    if probe.shape[0] == 1:
        return waves[:, 0] * probe[0].conj()
    return (probe.conj()[None] * waves).sum(axis=1)


def update_terms(
    state: SolverState,
    corners,
    diff,
    for_object: bool = True,
    for_probe: bool = True,
    terms: UpdateTerms | None = None,
    variation=None,
):
    """Object and/or probe update terms of exit-wave changes ``diff`` at ``corners``.

    The probe terms use the object patches of ``state.object`` as it is now.
    Given ``terms`` (of earlier frames of the same batch), the new frames'
    terms are added to them, in place. ``variation``: each frame's change of
    the first probe mode (:class:`.data.ProbeVariation`), or None; its
    object numerator joins the shared probe's (the illumination stays the
    shared probe's).

    Returns
    -------
    UpdateTerms
    """
    xp = state.xp
    real = diff.real.dtype
    terms = terms or UpdateTerms()
    kernels = state.backend.kernels
    if for_object:
        if terms.object_numerator is None:
            terms.object_numerator = xp.zeros_like(state.object)
            terms.illumination = xp.zeros(state.object.shape, real)
        if kernels is not None:
            kernels.accumulate_object_terms(
                diff,
                corners,
                state.probe,
                *kernel_variation(variation, len(corners), state.probe),
                terms.object_numerator,
                terms.illumination,
            )
        else:
            numerator = mode_sum(state.probe, diff)
            if variation is not None:  # scattered with the shared probe's, in one pass
                numerator += variation.frames().conj() * diff[:, 0]
            scatter_patches(terms.object_numerator, corners, numerator)
            terms.illumination += stamp_patch(state.illumination_weights(), corners, state.object.shape)
    if for_probe:
        if terms.probe_numerator is None:
            terms.probe_numerator = xp.zeros_like(state.probe)
            terms.probe_weights = xp.zeros(state.frame_shape, real)
        if kernels is not None:
            kernels.accumulate_probe_terms(
                diff, corners, state.object, terms.probe_numerator, terms.probe_weights
            )
        else:
            patches = gather_patches(state.object, corners, state.frame_shape)
            terms.probe_numerator += (patches.conj()[:, None] * diff).sum(axis=0)
            terms.probe_weights += mode_power(patches)
    return terms


def probe_terms_of_every_rank(state: SolverState, terms: UpdateTerms) -> UpdateTerms:
    """``terms``' probe sums summed over the ranks, in place (zero for a rank whose batch was empty)."""
    if terms.probe_numerator is None:
        terms.probe_numerator = state.xp.zeros_like(state.probe)
        terms.probe_weights = state.xp.zeros(state.frame_shape, state.object.real.dtype)
    state.comm.sum_together(terms.probe_numerator, terms.probe_weights)
    return terms


def patch_overlap(state: SolverState, first, second, corners):
    """``sum_j conj(first[patch_j]) * second[patch_j]`` over the patches at ``corners`` of two objects, (h, w).

    ``corners`` (N, 2) are visited in their order.
    """
    kernels = state.backend.kernels
    if kernels is not None:
        overlap = state.xp.zeros(state.frame_shape, second.dtype)
        kernels.accumulate_patch_overlap(first, second, corners, overlap)
        return overlap
    patches = gather_patches(first, corners, state.frame_shape).conj()
    return (patches * gather_patches(second, corners, state.frame_shape)).sum(axis=0)


def regularised_step(numerator, weights, alpha: float):
    """``numerator / ((1 - alpha) * weights + alpha * max(weights))`` (rPIE's preconditioner)."""
    largest = weights.max()
    return numerator / ((1 - alpha) * weights + (alpha + 1e-6) * largest + 1e-30)


def add_regularised_step(target, numerator, weights, alpha: float, step: float, kernels=None) -> None:
    """``target += step * regularised_step(numerator, weights, alpha)``, in place.

    ``target`` and ``numerator`` have the shape of ``weights`` or one more
    leading axis (probe modes). ``kernels``: the compiled kernels, or None
    for the array expression.
    """
    if kernels is not None and target.flags.c_contiguous:
        rows = target.size // weights.size
        kernels.add_regularised_step(
            target.reshape(rows, -1), numerator.reshape(rows, -1), weights.reshape(-1), alpha, step
        )
        return
    target += step * regularised_step(numerator, weights, alpha)


def regularised_step_in(region: CanvasRegion, numerator, weights, alpha: float, kernels=None) -> None:
    """On ``region`` of the canvas: ``numerator`` becomes :func:`regularised_step`, ``weights`` zero, in place.

    The canvas-sized ``numerator`` and ``weights`` are zero outside
    ``region`` (a batch's sums), so the largest weight is the region's.
    ``kernels``: the compiled kernels, or None for the array expression.
    """
    if kernels is not None:
        kernels.regularised_step_in(numerator, weights, region.runs, region.tile, alpha)
        return
    index = region.flat_index(array_module(numerator))
    flat_numerator, flat_weights = numerator.reshape(-1), weights.reshape(-1)
    flat_numerator[index] = regularised_step(flat_numerator[index], flat_weights[index], alpha)
    flat_weights[index] = 0


def add_scaled_in(region: CanvasRegion, target, source, scale: float, kernels=None) -> None:
    """On ``region`` of the canvas: ``target += scale * source``, then ``source`` zero, in place."""
    if kernels is not None:
        kernels.add_scaled_in(target, source, region.runs, region.tile, scale)
        return
    index = region.flat_index(array_module(target))
    flat_target, flat_source = target.reshape(-1), source.reshape(-1)
    flat_target[index] += source.real.dtype.type(scale) * flat_source[index]
    flat_source[index] = 0
