"""Compiled CPU kernels: the solver's element-wise and patch work fused into single passes.

Each function here does, for NumPy arrays, in one pass over memory what the
array expressions beside it (in :mod:`.forward`, :mod:`.updates`, :mod:`.dm`
and :mod:`.lsqml`) do in several; those expressions stay the definition, run
on CuPy, and the tests hold the two to the same numbers. Compiled with numba
on first use and cached on disk; they release the GIL.

Shapes: ``B`` frames of a batch, ``M`` probe modes, ``h x w`` frames.
``corners`` are (B, 2) integer (row, column) of each patch's top-left pixel;
``mask`` is an (h, w) real array, 1 for good pixels and 0 for bad ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np
from numba.core.caching import CacheImpl, UserProvidedCacheLocator

from .backend import USER_CACHE
from .forward import AMPLITUDE_FLOOR


class _UserCacheLocator(UserProvidedCacheLocator):
    """numba's disk cache for these kernels, kept in the user's cache directory.

    numba would otherwise write it into ``__pycache__`` beside this file,
    inside the installed package, where an uninstall leaves it behind and
    the stale folder shadows a later (editable) install of the package.
    """

    directory = USER_CACHE / "numba"

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(self.directory, self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve() != Path(__file__).resolve():
            return None  # numba's own locators serve everybody else's code
        return super(UserProvidedCacheLocator, cls).from_function(py_func, py_file)


if _UserCacheLocator not in CacheImpl._locator_classes:
    CacheImpl._locator_classes.insert(0, _UserCacheLocator)

# reassociation lets sums vectorise; no "nnan"/"ninf", so a diverging
# reconstruction still shows up as NaN in the cost
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_compile = numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
# a helper called inside a kernel's loops: inlined into numba's IR, where a call kept the
# rows' loops from vectorising (60 frames of 128², one eigen-probe: 1.6x the time of inline code)
_inline = numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy", inline="always")
# single-precision constants keep single-precision data in single precision
# (a Python literal would promote it to double); double data stays double
_ONE = np.float32(1)
_TWO = np.float32(2)
_FLOOR = np.float32(AMPLITUDE_FLOOR)
# a float16's bits moved into a float32's (<< 13) give its value times 2**-112, subnormals included
_HALF_BITS_TO_SINGLE = np.float32(2.0**112)
# and back: a float32 at or above float16's smallest normal, its exponent lowered by 112, holds
# the float16's bits 13 places up; below it a float16 is a whole number of its smallest subnormals
_SINGLE_TO_HALF_EXPONENT = np.uint32(112 << 23)
_SMALLEST_NORMAL_HALF = np.float32(2.0**-14)
_HALF_SUBNORMALS = np.float32(2.0**24)
_HALF_INFINITY = np.uint32(0x7C00)


@_compile
def _mode_power(modes, dtype):
    """``sum_m |modes_m|^2`` of (M, h, w) complex modes, (h, w) of ``dtype``."""
    n_modes, h, w = modes.shape
    power = np.zeros((h, w), dtype=dtype)
    for m in range(n_modes):
        for y in range(h):
            for x in range(w):
                power[y, x] += modes[m, y, x].real ** 2 + modes[m, y, x].imag ** 2
    return power


@_inline
def _first_mode_row(probe_row, weights, eigen_probes, j, y, out):
    """``out = probe_row + sum_k weights[j, k] * eigen_probes[k, y]``: row ``y`` of frame ``j``'s first probe mode (K >= 1)."""
    weight = weights[j, 0]
    eigen_row = eigen_probes[0, y]
    for x in range(out.shape[0]):
        out[x] = probe_row[x] + weight * eigen_row[x]
    for k in range(1, eigen_probes.shape[0]):
        weight = weights[j, k]
        eigen_row = eigen_probes[k, y]
        for x in range(out.shape[0]):
            out[x] += weight * eigen_row[x]


