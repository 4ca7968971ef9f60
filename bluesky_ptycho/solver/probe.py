"""Probe models: initial probes from the data and geometry, mixed-state modes.

Sign convention of the defocus: a positive distance means the sample sits
downstream of the probe focus (the beam has passed its focus and diverges).
"""

from __future__ import annotations

import numpy as np

from .backend import array_module, fft2, ifft2
from .data import Geometry


def frequency_grid(shape: tuple[int, int], pixel_size: tuple[float, float]):
    """Squared spatial frequency (1/m^2) of each FFT bin, zero frequency at index 0."""
    fy = np.fft.fftfreq(shape[0], d=pixel_size[0])
    fx = np.fft.fftfreq(shape[1], d=pixel_size[1])
    return fy[:, None] ** 2 + fx[None, :] ** 2


def shift_ramp(shape: tuple[int, int], shift, xp=np):
    """Fourier-space phase ramp (FFT order) that translates an image by ``shift`` (rows, columns) pixels."""
    fy = xp.fft.fftfreq(shape[0])[:, None]
    fx = xp.fft.fftfreq(shape[1])[None, :]
    return xp.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1]))


def moved_probes(probe: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The ``probe`` (modes, h, w) moved by each of ``offsets`` (B, 2 pixels, rows and columns), a Fourier shift: (B, modes, h, w)."""
    ramps = shift_ramp(probe.shape[-2:], (offsets[:, 0, None, None], offsets[:, 1, None, None]))
    return ifft2(fft2(probe)[None] * ramps[:, None].astype(probe.dtype), overwrite_x=True)


def fresnel_transfer(geometry: Geometry, distance: float) -> np.ndarray:
    """Fresnel transfer function that propagates a sample-plane field by ``distance``.

    Returned in FFT order, shape ``geometry.frame_shape``, complex64.
    """
    f2 = frequency_grid(geometry.frame_shape, geometry.sample_pixel_size)
    return np.exp(-1j * np.pi * geometry.wavelength * distance * f2).astype(np.complex64)


def propagate(field, geometry: Geometry, distance: float):
    """Propagate sample-plane field(s) (..., H, W) by ``distance`` metres (Fresnel)."""
    if distance == 0:
        return field
    xp = array_module(field)
    transfer = xp.asarray(fresnel_transfer(geometry, distance))
    return ifft2(fft2(field) * transfer)


def probe_from_mean_pattern(mean_pattern: np.ndarray, geometry: Geometry, defocus: float = 0.0) -> np.ndarray:
    """One probe mode whose far field is the square root of the mean diffraction pattern.

    The focus has a flat far-field phase; the quadratic phase of ``defocus``
    is added by Fresnel propagation to the sample plane.

    Parameters
    ----------
    mean_pattern
        Mean of the measured frames, (H, W), zero frequency at the centre.
    geometry
        The instrument geometry.
    defocus
        Distance in metres from the focus to the sample (positive downstream).

    Returns
    -------
    (H, W) complex64 probe in the sample plane, centred, with
    ``sum |probe|^2 == sum mean_pattern``.
    """
    amplitude = np.sqrt(np.clip(np.fft.ifftshift(mean_pattern), 0, None)).astype(np.complex64)
    focus = np.fft.fftshift(ifft2(amplitude))
    probe = propagate(focus, geometry, defocus)
    return normalize_power(probe.astype(np.complex64), float(np.sum(mean_pattern)))


def reusable_probe(result, geometry: Geometry, source: str) -> np.ndarray:
    """The probe of an earlier :class:`~bluesky_ptycho.solver.data.ReconstructionResult`, for data of ``geometry``.

    Raises
    ------
    ValueError
        Naming ``source`` and every mismatch (frame shape, photon energy,
        detector distance, pixel size), or saying that ``source`` records no
        geometry to check.
    """
    if result.geometry is None:
        raise ValueError(f"{source} records no geometry, so its probe cannot be checked against this scan")
    mismatches = result.geometry.mismatches(geometry)
    if mismatches:
        raise ValueError(f"the probe of {source} does not fit this scan: " + "; ".join(mismatches))
    return result.probe


def normalize_power(probe, total_power: float):
    """Scale ``probe`` (modes, H, W) or (H, W) so that ``sum |probe|^2 == total_power``."""
    xp = array_module(probe)
    power = float(xp.sum(xp.abs(probe) ** 2))
    if power <= 0:
        raise ValueError("the probe is zero everywhere: cannot normalise its power")
    return probe * np.float32(np.sqrt(total_power / power))


def add_modes(probe: np.ndarray, n_modes: int, weight: float = 0.02) -> np.ndarray:
    """Seed ``n_modes`` orthogonal incoherent modes from a single mode.

    Mode ``k > 0`` is the first mode times a low-order polynomial (x, y, xy,
    x^2 - y^2, ...), given ``weight`` of the first mode's power; the set is then
    orthogonalised. The total power is unchanged.

    The default weight is small: enough for a mode to grow where the beam is
    partially coherent, little enough that coherent data are not pulled
    away from one mode (measured on noise-free coherent data: the object
    error of 3 modes seeded at 0.1 each was 60 times that of one mode, at
    0.02 7 times; on partially coherent data the R-factor changed by 1 %).
    """
    probe = np.asarray(probe)
    if probe.ndim == 2:
        probe = probe[None]
    if probe.shape[0] >= n_modes:
        return probe[:n_modes].astype(np.complex64)
    h, w = probe.shape[-2:]
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    shapes = [x, y, x * y, x**2 - y**2, x * (x**2 + y**2), y * (x**2 + y**2)]
    total = float(np.sum(np.abs(probe) ** 2))
    modes = list(probe)
    first = probe[0]
    first_power = float(np.sum(np.abs(first) ** 2))
    for k in range(len(modes), n_modes):
        shape = shapes[(k - 1) % len(shapes)] * (1 + (k - 1) // len(shapes))
        mode = first * shape
        mode *= np.sqrt(weight * first_power / max(float(np.sum(np.abs(mode) ** 2)), 1e-30))
        modes.append(mode)
    return normalize_power(orthogonalize_modes(np.stack(modes).astype(np.complex64)), total)


def orthogonalize_modes(probe):
    """Make probe modes orthogonal, strongest first, keeping the total intensity.

    Diagonalises the modes' Gram matrix: the incoherent sum
    ``sum_m |probe_m|^2`` is unchanged. See :func:`mode_rotation`.
    """
    if probe.shape[0] == 1:
        return probe
    return rotate_modes(probe, mode_rotation(probe))


def mode_rotation(probe):
    """The unitary (modes, modes) matrix ``U`` whose new modes ``sum_m U[m, k] probe_m`` are orthogonal, strongest first.

    The products run as ``einsum`` loops, not BLAS: a few modes make a
    matrix this small that BLAS's worker threads would only wake up and take
    the core that the FFTs need.
    """
    xp = array_module(probe)
    flat = probe.reshape(probe.shape[0], -1)
    gram = xp.einsum("mi,ni->mn", flat.conj(), flat)
    eigenvalues, eigenvectors = xp.linalg.eigh(gram)
    return eigenvectors[:, xp.argsort(eigenvalues)[::-1]]


def rotate_modes(waves, rotation, kernels=None):
    """``sum_m rotation[m, k] waves_m``: the modes of ``waves`` (modes, h, w) or (B, modes, h, w) in the rotated basis.

    Batched waves are rotated in place (and returned); a probe into a new
    array. ``kernels``: the compiled kernels, or None for the array expression.
    """
    rotation = rotation.astype(waves.dtype, copy=False)
    if waves.ndim == 3:
        return rotate_modes(waves[None].copy(), rotation, kernels)[0]
    if kernels is not None and waves.flags.c_contiguous:
        kernels.rotate_modes(waves, rotation)
        return waves
    xp = array_module(waves)
    waves[...] = xp.einsum("jm...,mk->jk...", waves, rotation)
    return waves


def recentre(state, tolerance: float = 2.0) -> tuple[int, int] | None:
    """Roll the probe back to the frame centre and move the positions with it.

    Probe and object can drift together without changing the data; rolling
    the probe by ``s`` and moving every position by ``-s`` leaves every exit
    wave shifted by ``s`` (the measured intensities unchanged) while the
    object stays where it is. Nothing moves while the probe's centre of mass
    is within ``tolerance`` pixels of the frame centre.

    Returns
    -------
    The integer (rows, columns) roll applied to the probe, or None.
    """
    xp = state.xp
    intensity = state.illumination_weights()
    h, w = intensity.shape
    total = float(intensity.sum())
    if not np.isfinite(total) or total <= 0:
        raise FloatingPointError(
            f"the reconstruction diverged: the probe intensity is {total} (try smaller object_step/probe_step)"
        )
    row = float((intensity.sum(axis=1) * xp.arange(h)).sum()) / total
    col = float((intensity.sum(axis=0) * xp.arange(w)).sum()) / total
    offset = np.array([h // 2 - row, w // 2 - col])
    if np.all(np.abs(offset) <= tolerance):
        return None
    shift = tuple(int(v) for v in np.rint(offset))
    state.probe = xp.roll(state.probe, shift, axis=(-2, -1))
    state.set_positions(state.positions - shift)
    return shift


def mode_powers(probe) -> np.ndarray:
    """Fraction of the total intensity carried by each probe mode."""
    xp = array_module(probe)
    powers = xp.sum(xp.abs(probe) ** 2, axis=(-2, -1))
    return np.asarray(powers / xp.sum(powers)).ravel()
