"""The far-field ptychography forward model and its adjoint, batched over frames.

A frame ``j`` sees the object patch whose top-left pixel is ``corners[j]``;
its exit wave for probe mode ``m`` is ``probe[m] * patch_j`` and the detector
records ``sum_m |F(probe[m] * patch_j)|^2`` with ``F`` the orthonormal 2-D FFT.
Diffraction amplitudes are stored with the zero frequency at index 0 so no
``fftshift`` is needed inside an iteration.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from .backend import (
    ArrayBackend,
    array_module,
    empty_aligned,
    irfft2,
    rfft2,
    scatter_add,
    sliding_windows,
)
from .data import ProbeVariation, kernel_variation

AMPLITUDE_FLOOR = 1e-6


def gather_patches(obj, corners, shape: tuple[int, int]):
    """Copy the object patches of the given top-left ``corners``, shape (B, h, w).

    ``corners`` is an integer (B, 2) array of (row, column) on the array
    module of ``obj``.
    """
    return sliding_windows(obj, shape)[corners[:, 0], corners[:, 1]]


def patch_flat_index(corners, shape: tuple[int, int], object_width: int):
    """Flat indices into the object of every pixel of every patch, (B, h, w)."""
    xp = array_module(corners)
    h, w = shape
    offsets = xp.arange(h)[:, None] * object_width + xp.arange(w)[None, :]
    starts = corners[:, 0] * object_width + corners[:, 1]
    return starts[:, None, None] + offsets[None]


def scatter_patches(target, corners, patches) -> None:
    """Add each patch into ``target`` at its corner, in place (adjoint of gather)."""
    index = patch_flat_index(corners, patches.shape[-2:], target.shape[1])
    scatter_add(target, index, patches)


def stamp_patch(patch, corners, canvas_shape: tuple[int, int]):
    """``sum_j`` of one real ``patch`` placed at every corner: a canvas-sized real array.

    Computed as the FFT convolution of the corners' count image with the
    patch, which is much cheaper than scattering B copies of it. Corners keep
    every patch inside the canvas, so the circular convolution does not wrap.
    """
    xp = array_module(patch)
    fft_shape = tuple(scipy.fft.next_fast_len(int(n), real=True) for n in canvas_shape)
    counts = xp.zeros(fft_shape, dtype=patch.dtype)
    scatter_add(counts, corners[:, 0] * fft_shape[1] + corners[:, 1], xp.ones(len(corners), patch.dtype))
    kernel = xp.zeros(fft_shape, dtype=patch.dtype)
    kernel[: patch.shape[0], : patch.shape[1]] = patch
    stamped = irfft2(rfft2(counts) * rfft2(kernel), fft_shape)[: canvas_shape[0], : canvas_shape[1]]
    return xp.ascontiguousarray(stamped, dtype=patch.dtype)


def exit_waves(probe, patches, variation: ProbeVariation | None = None):
    """Exit waves (B, modes, h, w) of every probe mode on every patch; the first mode changed by ``variation``, if given."""
    waves = probe[None, :, :, :] * patches[:, None, :, :]
    if variation is not None:
        waves[:, 0] += variation.frames() * patches
    return waves


def exit_waves_at(obj, corners, probe, out=None, kernels=None, variation: ProbeVariation | None = None):
    """Exit waves (B, modes, h, w) of every probe mode on the object patches at ``corners``.

    ``out``, if given, is a C-contiguous array of that shape and the probe's
    dtype to write them into (saves allocating it again each iteration).
    ``kernels``: the compiled kernels to use (an :class:`ArrayBackend`'s), or
    None for the array expressions. ``variation``: each frame's change
    ``V_j`` of the first probe mode (a probe varying frame by frame), or None.
    """
    if kernels is not None:
        if out is None:
            out = empty_aligned((len(corners), *probe.shape), probe.dtype)
        kernels.exit_waves(obj, corners, probe, *kernel_variation(variation, len(corners), probe), out)
        return out
    patches = gather_patches(obj, corners, probe.shape[-2:])
    waves = exit_waves(probe, patches, variation)
    if out is None:
        return waves
    out[...] = waves
    return out


def model_amplitude(farfield):
    """Modelled detector amplitude ``sqrt(sum_m |farfield_m|^2)``, (B, h, w)."""
    xp = array_module(farfield)
    if farfield.shape[1] == 1:
        return xp.abs(farfield[:, 0])
    intensity = xp.sum(farfield.real**2 + farfield.imag**2, axis=1)
    return xp.sqrt(intensity, out=intensity)


def amplitude_misfit(model_amp, amplitude, mask=None) -> float:
    """Sum over good pixels of (modelled - measured amplitude)^2."""
    xp = array_module(model_amp)
    residual = model_amp - amplitude
    if mask is not None:
        residual *= mask
    return float(xp.vdot(residual.ravel(), residual.ravel()).real)


def measured_amplitude_factor(model_amp, amplitude, mask=None, noise_model: str = "gaussian"):
    """Factor (B, h, w) that moves modelled far-field amplitudes towards the measured ones.

    "gaussian": ``sqrt(I) / a``, replacing the modelled amplitude ``a`` by the
    measured one (the amplitude projection). "poisson": one Newton step of the
    Poisson negative log-likelihood ``sum a^2 - I log a^2`` in ``a``, i.e.
    ``2 I / (I + a^2)``, which equals the projection to first order near
    convergence and never more than doubles an amplitude. Bad pixels (``mask``
    False) get 1: they keep the modelled far field.
    """
    xp = array_module(model_amp)
    if noise_model == "poisson":
        measured = amplitude**2
        factor = 2 * measured / (measured + model_amp**2 + AMPLITUDE_FLOOR)
    else:
        factor = amplitude / (model_amp + AMPLITUDE_FLOOR)
    if mask is not None:
        factor = xp.where(mask, factor, xp.float32(1.0))
    return factor


def kernel_mask(mask, shape: tuple[int, int], dtype):
    """The mask as the compiled kernels take it: real, 1 for good pixels, 0 for bad."""
    return np.ones(shape, dtype) if mask is None else mask.astype(dtype)


def fourier_change(
    farfield, amplitude, mask=None, noise_model: str = "gaussian", model_photons=None, kernels=None
) -> float:
    """Replace far fields by the change the measured amplitudes ask for, in place.

    Parameters
    ----------
    farfield
        (B, modes, h, w) complex far fields ``F``, replaced by
        ``(factor - 1) * F`` with the factor of
        :func:`measured_amplitude_factor`: the projected minus the modelled far field.
    amplitude
        (B, h, w) square roots of the measured counts, FFT order.
    mask
        Optional (h, w) boolean in FFT order, True where the pixel is good.
    noise_model
        "gaussian" or "poisson".
    model_photons
        Optional (B,) array filled with the photons each far field puts in
        the good pixels, before the change.
    kernels
        The compiled kernels to use, or None for the array expressions.

    Returns
    -------
    The amplitude misfit of the far fields before the change.
    """
    if kernels is not None:
        mask = kernel_mask(mask, farfield.shape[-2:], amplitude.dtype)
        photons = np.empty(0) if model_photons is None else model_photons
        return kernels.fourier_change(farfield, amplitude, mask, noise_model == "poisson", photons)
    if model_photons is not None:
        model_photons[...] = good_photons(farfield, mask)
    model_amp = model_amplitude(farfield)
    cost = amplitude_misfit(model_amp, amplitude, mask)
    farfield *= (measured_amplitude_factor(model_amp, amplitude, mask, noise_model) - 1)[:, None]
    return cost


def exit_wave_update(
    backend: ArrayBackend,
    probe,
    obj,
    corners,
    amplitude,
    mask=None,
    noise_model: str = "gaussian",
    model_photons=None,
    variation=None,
):
    """Propagate, apply the measured moduli and back-propagate, with ``backend``'s FFTs and kernels.

    ``amplitude`` (B, h, w) holds the measured amplitudes of the B patches at
    ``corners``; see :func:`fourier_change` for the other parameters.
    ``model_photons``, if given, a (B,) array filled with the photons each
    modelled far field puts in the good pixels. ``variation``, if given,
    each frame's change of the first probe mode (:mod:`.variable_probe`).

    Returns
    -------
    difference
        (B, modes, h, w) change of the exit waves that the data ask for
        (projected minus modelled exit wave).
    cost
        The amplitude misfit of the modelled exit waves.
    """
    waves = exit_waves_at(obj, corners, probe, kernels=backend.kernels, variation=variation)
    return fourier_step(backend, waves, amplitude, mask, noise_model, model_photons)


def fourier_step(
    backend: ArrayBackend, waves, amplitude, mask=None, noise_model: str = "gaussian", model_photons=None
):
    """The change (B, modes, h, w) the measured ``amplitude`` asks of the exit ``waves``, and their misfit.

    ``waves`` is overwritten; the other parameters as for :func:`exit_wave_update`.
    """
    farfield = backend.fft2(waves, overwrite_x=True)
    cost = fourier_change(farfield, amplitude, mask, noise_model, model_photons, backend.kernels)
    return backend.ifft2(farfield, overwrite_x=True), cost


def good_photons(farfield, mask=None):
    """Photons ``sum_m |farfield_m|^2`` in the good pixels (``mask``, FFT order) of each frame, (B,)."""
    intensity = (farfield.real**2 + farfield.imag**2).sum(axis=1)
    if mask is not None:
        intensity *= mask
    return intensity.sum(axis=(-2, -1))


def gaussian_cost(backend: ArrayBackend, obj, probe, corners, amplitude, mask=None) -> float:
    """Amplitude (Gaussian-noise) cost ``sum (|F psi| - sqrt(I))^2`` of a model."""
    farfield = backend.fft2(exit_waves_at(obj, corners, probe, kernels=backend.kernels), overwrite_x=True)
    return amplitude_misfit(model_amplitude(farfield), amplitude, mask)
