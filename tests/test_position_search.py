"""Frames stuck far from their true positions are found by their misfit and searched back (solver.position_search)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import NANOPROBE

from bluesky_ptycho.solver import (
    ProbeDrift,
    ReconstructionSettings,
    Reconstructor,
    position_error,
    simulate,
)
from bluesky_ptycho.solver.forward import exit_waves_at
from bluesky_ptycho.solver.position_search import search_stuck_frames
from bluesky_ptycho.solver.simulate import realistic

STUCK = np.array([17, 60, 111, 150])
OFF_BY = np.array([9.0, -7.0])  # pixels (rows, columns): further than gradient refinement reaches


def stuck(sim, settings: ReconstructionSettings, probe=None) -> Reconstructor:
    """A reconstruction (40 iterations, no refinement) of ``sim`` whose ``STUCK`` frames were recorded ``OFF_BY`` off."""
    data = sim.data
    recorded = data.positions.copy()
    recorded[STUCK] += OFF_BY[::-1] * data.geometry.sample_pixel_size[::-1]
    reconstructor = Reconstructor(data.geometry, settings, probe=probe)
    return reconstructor.add_frames(data.frames, recorded).iterate(40)


def pixel_errors(positions, true_positions, pixel_size) -> np.ndarray:
    return np.hypot(*((positions - true_positions) / pixel_size[::-1]).T)


def assert_the_stuck_frames_alone_are_moved_back(reconstructor: Reconstructor, sim) -> None:
    state = reconstructor.state
    before = state.positions.copy()
    state.position_gains.gains[:] = 2.0  # as if every frame had been on its way
    moved, record = search_stuck_frames(state, np.arange(state.n_frames), lambda part: [part])
    pixel = sim.data.geometry.sample_pixel_size
    errors = pixel_errors(state.metres(state.positions), sim.true_positions, pixel)
    assert np.all(errors[STUCK] < 1.5), errors[STUCK]
    others = np.setdiff1d(np.arange(state.n_frames), STUCK)
    assert np.array_equal(state.positions[others], before[others])
    assert np.array_equal(np.sort(moved), STUCK)
    assert record == {"searched": record["searched"], "moved": len(STUCK)}
    assert len(STUCK) <= record["searched"] <= 2 * len(STUCK)
    # the frames moved start their steps again from the settings' share
    assert np.all(state.position_gains.gains[STUCK] == 1.0) and np.all(
        state.position_gains.gains[others] == 2.0
    )


def test_the_stuck_frames_alone_are_searched_and_moved_back(noisy_sim, wrong_probe):
    assert_the_stuck_frames_alone_are_moved_back(
        stuck(noisy_sim, ReconstructionSettings(), wrong_probe), noisy_sim
    )


def test_frames_recorded_with_a_quarter_of_the_beam_are_not_searched(noisy_sim):
    """A beam glitch: without each frame's scale fitted those frames misfit the model, and would be moved."""
    data = noisy_sim.data
    glitched = np.array([30, 90, 140])
    frames = data.frames.astype(np.float32)
    frames[glitched] *= 0.25
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings())
    state = reconstructor.add_frames(frames, data.positions).iterate(40).state
    _, record = search_stuck_frames(state, np.arange(state.n_frames), lambda part: [part])
    assert record["moved"] == 0
    assert record["searched"] < len(glitched)  # a 3-sigma outlier or so by chance, not them


def test_at_a_low_dose_no_frame_is_moved_for_a_better_fit_by_chance():
    """1e4 photons a frame: some frames stand out by chance, and fit some point of some 300 tried a little better."""
    sim = realistic(-3e-3, photons=1e4, seed=11, **NANOPROBE)
    settings = replace(ReconstructionSettings.final().for_preview(), probe_defocus=-3e-3)
    result = Reconstructor.from_data(sim.data, settings).iterate().result()
    searches = result.extra["position_searches"]
    assert sum(search["searched"] for search in searches) > 0
    assert sum(search["moved"] for search in searches) == 0, searches


@pytest.fixture(scope="module")
def drifting_beam():
    """``noisy_sim``'s scan under a beam whose power wanders by up to 50 % through it."""
    return simulate(
        n_frames=200, frame_size=64, overlap=0.7, photons=1e6, seed=2, probe_drift=ProbeDrift(intensity=0.5)
    )