@_inline
def _exit_wave_rows(patch_row, probe, weights, eigen_probes, j, y, first, out):
    """Row ``y`` of frame ``j``'s exit waves, every mode: ``out[j, m, y] = P_jm[y] * patch_row``.

    ``first``: a row's room for the first mode plus the frame's variation
    (:func:`exit_waves`), formed where there are eigen-probes.
    """
    for m in range(probe.shape[0]):
        out_row = out[j, m, y]
        if m == 0 and eigen_probes.shape[0] > 0:
            _first_mode_row(probe[m, y], weights, eigen_probes, j, y, first)
            for x in range(out_row.shape[0]):
                out_row[x] = first[x] * patch_row[x]
        else:
            probe_row = probe[m, y]
            for x in range(out_row.shape[0]):
                out_row[x] = probe_row[x] * patch_row[x]


@_compile
def exit_waves(obj, corners, probe, weights, eigen_probes, out):
    """``out[j, m] = P_jm * obj[patch_j]``: exit waves, (B, M, h, w).

    ``P_jm = probe[m]``, the first mode plus frame ``j``'s variation
    ``V_j = sum_k weights[j, k] * eigen_probes[k]`` ((B, K) ``weights``,
    (K, h, w) ``eigen_probes``; K = 0: none), formed row by row by
    :func:`_first_mode_row`.
    """
    h, w = probe.shape[1:]
    first = np.empty(w, dtype=probe.dtype)
    for j in range(corners.shape[0]):
        r, c = corners[j, 0], corners[j, 1]
        for y in range(h):
            _exit_wave_rows(obj[r + y, c : c + w], probe, weights, eigen_probes, j, y, first, out)


@_compile
def subpixel_exit_waves(obj, corners, offsets, probe, weights, eigen_probes, out):
    """:func:`exit_waves` of patches moved by ``offsets`` (B, 2 px) to first order (:func:`.positions.subpixel_exit_waves`).

    Each patch pixel is ``obj + offsets[j, 0] dO/drow + offsets[j, 1] dO/dcolumn``,
    the object's central differences read around each patch.
    """
    h, w = probe.shape[1:]
    first = np.empty(w, dtype=probe.dtype)
    patch_row = np.empty(w, dtype=obj.dtype)
    half = obj.real.dtype.type(0.5)
    for j in range(corners.shape[0]):
        r, c = corners[j, 0], corners[j, 1]
        along_rows, along_cols = offsets[j, 0] * half, offsets[j, 1] * half
        for y in range(h):
            above, here, below = (
                obj[r + y - 1, c : c + w],
                obj[r + y, c - 1 : c + w + 1],
                obj[r + y + 1, c : c + w],
            )
            for x in range(w):
                patch_row[x] = (
                    here[x + 1] + along_rows * (below[x] - above[x]) + along_cols * (here[x + 2] - here[x])
                )
            _exit_wave_rows(patch_row, probe, weights, eigen_probes, j, y, first, out)


@_compile
def rotate_modes(waves, rotation):
    """``waves[:, k] = sum_m rotation[m, k] waves[:, m]`` for (B, M, h, w) waves, in place."""
    n_frames, n_modes, h, w = waves.shape
    mixed = np.empty((n_modes, h, w), dtype=waves.dtype)
    for j in range(n_frames):
        mixed[:] = 0
        for k in range(n_modes):
            for m in range(n_modes):
                weight = rotation[m, k]
                for y in range(h):
                    source = waves[j, m, y]
                    target = mixed[k, y]
                    for x in range(w):
                        target[x] += weight * source[x]
        waves[j] = mixed


