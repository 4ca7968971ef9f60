"""Quality metrics: exact on the truth, blind to the ambiguities they remove."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bluesky_ptycho.solver import (
    ReconstructionResult,
    fourier_r_factor,
    fourier_ring_correlation,
    object_error,
    simulate,
)
from bluesky_ptycho.solver.metrics import crop, fourier_shift, registration_shift


@pytest.fixture(scope="module")
def sim():
    return simulate(n_frames=60, frame_size=32, photons=None, seed=7)


def truth_result(sim, obj=None, origin_shift=(0, 0)) -> ReconstructionResult:
    py, px = sim.data.geometry.sample_pixel_size
    origin = (sim.object_origin[0] + origin_shift[1] * px, sim.object_origin[1] + origin_shift[0] * py)
    return ReconstructionResult(
        object=sim.true_object if obj is None else obj,
        probe=sim.true_probe,
        positions=sim.true_positions,
        pixel_size=(py, px),
        object_origin=origin,
        cost_history=[],
        iterations=0,
        settings={},
        wall_time=0.0,
    )


def test_truth_has_zero_object_error_and_r_factor(sim):
    assert object_error(truth_result(sim), sim) < 1e-6
    assert fourier_r_factor(truth_result(sim), sim.data) < 1e-3


def test_object_error_ignores_global_scale_and_phase_ramp(sim):
    y, x = np.indices(sim.true_object.shape)
    changed = sim.true_object * 0.7 * np.exp(1j * (0.4 + 0.05 * y - 0.03 * x))
    assert object_error(truth_result(sim, changed.astype(np.complex64)), sim) < 1e-4


def test_object_error_sees_a_wrong_object(sim):
    rng = np.random.default_rng(0)
    noisy = sim.true_object + 0.1 * rng.standard_normal(sim.true_object.shape)
    assert 0.05 < object_error(truth_result(sim, noisy.astype(np.complex64)), sim) < 0.3


def test_object_error_registers_a_small_translation_only(sim):
    shifted = fourier_shift(sim.true_object, np.array([0.6, -1.3]))
    assert registration_shift(sim.true_object, shifted, np.ones(shifted.shape)) == pytest.approx(
        [-0.6, 1.3], abs=0.1
    )
    assert object_error(truth_result(sim, shifted), sim) < 0.02
    assert object_error(truth_result(sim, origin_shift=(4, 0)), sim) > 0.1


def test_object_error_registers_a_phase_object_whose_amplitudes_tell_nothing(sim):
    """A weak-phase object's amplitude is noise: the registration must not rest on it alone."""
    phase_only = replace(sim, true_object=np.exp(1j * np.angle(sim.true_object)).astype(np.complex64))
    rng = np.random.default_rng(0)
    shifted = np.exp(1j * np.angle(fourier_shift(phase_only.true_object, np.array([1.2, 0.9]))))
    shifted = (shifted * (1 + 0.01 * rng.standard_normal(shifted.shape))).astype(np.complex64)
    assert object_error(truth_result(phase_only, shifted), phase_only) < 0.02


def test_fourier_ring_correlation(sim):
    rng = np.random.default_rng(1)
    image = sim.true_object
    frequency, same = fourier_ring_correlation(image, image)
    np.testing.assert_allclose(same, 1, atol=1e-6)
    assert frequency[0] > 0 and frequency[-1] < 1
    noise = rng.standard_normal(image.shape)
    _, independent = fourier_ring_correlation(noise, rng.standard_normal(image.shape))
    assert np.abs(independent[5:]).mean() < 0.2


def test_crop_fills_outside():
    image = np.arange(16.0).reshape(4, 4)
    out = crop(image, np.array([-1, 2]), (3, 3), fill=-1)
    np.testing.assert_array_equal(out, [[-1, -1, -1], [2, 3, -1], [6, 7, -1]])