@pytest.mark.parametrize(
    "fitted",
    [
        {"intensity_correction": True},
        {"algorithm": "lsqml", "variable_probe_modes": 1},
        {"algorithm": "lsqml", "variable_probe_modes": 1, "intensity_correction": True},
    ],
    ids=["scales", "variable-probe", "both"],
)
def test_stuck_frames_are_found_where_each_frame_has_its_own_scale_or_probe(drifting_beam, fitted):
    """Both were fitted to the stuck frames where they were stuck, and would hold them there."""
    settings = ReconstructionSettings(**fitted, intensity_correction_start=10, variable_probe_start=10)
    reconstructor = stuck(drifting_beam, settings)
    variable = reconstructor.state.variable_probe
    if variable is not None:
        assert np.all(np.abs(variable.weights[STUCK]) > 0)
    assert_the_stuck_frames_alone_are_moved_back(reconstructor, drifting_beam)
    if variable is not None:
        assert not variable.weights[STUCK].any()


def test_half_a_step_of_random_error_is_refined_to_a_quarter_of_it_only_with_the_search(half_a_step_off):
    """The issue's case, the defocus given, previews' settings with the whole least-squares step."""
    sim = half_a_step_off
    pixel = sim.data.geometry.sample_pixel_size
    recorded = position_error(sim.data.positions, sim.true_positions, pixel)
    settings = ReconstructionSettings(position_correction=True, probe_defocus=-1e-3)
    refined = {}
    for every in (0, 30):
        result = (
            Reconstructor.from_data(sim.data, replace(settings, position_search_every=every))
            .iterate()
            .result()
        )
        refined[every] = position_error(result.positions, sim.true_positions, pixel)
    assert refined[30] < 0.25 * recorded < refined[0], (recorded, refined)
    searches = result.extra["position_searches"]
    assert [search["iteration"] for search in searches] == [40, 70]
    assert searches[0]["moved"] > 5


def test_no_search_is_made_or_recorded_where_it_is_off(noisy_sim, wrong_probe):
    data = noisy_sim.data
    settings = ReconstructionSettings(position_correction=True, position_search_every=0, iterations=40)
    reconstructor = Reconstructor(data.geometry, settings, probe=wrong_probe)
    result = reconstructor.add_frames(data.frames, data.positions).iterate().result()
    assert "position_searches" not in result.extra
    searched = reconstructor.use_settings(replace(settings, position_search_every=10)).iterate(1).result()
    assert searched.extra["position_searches"][0]["iteration"] == 40


def test_a_negative_search_interval_is_refused_by_name():
    with pytest.raises(ValueError, match="position_search_every"):
        ReconstructionSettings(position_search_every=-1)


def test_dm_starts_the_far_fields_of_the_frames_it_moved_from_the_model_there(noisy_sim, wrong_probe):
    """Stale far fields would hold the object where the frames were, and DM's refinement would pull them back."""
    data = noisy_sim.data
    recorded = data.positions.copy()
    recorded[STUCK] += OFF_BY[::-1] * data.geometry.sample_pixel_size[::-1]
    settings = ReconstructionSettings(algorithm="dm", position_correction=True, iterations=41)
    reconstructor = Reconstructor(data.geometry, settings, probe=wrong_probe)
    reconstructor.add_frames(data.frames, recorded).iterate()  # the search after iteration 40, the last
    assert reconstructor.extra["position_searches"][0]["moved"] >= len(STUCK)
    state, dm = reconstructor.state, reconstructor.engine
    rows = np.flatnonzero(np.isin(dm.order, [*STUCK, 0]))
    stored = np.stack([dm.farfield.read(slice(row, row + 1), dm.workspace[:1])[0].copy() for row in rows])
    model = np.fft.fft2(exit_waves_at(state.object, state.corners[dm.order[rows]], state.probe), norm="ortho")
    apart = np.sqrt(
        np.sum(np.abs(stored - model) ** 2, axis=(1, 2, 3)) / np.sum(np.abs(model) ** 2, axis=(1, 2, 3))
    )
    moved = np.isin(dm.order[rows], STUCK)
    assert np.all(apart[moved] < 1e-3) and np.all(apart[~moved] > 1e-2), apart


def test_a_candidate_is_tried_only_where_its_patch_keeps_the_canvas_rim(noisy_sim):
    state = Reconstructor.from_data(noisy_sim.data, ReconstructionSettings(iterations=1)).state
    last = np.array(state.object.shape) - state.frame_shape
    corners = np.array([[0, 5], [5, 0], [1, 1], last - 1, [last[0], 5], [5, last[1]]])
    assert state.within_rim(corners).tolist() == [False, False, True, True, False, False]
