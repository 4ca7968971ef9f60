"""Simulated scans as imperfect as real ones: stage errors, fly-scan motion, a drifting probe."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.sim import SimulatedSample
from bluesky_ptycho.solver import ProbeDrift, StageErrors, position_error, simulate
from bluesky_ptycho.solver.imperfections import PROBE_DRIFT_STAGES, fly_path, stage_of_frames
from bluesky_ptycho.solver.simulate import (
    aperture_probe,
    far_field_intensity,
    fermat_spiral,
    grid_places,
    porous_object,
    probe_diameter,
    realistic,
)


def scan_step(sim) -> float:
    """The simulated scan's step in sample pixels."""
    return probe_diameter(sim.true_probe) * (1 - 0.7)


@pytest.mark.parametrize("steps", [0.2, 0.5, 1.0])
def test_random_stage_errors_have_the_rms_asked_for(steps):
    recorded = fermat_spiral(4000, 10.0)
    true = StageErrors(random=steps).true_positions(recorded, 10.0, np.random.default_rng(0))
    assert position_error(true, recorded, (1.0, 1.0)) == pytest.approx(10.0 * steps, rel=0.05)


def test_a_stage_affine_error_scales_rotates_and_shears_about_the_scan_centre():
    recorded = fermat_spiral(500, 10.0) + np.array([3.0, -2.0])
    stage = StageErrors(scale=0.02, rotation=1.5, shear=1.0)
    true = stage.true_positions(recorded, 10.0, np.random.default_rng(0))
    centre = recorded.mean(axis=0)
    fitted, *_ = np.linalg.lstsq(recorded - centre, true - centre, rcond=None)
    turn = np.radians(1.5)
    expected = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]) @ np.array(
        [[1.02, np.tan(np.radians(1.0))], [0.0, 1.02]]
    )
    np.testing.assert_allclose(fitted.T, expected, atol=1e-12)
    np.testing.assert_allclose(true.mean(axis=0), centre, atol=1e-12)


def test_drift_is_a_walk_whose_end_has_the_rms_asked_for():
    recorded = np.zeros((400, 2))
    ends = [
        StageErrors(drift=0.5).true_positions(recorded, 10.0, np.random.default_rng(seed))[-1]
        for seed in range(400)
    ]
    assert np.sqrt(np.mean(np.sum(np.square(ends), axis=1))) == pytest.approx(5.0, rel=0.1)
    walk = StageErrors(drift=0.5).true_positions(recorded, 10.0, np.random.default_rng(0))
    assert np.abs(np.diff(walk, axis=0)).max() < 1.0  # slow: each position close to the one before


def test_a_scan_with_stage_errors_records_the_clean_spiral_and_keeps_the_truth():
    clean = simulate(n_frames=60, frame_size=32, seed=2)
    sim = simulate(n_frames=60, frame_size=32, seed=2, stage=StageErrors(random=0.5))
    np.testing.assert_array_equal(sim.data.positions, clean.data.positions)
    pixel = sim.data.geometry.sample_pixel_size
    assert position_error(sim.data.positions, sim.true_positions, pixel) == pytest.approx(
        0.5 * scan_step(sim), rel=0.35
    )
    assert not np.array_equal(sim.data.frames, clean.data.frames)  # the frames come from the true positions


def test_true_positions_are_between_pixels_where_the_stage_errs_or_off_the_grid_and_on_them_where_not():
    def fractions(sim):
        return np.abs(
            grid_places(sim.true_positions, sim.object_origin, sim.data.geometry.sample_pixel_size)[1]
        )

    assert fractions(simulate(n_frames=60, frame_size=32, seed=2)).max() < 1e-6
    between = fractions(simulate(n_frames=60, frame_size=32, seed=2, stage=StageErrors(random=0.5)))
    assert np.median(between) > 0.1
    assert np.median(fractions(simulate(n_frames=60, frame_size=32, seed=2, on_grid=False))) > 0.1
    assert np.median(fractions(realistic(-1e-3, n_frames=60, frame_size=32))) > 0.1


def test_a_stage_error_scans_frames_are_made_at_the_true_positions_between_pixels():
    sim = simulate(n_frames=30, frame_size=32, photons=None, seed=3, stage=StageErrors(random=0.5))
    corners, offsets = grid_places(sim.true_positions, sim.object_origin, sim.data.geometry.sample_pixel_size)
    expected = far_field_intensity(sim.true_object, corners, sim.true_probe, offsets=offsets)
    tolerance = {"rtol": 1e-4, "atol": 1e-5 * expected.max()}
    np.testing.assert_allclose(sim.data.frames, expected, **tolerance)
    assert not np.allclose(
        sim.data.frames, far_field_intensity(sim.true_object, corners, sim.true_probe), **tolerance
    )


def test_a_frame_between_pixels_is_the_probe_moved_there():
    obj = porous_object((96, 96), np.random.default_rng(0))
    probe = aperture_probe((32, 32), 12.0)[None]
    corner = np.array([[30, 30]])

    def frame(row: int, offset: float) -> np.ndarray:
        return far_field_intensity(
            obj, corner + np.array([row, 0]), probe, offsets=np.array([[offset, 0.0]])
        )[0]

    at, below = frame(0, 0.0), frame(1, 0.0)
    scale = np.abs(below - at).max()
    np.testing.assert_allclose(frame(0, 1.0), below, atol=1e-3 * scale)  # one pixel: the next patch down
    between = frame(0, 0.5)
    assert np.abs(between - at).max() > 0.2 * scale and np.abs(between - below).max() > 0.2 * scale
    np.testing.assert_allclose(between, (at + below) / 2, atol=0.5 * scale)


