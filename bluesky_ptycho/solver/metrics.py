"""Reconstruction quality: object error, Fourier R-factor, Fourier ring correlation."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.fft

from .backend import fft2
from .data import PtychoData, ReconstructionResult
from .forward import gather_patches, model_amplitude
from .simulate import SimulatedData


def remove_phase_ramp_and_scale(estimate: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``estimate`` times the global complex scale and linear phase ramp that best match ``truth``.

    The ramp is the weighted mean phase difference between neighbouring pixels
    of ``truth * conj(estimate)``; the scale is then the weighted least-squares
    complex factor. Sums accumulate in double precision.
    """
    ratio = weights * truth * np.conj(estimate)
    ramp_y = np.angle(np.sum(ratio[1:] * np.conj(ratio[:-1]), dtype=np.complex128))
    ramp_x = np.angle(np.sum(ratio[:, 1:] * np.conj(ratio[:, :-1]), dtype=np.complex128))
    rows, cols = (
        np.exp(1j * ramp * np.arange(n)).astype(estimate.dtype)
        for ramp, n in zip((ramp_y, ramp_x), estimate.shape, strict=True)
    )
    corrected = estimate * rows[:, None] * cols[None, :]
    scale = np.sum(weights * truth * np.conj(corrected), dtype=np.complex128) / np.sum(
        weights * np.abs(corrected) ** 2, dtype=np.float64
    )
    return corrected * estimate.dtype.type(scale)


MAX_REGISTRATION_SHIFT = 2.0


