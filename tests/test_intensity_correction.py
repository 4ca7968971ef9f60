"""A beam whose power drifts through the scan: each frame's share fitted, by every algorithm, kept with the result."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import beam_amplitudes, reconstructed

from bluesky_ptycho.io import read_result, write_result
from bluesky_ptycho.solver import (
    ALGORITHMS,
    fourier_r_factor,
    object_error,
    simulate,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_drifting_beam_is_fitted_frame_by_frame(drifting, algorithm):
    common = {"algorithm": algorithm, "iterations": 80, "intensity_correction_start": 20}
    off = reconstructed(drifting, **common)
    on = reconstructed(drifting, **common, intensity_correction=True)
    truth = beam_amplitudes(drifting)
    assert off.frame_scales is None
    assert np.sqrt(np.mean((on.frame_scales - truth) ** 2)) < 0.5 * np.sqrt(np.mean((truth - 1) ** 2))
    assert np.mean(on.frame_scales**2) == pytest.approx(1.0)
    assert object_error(on, drifting) < 0.7 * object_error(off, drifting)
    # the R-factor models each frame with its scale
    assert fourier_r_factor(on, drifting.data) < 0.8 * fourier_r_factor(off, drifting.data)


def test_nothing_is_fitted_before_the_start_iteration(drifting):
    result = reconstructed(drifting, iterations=10, intensity_correction=True, intensity_correction_start=20)
    np.testing.assert_array_equal(result.frame_scales, np.ones(len(drifting.data)))


def test_an_absorbing_object_keeps_its_contrast_as_the_fit_starts_late():
    """Fitted from the first iterations, the frames' shares take up the object's absorption instead."""
    sim = simulate(n_frames=100, frame_size=32, overlap=0.7, photons=1e6, seed=3)  # transmission 0.3-1
    assert np.abs(sim.true_object).min() < 0.5
    common = {"algorithm": "lsqml", "iterations": 200}
    off = object_error(reconstructed(sim, **common), sim)
    assert object_error(reconstructed(sim, **common, intensity_correction=True), sim) < 1.1 * off
    early = reconstructed(sim, **common, intensity_correction=True, intensity_correction_start=1)
    assert object_error(early, sim) > 1.5 * off


def test_the_scales_are_kept_in_the_result_file(drifting, tmp_path):
    result = reconstructed(drifting, iterations=30, intensity_correction=True, intensity_correction_start=10)
    back = read_result(write_result(tmp_path / "result.cxi", result))
    np.testing.assert_array_equal(back.frame_scales, result.frame_scales)
    assert (
        read_result(write_result(tmp_path / "plain.cxi", reconstructed(drifting, iterations=2))).frame_scales
        is None
    )
