"""The far-field ptychography forward model and its adjoint, batched over frames.

A frame ``j`` sees the object patch whose top-left pixel is ``corners[j]``;
its exit wave for probe mode ``m`` is ``probe[m] * patch_j`` and the detector
records ``sum_m |F(probe[m] * patch_j)|^2`` with ``F`` the orthonormal 2-D FFT.
Diffraction amplitudes are stored with the zero frequency at index 0 so no
``fftshift`` is needed inside an iteration.
"""

from __future__ import annotations

import scipy.fft

from .backend import array_module, fft2, ifft2, irfft2, rfft2, scatter_add, sliding_windows

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


def exit_waves(probe, patches):
    """Exit waves (B, modes, h, w) of every probe mode on every patch."""
    return probe[None, :, :, :] * patches[:, None, :, :]


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


def apply_measured_amplitude(
    farfield, model_amp, amplitude, mask=None, noise_model: str = "gaussian"
) -> None:
    """Move far fields (B, modes, h, w) in place towards the measured amplitudes.

    "gaussian": replace the modelled amplitude ``a`` by the measured one
    ``sqrt(I)`` (the amplitude projection). "poisson": one Newton step of the
    Poisson negative log-likelihood ``sum a^2 - I log a^2`` in ``a``, i.e. a
    factor ``2 I / (I + a^2)``, which equals the projection to first order
    near convergence and never more than doubles an amplitude. Bad pixels
    (``mask`` False) keep the modelled far field.
    """
    xp = array_module(farfield)
    if noise_model == "poisson":
        measured = amplitude**2
        factor = 2 * measured / (measured + model_amp**2 + AMPLITUDE_FLOOR)
    else:
        factor = amplitude / (model_amp + AMPLITUDE_FLOOR)
    if mask is not None:
        factor = xp.where(mask, factor, xp.float32(1.0))
    farfield *= factor[:, None]


def modulus_projection(farfield, amplitude, mask=None, noise_model: str = "gaussian") -> float:
    """Replace the far-field amplitudes by the measured ones, in place.

    Parameters
    ----------
    farfield
        (B, modes, h, w) complex far fields, modified in place.
    amplitude
        (B, h, w) square roots of the measured counts, FFT order.
    mask
        Optional (h, w) boolean in FFT order, True where the pixel is good.
    noise_model
        "gaussian" or "poisson", see :func:`apply_measured_amplitude`.

    Returns
    -------
    The amplitude misfit of the far fields before the projection.
    """
    model_amp = model_amplitude(farfield)
    cost = amplitude_misfit(model_amp, amplitude, mask)
    apply_measured_amplitude(farfield, model_amp, amplitude, mask, noise_model)
    return cost


def exit_wave_update(probe, patches, amplitude, mask=None, workers=None, noise_model: str = "gaussian"):
    """Propagate, apply the measured moduli and back-propagate.

    Returns
    -------
    difference
        (B, modes, h, w) change of the exit waves that the data ask for
        (projected minus modelled exit wave).
    cost
        The modulus misfit of the modelled exit waves (see
        :func:`modulus_projection`).
    """
    psi = exit_waves(probe, patches)
    farfield = fft2(psi, workers=workers)
    cost = modulus_projection(farfield, amplitude, mask, noise_model)
    projected = ifft2(farfield, workers=workers, overwrite_x=True)
    projected -= psi
    return projected, cost


def gaussian_cost(obj, probe, corners, amplitude, mask=None, workers=None) -> float:
    """Amplitude (Gaussian-noise) cost ``sum (|F psi| - sqrt(I))^2`` of a model."""
    patches = gather_patches(obj, corners, probe.shape[-2:])
    farfield = fft2(exit_waves(probe, patches), workers=workers)
    return amplitude_misfit(model_amplitude(farfield), amplitude, mask)
