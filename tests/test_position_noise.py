"""A frame's least-squares shift: its photon noise, as its denominator says, the damping that follows,
and where it is measured from (the patch's pixel, or the frame's own position)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
from scipy.ndimage import gaussian_filter, shift

from bluesky_ptycho.solver.backend import make_backend
from bluesky_ptycho.solver.forward import exit_waves_at, fourier_step
from bluesky_ptycho.solver.position_gains import GROWTH
from bluesky_ptycho.solver.positions import (
    SHIFT_DAMPING,
    gradient_shifts,
    gradient_sums,
    shifts_from_positions,
    stepped_shifts,
)
from bluesky_ptycho.solver.settings import ReconstructionSettings
from bluesky_ptycho.solver.state import SolverState

FRAME = 32
CORNER = 4
REPEATS = 400


def frames_at_one_place(rng, photons: float, offset: float = 0.0) -> SolverState:
    """REPEATS frames at one place on a phase object with structure a few pixels across (0.5 rad rms).

    Their patches at pixel (CORNER, CORNER), their positions ``offset`` px further down.
    """
    phase = gaussian_filter(rng.standard_normal((FRAME + 2 * CORNER,) * 2), 2.0)
    obj = np.exp(0.5j * phase / phase.std()).astype(np.complex64)
    y, x = np.mgrid[:FRAME, :FRAME] - FRAME / 2
    probe = np.exp(-(x**2 + y**2) / (2 * 6.0**2)).astype(np.complex64)
    probe *= np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    corners = np.full((REPEATS, 2), CORNER)
    return SolverState(
        make_backend("cpu"),
        obj,
        probe[None],
        None,
        None,
        corners + np.array([offset, 0.0]),
        corners,
        np.zeros(2),
        (1, 1),
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


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_a_shift_measured_at_the_position_is_nil_where_the_data_put_the_frame(seed):
    """A frame 0.3 px down from its patch's pixel, data 0.3, 0 and 0.6 px down.

    Measured from the pixel (one Fourier step of the patch there), the
    shifts are about nil, ``s`` and ``2 s`` (one step takes a share of
    the way); measured at the position, about ``-s``, nil and ``s``: the
    data at the position leave the frame still, the others move it towards them.
    """
    state = frames_at_one_place(np.random.default_rng(seed), photons=1e7, offset=0.3)
    offsets = (0.3, 0.0, 0.6)
    amplitude = np.stack([np.abs(scipy.fft.fft2(exit_wave(state, o), norm="ortho")) for o in offsets])
    amplitude = amplitude.astype(np.float32)
    corners = state.corners[:3]
    at_position = shifts_from_positions(state, np.arange(3), corners, amplitude)[:, 0]
    chi, _ = fourier_step(state.backend, exit_waves_at(state.object, corners, state.probe), amplitude)
    from_pixel = gradient_shifts(state, corners, chi)[:, 0]
    s = from_pixel[0]
    assert s > 0 and abs(from_pixel[1]) < 1e-3 * s and from_pixel[2] > 1.5 * s
    assert abs(at_position[0]) < 0.2 * s
    assert at_position[1] < -0.4 * s and at_position[2] > 0.4 * s


def test_a_frame_on_its_way_takes_the_patchs_shift_and_a_frame_come_near_the_one_at_its_position():
    """A far frame's shift says which way, not how far: measured at its position it would stop in its pixel."""
    state = frames_at_one_place(np.random.default_rng(8), photons=1e7)
    state.position_gains.take(2)
    settings = ReconstructionSettings(position_step=0.5, max_position_step=5.0)
    from_patch = np.array([[0.25, 0.0], [0.25, 0.0]])
    from_position = np.array([[-0.15, 0.0], [-0.15, 0.0]])
    state.position_gains.last[0] = from_patch[0]  # frame 0 asked for the same last time: on its way
    asked = []

    def at_positions(settled: np.ndarray) -> np.ndarray:
        asked.append(settled.copy())
        return from_position[settled]

    moves = stepped_shifts(state, np.arange(2), from_patch, settings, at_positions)
    np.testing.assert_array_equal(asked, [[False, True]])  # measured for the frame come near alone
    steps = 0.5 * np.array([GROWTH, 1.0])
    expected = steps[:, None] * np.array([from_patch[0], from_position[1]])
    np.testing.assert_allclose(moves, expected - expected.mean(axis=0))
    stepped_shifts(state, np.arange(2), from_patch, settings, at_positions)  # both kept on: on their way
    assert len(asked) == 1  # nothing measured at the positions