@_compile
def fourier_change(farfield, amplitude, mask, poisson, model_photons):
    """Turn far fields into the change the measured amplitudes ask for, in place.

    ``farfield`` (B, M, h, w) becomes ``(factor - 1) * farfield`` with the
    factor of the noise model (see :func:`.forward.fourier_change`);
    ``amplitude[j]`` is frame j's measured amplitude. Returns the
    amplitude misfit ``sum mask * (|farfield| - amplitude)^2`` before the change.
    ``model_photons``: (B,) filled with ``sum mask * |farfield|^2`` of each
    frame before the change, or empty (0,) where not wanted.
    """
    n_frames, n_modes, h, w = farfield.shape
    power = np.empty(w, dtype=amplitude.dtype)
    change = np.empty(w, dtype=amplitude.dtype)
    cost = 0.0
    for j in range(n_frames):
        measured = amplitude[j]
        photons = 0.0
        for y in range(h):
            power[:] = 0
            for m in range(n_modes):
                row = farfield[j, m, y]
                for x in range(w):
                    power[x] += row[x].real * row[x].real + row[x].imag * row[x].imag
            row_cost = _ONE - _ONE
            row_photons = _ONE - _ONE
            for x in range(w):
                residual = np.sqrt(power[x]) - measured[y, x]
                row_cost += mask[y, x] * residual * residual
                row_photons += mask[y, x] * power[x]
            photons += row_photons
            if poisson:
                for x in range(w):
                    intensity = measured[y, x] * measured[y, x]
                    change[x] = mask[y, x] * (_TWO * intensity / (intensity + power[x] + _FLOOR) - _ONE)
            else:
                for x in range(w):
                    change[x] = mask[y, x] * (measured[y, x] / (np.sqrt(power[x]) + _FLOOR) - _ONE)
            cost += row_cost
            for m in range(n_modes):
                row = farfield[j, m, y]
                for x in range(w):
                    row[x] *= change[x]
        if model_photons.shape[0]:
            model_photons[j] = photons
    return cost


@_compile
def accumulate_object_terms(diff, corners, probe, weights, eigen_probes, numerator, illumination):
    """Add ``sum_m conj(P_jm) diff_jm`` and ``sum_m |probe_m|^2`` at every patch, in place.

    ``P_jm`` as in :func:`exit_waves`; the illumination is the shared probe's.
    """
    n_frames, n_modes, h, w = diff.shape
    power = _mode_power(probe, illumination.dtype)
    conj_probe = np.conj(probe)
    varies = eigen_probes.shape[0] > 0
    first = np.empty(w, dtype=probe.dtype)
    for j in range(n_frames):
        r, c = corners[j, 0], corners[j, 1]
        for y in range(h):
            numerator_row = numerator[r + y, c : c + w]
            illumination_row = illumination[r + y, c : c + w]
            power_row = power[y]
            for x in range(w):
                illumination_row[x] += power_row[x]
            if varies:
                _first_mode_row(probe[0, y], weights, eigen_probes, j, y, first)
                diff_row = diff[j, 0, y]
                for x in range(w):
                    numerator_row[x] += np.conj(first[x]) * diff_row[x]
            for m in range(1 if varies else 0, n_modes):
                diff_row = diff[j, m, y]
                probe_row = conj_probe[m, y]
                for x in range(w):
                    numerator_row[x] += probe_row[x] * diff_row[x]


