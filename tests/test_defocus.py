"""The defocused initial probe and its automatic estimate from the data."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, object_error, simulate
from bluesky_ptycho.solver.defocus import bright_field_radius, estimate_defocus, looks_defocused
from bluesky_ptycho.solver.probe import probe_from_mean_pattern, propagate

DEFOCI = [0.0, 1e-3, -1e-3, 2e-3, -2e-3]


def focused_sim(defocus: float, seed: int = 3):
    return simulate(probe_kind="focused", probe_defocus=defocus, photons=1e6, seed=seed)


def depth_of_focus(sim) -> float:
    """lambda / NA^2 of the simulated beam."""
    g = sim.data.geometry
    numerical_aperture = (
        bright_field_radius(sim.data.frames.mean(axis=0)) * g.detector_pixel_size / g.detector_distance
    )
    return g.wavelength / numerical_aperture**2


def test_probe_model_has_the_measured_far_field_and_the_given_defocus():
    sim = focused_sim(1.5e-3)
    mean = sim.data.frames.mean(axis=0)
    probe = probe_from_mean_pattern(mean, sim.data.geometry, 1.5e-3)
    far_field = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe), norm="ortho")))
    np.testing.assert_allclose(far_field, np.sqrt(mean), atol=1e-3 * np.sqrt(mean).max())
    focus = propagate(probe, sim.data.geometry, -1.5e-3)
    in_focus = probe_from_mean_pattern(mean, sim.data.geometry, 0.0)
    np.testing.assert_allclose(focus, in_focus, atol=1e-3 * np.abs(in_focus).max())
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(mean.sum(), rel=1e-4)


def test_looks_defocused_tells_a_disc_from_a_peak():
    assert looks_defocused(focused_sim(1e-3).data.frames.mean(axis=0))
    assert not looks_defocused(simulate(photons=1e6).data.frames.mean(axis=0))


@pytest.mark.parametrize("defocus", DEFOCI)
def test_estimate_recovers_the_defocus(defocus):
    sim = focused_sim(defocus)
    estimate = estimate_defocus(sim.data.frames, sim.data.positions, sim.data.geometry)
    tolerance = 0.15 * abs(defocus) if defocus else 0.15 * depth_of_focus(sim)
    assert abs(estimate.defocus - defocus) <= tolerance, estimate
    assert estimate.score <= 1.05 * min(estimate.scores)
    assert len(estimate.candidates) == len(estimate.scores) >= 9


@pytest.mark.parametrize("defocus", [1.5e-3, -1.5e-3])
def test_auto_start_reconstructs_as_well_as_the_true_probe(defocus):
    sim = focused_sim(defocus, seed=4)
    auto = Reconstructor.from_data(sim.data, ReconstructionSettings()).iterate(60)
    assert auto.extra["probe_defocus"] == pytest.approx(defocus, rel=0.15)
    true = Reconstructor(sim.data.geometry, ReconstructionSettings(), probe=sim.true_probe)
    true.add_frames(sim.data.frames, sim.data.positions).iterate(60)
    in_focus = Reconstructor.from_data(sim.data, ReconstructionSettings(probe_defocus=0.0)).iterate(60)
    auto_error, true_error = object_error(auto.result(), sim), object_error(true.result(), sim)
    assert auto_error <= 1.2 * true_error, (auto_error, true_error)
    assert object_error(in_focus.result(), sim) > 3 * auto_error, "an in-focus start should get stuck"


def test_wrong_sign_is_detected_and_corrected(caplog):
    sim = focused_sim(1.5e-3)
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho"):
        reconstructor = Reconstructor.from_data(sim.data, ReconstructionSettings(probe_defocus=-1.5e-3))
    assert reconstructor.extra["probe_defocus"] == 1.5e-3
    assert reconstructor.extra["probe_defocus_sign_corrected"] is True
    assert "check the sign convention" in caplog.text
    right = Reconstructor.from_data(sim.data, ReconstructionSettings(probe_defocus=1.5e-3))
    assert right.extra["probe_defocus_sign_corrected"] is False


def test_auto_is_the_default_only_for_defocused_data():
    defocused = Reconstructor.from_data(focused_sim(1e-3).data, ReconstructionSettings())
    assert "probe_defocus_score" in defocused.extra
    focused = Reconstructor.from_data(simulate(photons=1e6).data, ReconstructionSettings())
    assert "probe_defocus_score" not in focused.extra and focused.extra["probe_defocus"] == 0.0


def test_defocus_from_a_cxi_file_is_used(tmp_path):
    from bluesky_ptycho.io import read_cxi, write_cxi

    data = focused_sim(1e-3).data
    data.probe_defocus = 1e-3
    reconstructor = Reconstructor.from_data(read_cxi(write_cxi(tmp_path / "d.cxi", data)))
    assert reconstructor.extra["probe_defocus"] == 1e-3
    assert "probe_defocus_score" not in reconstructor.extra


def test_bad_defocus_setting():
    with pytest.raises(ValueError, match="probe_defocus must be a distance"):
        ReconstructionSettings(probe_defocus="far")