def registration_shift(reference: np.ndarray, moving: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sub-pixel (rows, columns) translation that moves ``|moving|`` onto ``|reference|``.

    The peak of the amplitudes' cross-correlation within
    ``MAX_REGISTRATION_SHIFT`` pixels, refined by a parabola along each axis.
    """

    def centred(image):
        amplitude = np.abs(image) * weights
        return amplitude - amplitude.sum() / weights.sum() * weights

    correlation = np.fft.ifft2(np.fft.fft2(centred(reference)) * np.conj(np.fft.fft2(centred(moving)))).real
    reach = int(np.ceil(MAX_REGISTRATION_SHIFT))
    offsets = np.arange(-reach, reach + 1)
    window = correlation[np.ix_(offsets % correlation.shape[0], offsets % correlation.shape[1])]
    row, col = np.unravel_index(np.argmax(window), window.shape)
    shift = np.array([offsets[row], offsets[col]], dtype=float)
    for axis, (index, line) in enumerate(((row, window[:, col]), (col, window[row, :]))):
        if 0 < index < len(line) - 1:
            left, centre, right = line[index - 1 : index + 2]
            curvature = left - 2 * centre + right
            if curvature < 0:
                shift[axis] += 0.5 * (left - right) / curvature
    return np.clip(shift, -MAX_REGISTRATION_SHIFT, MAX_REGISTRATION_SHIFT)


def fourier_shift(image: np.ndarray, shift: np.ndarray, spectrum: np.ndarray | None = None) -> np.ndarray:
    """``image`` translated by ``shift`` (rows, columns) pixels, periodically.

    ``spectrum``: ``image``'s 2-D FFT where it is known (a search translating
    one image many times transforms it once). The phase ramp is applied as
    its two separable factors, in the image's precision.
    """
    spectrum = scipy.fft.fft2(image, workers=-1) if spectrum is None else spectrum
    rows, cols = (
        np.exp(-2j * np.pi * np.fft.fftfreq(n) * s).astype(spectrum.dtype)
        for n, s in zip(image.shape, shift, strict=True)
    )
    return scipy.fft.ifft2(spectrum * rows[:, None] * cols[None, :], workers=-1).astype(
        image.dtype, copy=False
    )


def object_error_arrays(estimate: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> float:
    """Relative weighted error ``|c e^{i ramp} T(estimate) - truth| / |truth|``.

    ``T`` is the global sub-pixel translation (at most ``MAX_REGISTRATION_SHIFT``
    pixels, started from the best of the amplitudes' cross-correlation peak
    and every whole-pixel shift, then refined to minimise the error) that
    registers the estimate, ``c`` the best global
    complex scale and ``ramp`` the best linear phase ramp: object and probe
    can drift together by a translation, and the object's scale and phase
    ramp are not determined by the data.
    """
    import scipy.optimize  # 0.4 s to import: here, not in every CLI call

    if estimate.shape != truth.shape or weights.shape != truth.shape:
        raise ValueError(
            f"shapes differ: estimate {estimate.shape}, truth {truth.shape}, weights {weights.shape}"
        )

    real = np.result_type(estimate.real.dtype, truth.real.dtype, np.float32)
    # single precision where the arrays are (sums in double): each step of the search is one inverse FFT
    estimate = estimate.astype(np.result_type(real, np.complex64), copy=False)
    weights = weights.astype(real)
    spectrum = scipy.fft.fft2(estimate, workers=-1)
    norm = np.sum(weights * np.abs(truth) ** 2, dtype=np.float64)

    def error(shift: np.ndarray) -> float:
        shift = np.clip(shift, -MAX_REGISTRATION_SHIFT, MAX_REGISTRATION_SHIFT)
        corrected = remove_phase_ramp_and_scale(fourier_shift(estimate, shift, spectrum), truth, weights)
        return float(np.sqrt(np.sum(weights * np.abs(corrected - truth) ** 2, dtype=np.float64) / norm))

    reach = int(np.ceil(MAX_REGISTRATION_SHIFT))
    # a weak-phase object's amplitudes hardly vary: their peak can lie pixels from the object's
    whole = itertools.product(range(-reach, reach + 1), repeat=2)
    start = min([registration_shift(truth, estimate, weights), *map(np.array, whole)], key=error)
    best = scipy.optimize.minimize(error, start, method="Nelder-Mead", options={"xatol": 0.01, "fatol": 1e-6})
    return min(best.fun, error(start))


def object_error(result: ReconstructionResult, simulated: SimulatedData, threshold: float = 0.1) -> float:
    """Object error of a reconstruction of simulated data, over the illuminated region.

    See :func:`object_error_arrays` for the ambiguities removed first.

    The reconstructed object is placed on the true object's grid by the two
    origins (pixels outside the reconstructed canvas count as 1); pixels whose
    illumination is at least ``threshold`` of its maximum count.
    """
    py, px = result.pixel_size
    shift = (np.asarray(simulated.object_origin) - np.asarray(result.object_origin))[::-1] / (py, px)
    estimate = crop(result.object, np.rint(shift).astype(int), simulated.true_object.shape)
    illumination = simulated.illumination()
    weights = (illumination >= threshold * illumination.max()).astype(float)
    return object_error_arrays(estimate, simulated.true_object, weights)


def crop(image: np.ndarray, corner: np.ndarray, shape: tuple[int, int], fill: complex = 1.0) -> np.ndarray:
    """``image[r:r + h, c:c + w]`` for ``corner = (r, c)``, filling what lies outside ``image``."""
    out = np.full(shape, fill, dtype=image.dtype)
    top, left = (int(v) for v in corner)
    rows = slice(max(top, 0), min(top + shape[0], image.shape[0]))
    cols = slice(max(left, 0), min(left + shape[1], image.shape[1]))
    if rows.start < rows.stop and cols.start < cols.stop:
        out[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = image[rows, cols]
    return out


def position_error(
    positions: np.ndarray, true_positions: np.ndarray, pixel_size: tuple[float, float]
) -> float:
    """RMS distance in sample pixels between (N, 2) (x, y) ``positions`` and the true ones, in metres.

    Their mean difference is removed first: a translation of every position
    together only moves the reconstructed object, which the data cannot tell.
    """
    py, px = pixel_size
    difference = (np.asarray(positions) - np.asarray(true_positions)) / (px, py)
    difference -= difference.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(difference**2, axis=1))))


def fourier_r_factor(result: ReconstructionResult, data: PtychoData, batch: int = 256) -> float:
    """Amplitude R-factor ``sum | |F psi| - sqrt(I) | / sum sqrt(I)`` over good pixels.

    Uses the result's object, probe and refined positions.
    """
    misfit, total = fourier_r_factor_sums(result, data, batch)
    return misfit / total


def fourier_r_factor_sums(
    result: ReconstructionResult, data: PtychoData, batch: int = 256
) -> tuple[float, float]:
    """The R-factor's numerator and denominator over ``data``'s frames (what ranks of one scan add up)."""
    py, px = result.pixel_size
    pixels = (result.positions - np.asarray(result.object_origin))[:, ::-1] / (py, px)
    corners = np.rint(pixels).astype(np.int64)
    limit = np.array(result.object.shape) - result.probe.shape[-2:]
    corners = np.clip(corners, 0, limit)
    mask = np.ones(data.geometry.frame_shape, bool) if data.mask is None else data.mask
    mask = np.fft.ifftshift(mask)
    misfit = total = 0.0
    for start in range(0, len(data), batch):
        stop = min(start + batch, len(data))
        patches = gather_patches(result.object, corners[start:stop], result.probe.shape[-2:])
        model = model_amplitude(fft2(result.frame_probes(slice(start, stop)) * patches[:, None]))
        if result.frame_scales is not None:
            model *= result.frame_scales[start:stop, None, None]
        measured = np.sqrt(np.fft.ifftshift(data.frames[start:stop], axes=(-2, -1)))
        misfit += float(np.sum(np.abs(model - measured) * mask))
        total += float(np.sum(measured * mask))
    return misfit, total


def fourier_ring_correlation(
    a: np.ndarray, b: np.ndarray, n_bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two images of the same shape.

    Returns
    -------
    frequency
        Ring centres as a fraction of the Nyquist frequency (0..1].
    frc
        Correlation in each ring (1: identical up to noise).
    """
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    fa = np.fft.fftshift(np.fft.fft2(a))
    fb = np.fft.fftshift(np.fft.fft2(b))
    y, x = np.indices(a.shape)
    radius = np.hypot((y - a.shape[0] // 2) / (a.shape[0] / 2), (x - a.shape[1] // 2) / (a.shape[1] / 2))
    n_bins = n_bins or min(a.shape) // 2
    ring = np.minimum((radius * n_bins).astype(int), n_bins)
    cross = np.bincount(ring.ravel(), (fa * np.conj(fb)).real.ravel(), n_bins + 1)
    power_a = np.bincount(ring.ravel(), (np.abs(fa) ** 2).ravel(), n_bins + 1)
    power_b = np.bincount(ring.ravel(), (np.abs(fb) ** 2).ravel(), n_bins + 1)
    frc = cross / np.sqrt(power_a * power_b + 1e-30)
    frequency = (np.arange(n_bins) + 0.5) / n_bins
    return frequency, frc[:n_bins]