@_compile
def probe_change_sums(obj, corners, chi, alpha, eigen_probes, weights, gain):
    """``p_jk = Re<U_k, R_j>``, ``sum_j R_j`` and ``sum_j (weights[j] + p_j @ gain)_k R_j``, frame by frame.

    See :func:`.variable_probe.probe_change_sums`; each ``R_j`` lives in one frame's scratch.
    """
    n_frames, _, h, w = chi.shape
    n_eigen = eigen_probes.shape[0]
    keep = obj.real.dtype.type(1 - alpha)
    power = np.empty((h, w), dtype=obj.real.dtype)
    change = np.empty((h, w), dtype=chi.dtype)
    projections = np.zeros((n_frames, n_eigen))
    total = np.zeros((h, w), dtype=chi.dtype)
    by_new = np.zeros((n_eigen, h, w), dtype=chi.dtype)
    # the largest |O|^2 column by column: a running maximum of each row's pixels would not vectorise
    largest_in_column = np.empty(w, dtype=obj.real.dtype)
    for j in range(n_frames):
        r, c = corners[j, 0], corners[j, 1]
        largest_in_column[:] = 0
        for y in range(h):
            patch_row = obj[r + y, c : c + w]
            power_row = power[y]
            for x in range(w):
                power_row[x] = patch_row[x].real * patch_row[x].real + patch_row[x].imag * patch_row[x].imag
                largest_in_column[x] = max(largest_in_column[x], power_row[x])
        largest = largest_in_column.max()
        floor = obj.real.dtype.type((alpha + 1e-6) * largest + 1e-30)
        for y in range(h):
            patch_row = obj[r + y, c : c + w]
            power_row = power[y]
            chi_row = chi[j, 0, y]
            change_row = change[y]
            total_row = total[y]
            for x in range(w):
                change_row[x] = np.conj(patch_row[x]) * chi_row[x] * (_ONE / (keep * power_row[x] + floor))
                total_row[x] += change_row[x]
            for k in range(n_eigen):
                eigen_row = eigen_probes[k, y]
                along = _ONE - _ONE
                for x in range(w):
                    along += eigen_row[x].real * change_row[x].real + eigen_row[x].imag * change_row[x].imag
                projections[j, k] += along
        for k in range(n_eigen):
            coefficient = weights[j, k]
            for m in range(n_eigen):
                coefficient += weights.dtype.type(projections[j, m] * gain[m, k])
            for y in range(h):
                change_row = change[y]
                sum_row = by_new[k, y]
                for x in range(w):
                    sum_row[x] += coefficient * change_row[x]
    return projections, total, by_new


@_compile
def accumulate_probe_terms(diff, corners, obj, numerator, weights):
    """Add ``sum_j conj(obj[patch_j]) diff_jm`` and ``sum_j |obj[patch_j]|^2``, in place."""
    n_frames, n_modes, h, w = diff.shape
    for j in range(n_frames):
        r, c = corners[j, 0], corners[j, 1]
        for y in range(h):
            patch_row = obj[r + y, c : c + w]
            weights_row = weights[y]
            for x in range(w):
                weights_row[x] += patch_row[x].real ** 2 + patch_row[x].imag ** 2
            for m in range(n_modes):
                diff_row = diff[j, m, y]
                numerator_row = numerator[m, y]
                for x in range(w):
                    numerator_row[x] += np.conj(patch_row[x]) * diff_row[x]


@_compile
def accumulate_patch_overlap(first, second, corners, overlap):
    """Add ``sum_j conj(first[patch_j]) * second[patch_j]`` to ``overlap`` (h, w), in place."""
    h, w = overlap.shape
    for j in range(corners.shape[0]):
        r, c = corners[j, 0], corners[j, 1]
        for y in range(h):
            first_row = first[r + y, c : c + w]
            second_row = second[r + y, c : c + w]
            overlap_row = overlap[y]
            for x in range(w):
                overlap_row[x] += np.conj(first_row[x]) * second_row[x]


@_compile
def add_regularised_step(target, numerator, weights, alpha, step):
    """``target += step * numerator / ((1 - alpha) * weights + alpha * max(weights))``, in place.

    ``target`` and ``numerator`` are (K, n) and ``weights`` (n,): every row
    shares the weights (the probe modes), or K = 1 (the object).
    """
    largest = weights.max()
    spread = weights.dtype.type(1 - alpha)
    floor = weights.dtype.type((alpha + 1e-6) * largest + 1e-30)
    scale = weights.dtype.type(step)
    for k in range(target.shape[0]):
        for i in range(target.shape[1]):
            target[k, i] += numerator[k, i] * (scale / (spread * weights[i] + floor))


@_compile
def _run_rows(runs, k, tile, n_rows):
    """First and last (exclusive) canvas rows of run ``k`` of a :class:`~.regions.CanvasRegion`."""
    top = runs[k, 0] * tile
    return top, min(top + tile, n_rows)


