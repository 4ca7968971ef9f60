"""Each frame's position step grows while the frame is on its way somewhere (solver.position_gains)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, position_error
from bluesky_ptycho.solver.position_gains import GROWTH, SHRINK, PositionGains

SHARE = 0.25


def test_a_frame_moving_one_way_takes_ever_more_of_its_shift_up_to_all_of_it():
    gains = PositionGains()
    gains.take(3)
    shifts = np.array([[1.0, 0.5], [0.0, 0.0], [0.05, 0.0]])
    steps = np.array([gains.follow(np.arange(3), shifts, SHARE) for _ in range(12)])
    np.testing.assert_allclose(steps[:4, 0], SHARE * GROWTH ** np.arange(4))
    assert steps[-1, 0] == 1.0 and steps[:, 0].max() == 1.0
    # a frame that does not move keeps the share set, and so does one that moves one way by a twentieth
    # of a pixel at a time: a nearly right frame's bias
    np.testing.assert_array_equal(steps[:, 1:], SHARE)


def test_a_frame_whose_shifts_turn_back_keeps_the_share_set():
    gains = PositionGains()
    gains.take(1)
    for _ in range(5):  # grown first
        gains.follow(np.array([0]), np.array([[1.0, 0.0]]), SHARE)
    grown = gains.gains[0]
    turned = gains.follow(np.array([0]), np.array([[-1.0, 0.2]]), SHARE)
    assert turned[0] == pytest.approx(SHARE * grown * SHRINK)
    for sign in [1, -1] * 6:  # noise: as often back as forth
        step = gains.follow(np.array([0]), np.array([[sign * 1.0, 0.0]]), SHARE)
    assert step[0] == SHARE


def test_frames_new_and_moved_by_the_search_start_from_the_share_set():
    gains = PositionGains()
    gains.take(3)
    for _ in range(4):
        gains.follow(np.arange(3), np.ones((3, 2)), SHARE)
    gains.take(5)
    gains.restart(np.array([1]))
    np.testing.assert_array_equal(gains.gains, [GROWTH**3, 1, GROWTH**3, 1, 1])
    np.testing.assert_array_equal(gains.last[[1, 3, 4]], 0)


def test_half_a_step_of_random_error_is_refined_to_a_quarter_of_it_with_the_defaults_quarter_step(
    half_a_step_off,
):
    """The previews' defaults (a quarter of each shift, the search), the defocus given.

    With a quarter of each shift alone, most frames were still on their way
    at the search (porous A previews: 4.25 px left from 7.84).
    """
    sim = half_a_step_off
    pixel = sim.data.geometry.sample_pixel_size
    settings = replace(ReconstructionSettings.final().for_preview(), probe_defocus=-1e-3)
    assert settings.position_correction and settings.position_step == SHARE
    result = Reconstructor.from_data(sim.data, settings).iterate().result()
    recorded = position_error(sim.data.positions, sim.true_positions, pixel)
    assert position_error(result.positions, sim.true_positions, pixel) < 0.25 * recorded
