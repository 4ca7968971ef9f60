"""A frame's least-squares shift: its photon noise, as its denominator says, and the damping that follows."""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter, shift

from bluesky_ptycho.solver.backend import make_backend
from bluesky_ptycho.solver.forward import exit_waves_at
from bluesky_ptycho.solver.positions import SHIFT_DAMPING, gradient_shifts, gradient_sums
from bluesky_ptycho.solver.state import SolverState

FRAME = 32
CORNER = 4
REPEATS = 400


def frames_at_one_place(rng, photons: float) -> SolverState:
    """REPEATS frames at one place on a phase object with structure a few pixels across (0.5 rad rms)."""
    phase = gaussian_filter(rng.standard_normal((FRAME + 2 * CORNER,) * 2), 2.0)
    obj = np.exp(0.5j * phase / phase.std()).astype(np.complex64)
    y, x = np.mgrid[:FRAME, :FRAME] - FRAME / 2
    probe = np.exp(-(x**2 + y**2) / (2 * 6.0**2)).astype(np.complex64)
    probe *= np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    corners = np.full((REPEATS, 2), CORNER)
    return SolverState(
        make_backend("cpu"), obj, probe[None], None, None, corners.astype(float), corners, np.zeros(2), (1, 1)
    )


def exit_wave(state: SolverState, offset: float = 0.0) -> np.ndarray:
    """The one frame's exit wave, off a patch ``offset`` px further down the object."""
    obj = state.object
    if offset:
        obj = shift(obj.real, (-offset, 0), order=3) + 1j * shift(obj.imag, (-offset, 0), order=3)
    return exit_waves_at(obj, state.corners[:1], state.probe)[0, 0]


def noisy_changes(state: SolverState, rng) -> np.ndarray:
    """Every frame's exit-wave change: its own Poisson counts' amplitudes put on the model's far field."""
    model = scipy.fft.fft2(exit_wave(state), norm="ortho")
    counts = rng.poisson(np.abs(model) ** 2, (REPEATS, FRAME, FRAME))
    waves = scipy.fft.ifft2(np.sqrt(counts) * np.exp(1j * np.angle(model)), norm="ortho")
    return (waves - exit_wave(state))[:, None].astype(np.complex64)


def test_a_frames_shift_has_at_most_the_photon_noise_its_denominator_says():
    """``1 / (2 sqrt(denominator))`` px per axis, what :data:`.SHIFT_NOISE` is measured against, within a few times.

    The bound is reached where every detector pixel holds a photon or more
    and a shift changes the far field's amplitudes, not their phases alone:
    here a quarter of it.
    """
    rng = np.random.default_rng(5)
    state = frames_at_one_place(rng, photons=1e4)
    numerator, denominator = gradient_sums(state, state.corners, noisy_changes(state, rng))
    spread = (numerator / denominator).std(axis=0)
    bound = 1 / (2 * np.sqrt(denominator[0]))
    assert np.all(spread <= 1.1 * bound)
    assert np.all(spread >= 0.1 * bound)


def test_the_damping_stills_a_dim_frames_noise_and_leaves_a_bright_frames_shift():
    rng = np.random.default_rng(6)
    state = frames_at_one_place(rng, photons=1e2)
    chi = noisy_changes(state, rng)
    numerator, denominator = gradient_sums(state, state.corners, chi)
    assert denominator.max() < SHIFT_DAMPING  # the frame says little about where it is
    damped = gradient_shifts(state, state.corners, chi)
    assert np.all(damped.std(axis=0) < 0.5 * (numerator / denominator).std(axis=0))

    state = frames_at_one_place(rng, photons=1e7)
    chi = np.stack([exit_wave(state, offset=0.3) - exit_wave(state)] * 2)[:, None].astype(np.complex64)
    shifts = gradient_shifts(state, state.corners[:2], chi)
    np.testing.assert_allclose(shifts[:, 0], 0.3, rtol=0.1)
    np.testing.assert_allclose(shifts[:, 1], 0, atol=0.03)