# the largest weight may reorder its comparisons (it vectorises so): the
# weights are sums of |P|^2 and |O|^2, never NaN unless the sums already are
@numba.njit(cache=True, nogil=True, fastmath=True)
def _largest_in(weights, runs, tile):
    """The largest of the non-negative ``weights`` on the region ``runs``."""
    largest = weights.dtype.type(0)
    for k in range(runs.shape[0]):
        top, bottom = _run_rows(runs, k, tile, weights.shape[0])
        for y in range(top, bottom):
            row = weights[y]
            for x in range(runs[k, 1], runs[k, 2]):
                largest = max(largest, row[x])
    return largest


@_compile
def regularised_step_in(numerator, weights, runs, tile, alpha):
    """On the region ``runs``: ``numerator`` becomes its regularised step, ``weights`` zero, in place.

    The step is ``numerator / ((1 - alpha) * weights + alpha * max(weights))``,
    the maximum taken over the region (the weights are zero elsewhere).
    """
    spread = weights.dtype.type(1 - alpha)
    floor = weights.dtype.type((alpha + 1e-6) * _largest_in(weights, runs, tile) + 1e-30)
    for k in range(runs.shape[0]):
        top, bottom = _run_rows(runs, k, tile, weights.shape[0])
        for y in range(top, bottom):
            numerator_row = numerator[y]
            weights_row = weights[y]
            for x in range(runs[k, 1], runs[k, 2]):
                numerator_row[x] *= _ONE / (spread * weights_row[x] + floor)
                weights_row[x] = 0


@_compile
def add_scaled_in(target, source, runs, tile, scale):
    """On the region ``runs``: ``target += scale * source``, then ``source`` zero, in place."""
    factor = source.real.dtype.type(scale)
    for k in range(runs.shape[0]):
        top, bottom = _run_rows(runs, k, tile, target.shape[0])
        for y in range(top, bottom):
            target_row = target[y]
            source_row = source[y]
            for x in range(runs[k, 1], runs[k, 2]):
                target_row[x] += factor * source_row[x]
                source_row[x] = 0


@_inline
def _difference_map_row(model, y, stored, stored_y, out, out_y, measured, good, keep, relaxation, buffers):
    """Row ``y`` of a frame's difference-map update: rows ``out_y`` of ``out`` from ``model``'s and ``stored``'s.

    ``model``, ``stored`` and ``out`` are (modes, rows, w), C-contiguous (each
    row is then too, and the loops vectorise); ``out`` may be either of the
    others (each number is read before it is written). ``buffers`` (4, w)
    of the amplitudes' type. Returns the row's amplitude misfit and its
    model's photons in the good pixels.
    """
    model_power, reflected_power, reflected_factor, model_factor = (
        buffers[0],
        buffers[1],
        buffers[2],
        buffers[3],
    )
    n_modes, _, w = model.shape
    model_power[:] = 0
    reflected_power[:] = 0
    for m in range(n_modes):
        model_row = model[m, y]
        stored_row = stored[m, stored_y]
        for x in range(w):
            f = model_row[x]
            r = _TWO * f - stored_row[x]
            model_power[x] += f.real * f.real + f.imag * f.imag
            reflected_power[x] += r.real * r.real + r.imag * r.imag
    row_cost = _ONE - _ONE
    row_photons = _ONE - _ONE
    for x in range(w):
        model_amplitude = np.sqrt(model_power[x])
        target = measured[x]
        row_cost += good[x] * (model_amplitude - target) * (model_amplitude - target)
        row_photons += good[x] * model_power[x]
        reflected_factor[x] = _ONE + good[x] * (target / (np.sqrt(reflected_power[x]) + _FLOOR) - _ONE)
        model_factor[x] = keep * (_ONE + good[x] * (target / (model_amplitude + _FLOOR) - _ONE))
    for m in range(n_modes):
        model_row = model[m, y]
        stored_row = stored[m, stored_y]
        out_row = out[m, out_y]
        for x in range(w):
            f = model_row[x]
            g = stored_row[x]
            out_row[x] = relaxation * (g + (_TWO * f - g) * reflected_factor[x] - f) + model_factor[x] * f
    return row_cost, row_photons


