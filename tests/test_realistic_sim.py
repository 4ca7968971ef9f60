"""The measured-like simulation is as hard as its docstring says."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver.probe import mode_powers
from bluesky_ptycho.solver.simulate import (
    DetectorModel,
    porous_object,
    probe_diameter,
    realistic,
    simulate,
    weak_phase_object,
)


@pytest.fixture(scope="module")
def sim():
    return realistic(-1e-3, photons=1e5, n_frames=120, frame_size=64, seed=1)


def test_partially_coherent_beam_with_unequal_modes(sim):
    powers = mode_powers(sim.true_probe)
    assert len(powers) == 3
    assert 0.6 < powers[0] < 0.9 and powers[1] > 0.02
    flat = sim.true_probe.reshape(3, -1)
    gram = flat.conj() @ flat.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-3 * abs(gram).max())


def test_zone_plate_disc_has_a_central_stop(sim):
    mean = np.where(sim.data.mask, sim.data.frames.mean(axis=0), np.nan)
    h, w = mean.shape
    y, x = np.indices(mean.shape)
    radius = np.hypot(y - h / 2, x - w / 2)
    ring = np.nanmean(mean[(radius > 4) & (radius < 8)])
    disc_edge = np.nanmax(mean)
    assert ring < 0.5 * disc_edge, "the central stop should darken the disc's middle"


def test_detector_spoils_pixels_and_masks_them(sim):
    mask, frames = sim.data.mask, sim.data.frames
    h, w = mask.shape
    assert not mask[h // 2, w // 2], "the beamstop is masked"
    assert 0.001 < 1 - mask.mean() < 0.02
    hot = (frames == frames.max()).all(axis=0)
    assert hot.any() and not (hot & mask).any(), "hot pixels are masked"
    bright = frames.mean(axis=0) > 0.5 * np.median(frames.mean(axis=0)[frames.mean(axis=0) > 1])
    dead_in_disc = (frames == 0).all(axis=0) & (np.roll(bright, 1, 0) & np.roll(bright, -1, 0))
    assert dead_in_disc.any() and not (dead_in_disc & mask).any(), "dead pixels are masked"


def test_positions_carry_errors_of_a_few_percent_of_the_step(sim):
    py, px = sim.data.geometry.sample_pixel_size
    error = np.hypot(*((sim.data.positions - sim.true_positions) / (px, py)).T)
    step = probe_diameter(sim.true_probe) * 0.3
    assert 0.01 * step < np.sqrt(np.mean(error**2)) < 0.08 * step


def test_weak_phase_object(sim):
    amplitude, phase = np.abs(sim.true_object), np.angle(sim.true_object)
    assert amplitude.min() > 0.95 and np.ptp(phase) > 0.3


def test_photons_per_frame_follow_the_request():
    low = realistic(1e-3, photons=1e4, n_frames=20, frame_size=64, seed=2)
    high = realistic(1e-3, photons=1e7, n_frames=20, frame_size=64, seed=2)
    ratio = (high.data.frames * high.data.mask).sum() / (low.data.frames * low.data.mask).sum()
    assert 500 < ratio < 2000


def test_detector_model_without_effects_is_poisson():
    rng = np.random.default_rng(0)
    counts, mask = DetectorModel().record(np.full((200, 8, 8), 50.0), rng)
    assert mask.all()
    assert counts.mean() == pytest.approx(50, rel=0.02) and counts.var() == pytest.approx(50, rel=0.1)


def test_unknown_object_kind_is_refused():
    with pytest.raises(ValueError, match="object_kind"):
        simulate(n_frames=4, frame_size=16, object_kind="cat")


def similarity(image: np.ndarray, corner: tuple[int, int], shift: tuple[int, int], size: int = 40) -> float:
    """Correlation coefficient of a ``size``² patch of ``image`` at ``corner`` with the patch ``shift`` pixels away."""
    (row, col), (down, right) = corner, shift
    patch = image[row : row + size, col : col + size]
    moved = image[row + down : row + down + size, col + right : col + right + size]
    return float(np.corrcoef(patch.ravel(), moved.ravel())[0, 1])


def test_porous_object_shows_a_shift_of_a_scan_step_in_every_direction():
    phase = np.angle(porous_object((240, 240), np.random.default_rng(3)))
    assert phase.min() >= 0 and phase.max() == pytest.approx(0.4, abs=0.01)
    assert 0.4 < np.mean(phase > 0.2) < 0.6  # pores and material share the area
    corner = (100, 170)
    assert similarity(phase, corner, (1, 0)) > 0.8 and similarity(phase, corner, (0, 1)) > 0.8  # not noise
    # a patch 10 px (a scan step) away looks different in any direction ...
    steps = [(10, 0), (0, 10), (7, 7), (7, -7)]
    assert max(similarity(phase, corner, step) for step in steps) < 0.4
    # ... where the star's patch there hardly changes along its spoke (radially)
    star = np.angle(weak_phase_object((240, 240)))
    assert similarity(star, corner, (0, 10)) > 0.8


def test_realistic_scan_of_a_porous_sample_keeps_the_scan():
    star = realistic(-1e-3, photons=1e5, n_frames=20, frame_size=64, seed=2)
    porous = realistic(-1e-3, photons=1e5, n_frames=20, frame_size=64, seed=2, object_kind="porous")
    np.testing.assert_array_equal(porous.data.positions, star.data.positions)
    assert np.abs(np.angle(porous.true_object) - np.angle(star.true_object)).max() > 0.2
    assert not np.array_equal(porous.data.frames, star.data.frames)