def test_the_simulated_beamline_images_its_sample_where_the_stage_is_between_pixels():
    sample = SimulatedSample.create(frame_size=32)
    pixel_y, pixel_x = sample.geometry.sample_pixel_size
    x, y = 3.2 * pixel_x, -1.0 * pixel_y  # stage 0 is a pixel's centre: (3.2, -1) px is 0.2 px past one
    at, across = sample.intensity(x, y), sample.intensity(x + pixel_x, y)
    scale = np.abs(across - at).max()
    np.testing.assert_allclose(sample.intensity(x + 0.8 * pixel_x, y), across, atol=0.3 * scale)
    between = sample.intensity(x + 0.3 * pixel_x, y)  # 0.5 px: rounding would make it ``at`` or ``across``
    assert np.abs(between - at).max() > 0.2 * scale and np.abs(between - across).max() > 0.2 * scale
    assert np.abs(sample.intensity(x - 0.1 * pixel_x, y) - at).max() > 0.05 * scale


def test_a_fly_scan_blurs_each_frame_along_the_scan_and_records_the_middle():
    step_scan = simulate(n_frames=40, frame_size=32, photons=None, seed=1)
    fly = simulate(n_frames=40, frame_size=32, photons=None, seed=1, fly_motion=0.6)
    np.testing.assert_allclose(fly.true_positions, step_scan.true_positions)
    path = fly.fly_path
    pixel = fly.data.geometry.sample_pixel_size
    travelled = np.linalg.norm(path[-1] - path[0], axis=1) / pixel[0]
    assert np.median(travelled) == pytest.approx(0.6 * scan_step(fly), abs=1.5)
    np.testing.assert_allclose(path.mean(axis=0), fly.true_positions, atol=pixel[0])
    # each frame is the mean of the frames at the samples of its motion, on the true object
    corners, offsets = grid_places(path, fly.object_origin, pixel)
    expected = np.mean(
        [
            far_field_intensity(fly.true_object, at, fly.true_probe, offsets=off)
            for at, off in zip(corners, offsets, strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(fly.data.frames, expected, rtol=1e-4, atol=1e-3 * expected.max())

    def contrast(frames):
        return float(np.mean(frames.std(axis=(1, 2)) / frames.mean(axis=(1, 2))))

    assert contrast(fly.data.frames) < contrast(step_scan.data.frames)


def test_fly_path_samples_every_pixel_of_the_motion():
    positions = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    path = fly_path(positions, 4.0, (1.0, 1.0))
    assert path.shape == (5, 3, 2)
    np.testing.assert_allclose(path[:, 0, 0], [-2, -1, 0, 1, 2])  # towards the next position
    np.testing.assert_allclose(path[:, 2, 1], [8, 9, 10, 11, 12])  # the last: along the one before


def test_a_drifting_probe_changes_power_through_the_scan_as_its_frames_show():
    drift = ProbeDrift(intensity=0.2, shift=1.0, defocus=20e-6)
    sim = simulate(
        n_frames=160, frame_size=32, photons=None, seed=4, object_kind="weak_phase", probe_drift=drift
    )
    probes = sim.true_probes
    assert probes.shape == (PROBE_DRIFT_STAGES, *sim.true_probe.shape)
    np.testing.assert_array_equal(probes[0], sim.true_probe)
    power = np.sum(np.abs(probes) ** 2, axis=(1, 2, 3)) / np.sum(np.abs(probes[0]) ** 2)
    assert np.abs(power - 1).max() == pytest.approx(
        0.2, abs=1e-3
    )  # the largest excursion is the one asked for
    assert not np.allclose(np.abs(probes[-1]) / np.sqrt(power[-1]), np.abs(probes[0]), atol=1e-3)  # it moved
    stages = stage_of_frames(len(sim.data.frames), PROBE_DRIFT_STAGES)
    photons = sim.data.frames.sum(axis=(1, 2))
    per_stage = np.array([photons[stages == stage].mean() for stage in range(PROBE_DRIFT_STAGES)])
    assert np.corrcoef(per_stage, power)[0, 1] > 0.95


def test_stage_of_frames_gives_equal_shares_in_order():
    stages = stage_of_frames(100, 16)
    assert stages[0] == 0 and stages[-1] == 15 and np.all(np.diff(stages) >= 0)
    assert np.bincount(stages).min() >= 6


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: StageErrors(random=-0.5), "StageErrors.random"),
        (lambda: StageErrors(drift=float("nan")), "StageErrors.drift"),
        (lambda: StageErrors(scale=1.5), "StageErrors.scale"),
        (lambda: ProbeDrift(intensity=1.2), "ProbeDrift.intensity"),
    ],
)
def test_impossible_imperfections_are_refused_by_name(make, named):
    with pytest.raises(ValueError, match=named):
        make()