@_compile
def difference_map_fourier(model, farfield, amplitude, mask, beta, model_photons):
    """The difference map's Fourier-space update of the stored far fields, in place.

    ``model`` (N, M, h, w) is ``F(P O)``; ``farfield`` the stored far fields,
    replaced by ``beta (farfield + P_F(2 model - farfield) - model) + (1 - beta) P_F(model)``.
    Returns the amplitude misfit of ``model``. ``model_photons``: (N,)
    filled with ``sum mask * |model|^2`` of each frame, or empty (0,).
    """
    n_frames, _, h, w = model.shape
    buffers = np.empty((4, w), dtype=amplitude.dtype)
    keep = amplitude.dtype.type(1 - beta)
    relaxation = amplitude.dtype.type(beta)
    cost = 0.0
    for j in range(n_frames):
        photons = 0.0
        for y in range(h):
            row_cost, row_photons = _difference_map_row(
                model[j],
                y,
                farfield[j],
                y,
                farfield[j],
                y,
                amplitude[j, y],
                mask[y],
                keep,
                relaxation,
                buffers,
            )
            cost += row_cost
            photons += row_photons
        if model_photons.shape[0]:
            model_photons[j] = photons
    return cost


@_compile
def difference_map_fourier_half(model, stored_bits, unscale, scale, amplitude, mask, beta, model_photons):
    """:func:`difference_map_fourier` of far fields stored as float16 pairs, given as their uint16 bits.

    ``stored_bits`` (N, M, h, 2w) hold the far fields times ``scale``
    (``unscale`` is its inverse); they are replaced by the update, which
    also replaces ``model``, in single precision (ready for the inverse FFT).
    See :func:`.farfields.single_from_half` and :func:`.farfields.half_from_single`.
    """
    n_frames, n_modes, h, w = model.shape
    buffers = np.empty((4, w), dtype=amplitude.dtype)
    stored = np.empty((n_modes, 1, w), dtype=model.dtype)
    row = np.empty(2 * w, np.float32)
    row_bits = row.view(np.uint32)
    keep = amplitude.dtype.type(1 - beta)
    relaxation = amplitude.dtype.type(beta)
    cost = 0.0
    for j in range(n_frames):
        photons = 0.0
        for y in range(h):
            for m in range(n_modes):
                values = stored[m, 0].view(np.float32)
                _single_row_from_half(stored_bits[j, m, y], values, values.view(np.uint32), unscale)
            row_cost, row_photons = _difference_map_row(
                model[j], y, stored, 0, model[j], y, amplitude[j, y], mask[y], keep, relaxation, buffers
            )
            cost += row_cost
            photons += row_photons
            for m in range(n_modes):
                _half_row_from_single(
                    model[j, m, y].view(np.float32), scale, stored_bits[j, m, y], row, row_bits
                )
        if model_photons.shape[0]:
            model_photons[j] = photons
    return cost


@_compile
def lsqml_step_products(obj, object_direction, probe, probe_direction, corners, chi):
    """Rows a11, r1, a22, r2, a12 (5, B) of the LSQ-ML step equations (see :func:`.lsqml.step_products`)."""
    n_frames, n_modes, h, w = chi.shape
    power = _mode_power(probe, chi.real.dtype)
    direction_power = _mode_power(probe_direction, chi.real.dtype)
    overlap = np.zeros((h, w), dtype=chi.dtype)
    for m in range(n_modes):
        for y in range(h):
            for x in range(w):
                overlap[y, x] += np.conj(probe[m, y, x]) * probe_direction[m, y, x]
    by_probe = np.empty(w, dtype=chi.dtype)
    by_direction = np.empty(w, dtype=chi.dtype)
    products = np.zeros((5, n_frames))
    for j in range(n_frames):
        r, c = corners[j, 0], corners[j, 1]
        for y in range(h):
            by_probe[:] = 0
            by_direction[:] = 0
            for m in range(n_modes):
                chi_row = chi[j, m, y]
                probe_row = probe[m, y]
                direction_row = probe_direction[m, y]
                for x in range(w):
                    by_probe[x] += np.conj(probe_row[x]) * chi_row[x]
                    by_direction[x] += np.conj(direction_row[x]) * chi_row[x]
            patch_row = obj[r + y, c : c + w]
            change_row = object_direction[r + y, c : c + w]
            a11 = r1 = a22 = r2 = a12 = _ONE - _ONE
            for x in range(w):
                patch, change = patch_row[x], change_row[x]
                a11 += (change.real * change.real + change.imag * change.imag) * power[y, x]
                r1 += change.real * by_probe[x].real + change.imag * by_probe[x].imag
                a22 += (patch.real * patch.real + patch.imag * patch.imag) * direction_power[y, x]
                r2 += patch.real * by_direction[x].real + patch.imag * by_direction[x].imag
                a12 += (np.conj(change) * patch * overlap[y, x]).real
            products[0, j] += a11
            products[1, j] += r1
            products[2, j] += a22
            products[3, j] += r2
            products[4, j] += a12
    return products


@_compile
def position_gradient_sums(obj, corners, probe, chi):
    """Numerators and denominators (2, 2, B) of the least-squares shifts of :func:`.positions.gradient_shifts`.

    ``[0]``: ``sum Re(conj(d) chi)``, ``[1]``: ``sum |d|^2``, each for
    ``d = probe * dO/drow`` (``[:, 0]``) and ``probe * dO/dcolumn`` (``[:, 1]``),
    the object's central differences read around each patch; summed over
    the modes as ``Re(conj(dO) sum_m conj(probe_m) chi_m)`` and ``|dO|^2 sum_m |probe_m|^2``.
    """
    n_frames, n_modes, h, w = chi.shape
    power = _mode_power(probe, chi.real.dtype)
    conj_probe = np.conj(probe)
    by_probe = np.empty(w, dtype=chi.dtype)
    sums = np.zeros((2, 2, n_frames))
    half = obj.real.dtype.type(0.5)
    for j in range(n_frames):
        r, c = corners[j, 0], corners[j, 1]
        for y in range(h):
            by_probe[:] = 0
            for m in range(n_modes):
                chi_row = chi[j, m, y]
                probe_row = conj_probe[m, y]
                for x in range(w):
                    by_probe[x] += probe_row[x] * chi_row[x]
            above, here, below = (
                obj[r + y - 1, c : c + w],
                obj[r + y, c - 1 : c + w + 1],
                obj[r + y + 1, c : c + w],
            )
            power_row = power[y]
            num_row = num_col = den_row = den_col = _ONE - _ONE
            for x in range(w):
                along_rows = (below[x] - above[x]) * half
                along_cols = (here[x + 2] - here[x]) * half
                num_row += along_rows.real * by_probe[x].real + along_rows.imag * by_probe[x].imag
                num_col += along_cols.real * by_probe[x].real + along_cols.imag * by_probe[x].imag
                den_row += (
                    along_rows.real * along_rows.real + along_rows.imag * along_rows.imag
                ) * power_row[x]
                den_col += (
                    along_cols.real * along_cols.real + along_cols.imag * along_cols.imag
                ) * power_row[x]
            sums[0, 0, j] += num_row
            sums[0, 1, j] += num_col
            sums[1, 0, j] += den_row
            sums[1, 1, j] += den_col
    return sums


@_inline
def _single_row_from_half(source, target, target_bits, unscale):
    """``target = float32(source) * unscale`` for a row of float16 given as its uint16 bits.

    A float16's exponent and mantissa, shifted into a float32's, then scaled
    by ``2**112``, are its magnitude exactly; the sign bit moves 16 places up.
    """
    for x in range(source.shape[0]):
        bits = np.uint32(source[x])
        target_bits[x] = ((bits & np.uint32(0x8000)) << 16) | ((bits & np.uint32(0x7FFF)) << 13)
    for x in range(source.shape[0]):
        target[x] *= _HALF_BITS_TO_SINGLE
        target[x] *= unscale


@_inline
def _half_bits(value, value_bits):
    """The uint16 bits of the float16 nearest ``value`` >= 0, a float32 whose bits are ``value_bits``.

    Ties to even and overflow to infinity, as NumPy rounds.
    """
    subnormal = np.uint32(np.rint(value * _HALF_SUBNORMALS))
    bits = np.uint32(value_bits - _SINGLE_TO_HALF_EXPONENT)
    normal = min((bits + np.uint32(0x0FFF) + ((bits >> 13) & np.uint32(1))) >> 13, _HALF_INFINITY)
    return np.uint16(subnormal if value < _SMALLEST_NORMAL_HALF else normal)


@_compile
def single_from_half(bits, rows, targets, unscale, out):
    """``out[targets[j]] = page[rows[j]] * unscale`` in float32, for a float16 page given as its uint16 ``bits``.

    See :func:`.frames.single_from_stored`.
    """
    h = bits.shape[1]
    for j in range(rows.shape[0]):
        source = bits[rows[j]]
        target = out[targets[j]]
        target_bits = target.view(np.uint32)
        for y in range(h):
            _single_row_from_half(source[y], target[y], target_bits[y], unscale)


@_compile
def single_rows_from_half(bits, unscale, out):
    """``out = float32(bits as float16) * unscale``, row by row of 2-D arrays (rows, n).

    See :func:`.farfields.single_from_half`.
    """
    out_bits = out.view(np.uint32)
    for r in range(bits.shape[0]):
        _single_row_from_half(bits[r], out[r], out_bits[r], unscale)


@_inline
def _half_row_from_single(source, scale, target, row, row_bits):
    """``target = float16(source * scale)`` as uint16 bits, for a float32 row; ``row`` (and its bits) a scratch row."""
    for x in range(source.shape[0]):
        row[x] = abs(source[x]) * scale
    for x in range(source.shape[0]):
        sign = np.uint16(0x8000) if source[x] < 0 else np.uint16(0)
        target[x] = _half_bits(row[x], row_bits[x]) | sign


@_compile
def half_rows_from_single(values, scale, out_bits):
    """``out = float16(values * scale)`` written as the float16s' uint16 bits, row by row of 2-D float32 arrays.

    Rounded as NumPy rounds (see :func:`_half_bits`). See :func:`.farfields.half_from_single`.
    """
    row = np.empty(values.shape[1], np.float32)
    row_bits = row.view(np.uint32)
    for r in range(values.shape[0]):
        _half_row_from_single(values[r], scale, out_bits[r], row, row_bits)


@_compile
def half_amplitudes(counts, scale, out_bits):
    """``out[j] = float16(sqrt(ifftshift(counts[j])) * scale)``, written as the float16's uint16 ``bits``.

    Counts >= 0 of any real type; the square root in float32, rounded to the
    nearest float16 (ties to even, overflow to infinity) as NumPy rounds. See
    :func:`.frames.stored`.
    """
    n, h, w = counts.shape
    half_w = w // 2
    row = np.empty(w, np.float32)
    row_bits = row.view(np.uint32)
    for j in range(n):
        for y in range(h):
            source = counts[j, (y + h // 2) % h]
            for x in range(w - half_w):
                row[x] = np.sqrt(np.float32(source[x + half_w])) * scale
            for x in range(half_w):
                row[w - half_w + x] = np.sqrt(np.float32(source[x])) * scale
            target = out_bits[j, y]
            for x in range(w):
                target[x] = _half_bits(row[x], row_bits[x])
