"""Each algorithm reconstructs simulated data to the quality the solver promises."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import (
    ReconstructionSettings,
    Reconstructor,
    fourier_r_factor,
    object_error,
    position_error,
    simulate,
)
from bluesky_ptycho.solver.engine import CHUNK_BYTES
from bluesky_ptycho.solver.positions import move_positions, offset_bound

ITERATIONS = {"rpie": 100, "epie": 150, "dm": 100, "lsqml": 100}
CASES = [*ITERATIONS.items(), ("lsqml-gaussian", 100)]


def settings_for(case: str, **extra) -> ReconstructionSettings:
    if case == "lsqml-gaussian":
        return ReconstructionSettings(algorithm="lsqml", options={"noise_model": "gaussian"}, **extra)
    return ReconstructionSettings(algorithm=case, **extra)


def reconstruct(sim, settings, probe, iterations):
    reconstructor = Reconstructor(sim.data.geometry, settings, probe=probe)
    reconstructor.add_frames(sim.data.frames, sim.data.positions)
    return reconstructor.iterate(iterations).result()


@pytest.mark.parametrize(("case", "iterations"), CASES)
def test_noise_free_reconstruction(case, iterations, clean_sim, wrong_probe, device):
    result = reconstruct(clean_sim, settings_for(case, device=device), wrong_probe, iterations)
    error = object_error(result, clean_sim)
    assert error <= 0.05, f"{case}: object error {error:.4f}"
    assert result.cost_history[-1] < 0.05 * result.cost_history[0]


@pytest.mark.parametrize(("case", "iterations"), CASES)
def test_poisson_noise_reconstruction(case, iterations, noisy_sim, wrong_probe, device):
    result = reconstruct(noisy_sim, settings_for(case, device=device), wrong_probe, iterations)
    error = object_error(result, noisy_sim)
    assert error <= 0.10, f"{case}: object error {error:.4f}"


def test_mixed_state_probe_fits_mixed_data_better(wrong_probe):
    sim = simulate(n_frames=200, frame_size=64, photons=None, probe_modes=3, seed=5)
    r_factors = {}
    for modes in (1, 3):
        settings = ReconstructionSettings(algorithm="lsqml", probe_modes=modes)
        result = reconstruct(sim, settings, wrong_probe, 80)
        assert result.probe.shape[0] == modes
        r_factors[modes] = fourier_r_factor(result, sim.data)
    assert r_factors[3] < 0.7 * r_factors[1], r_factors


def test_probe_modes_stay_orthogonal(noisy_sim, wrong_probe):
    result = reconstruct(noisy_sim, ReconstructionSettings(probe_modes=3), wrong_probe, 10)
    flat = result.probe.reshape(3, -1)
    gram = np.abs(flat.conj() @ flat.T)
    off_diagonal = gram - np.diag(np.diag(gram))
    assert off_diagonal.max() < 1e-3 * gram.max()
    powers = np.diag(gram)
    assert np.all(np.diff(powers) <= 0), "modes must be sorted strongest first"


@pytest.mark.parametrize("algorithm", ["rpie", "lsqml", "dm"])
def test_position_correction_reduces_position_error_and_says_how_far_it_moved(algorithm, wrong_probe):
    sim = simulate(n_frames=200, frame_size=64, photons=1e6, position_error=1.0, seed=6)
    pixel = sim.data.geometry.sample_pixel_size
    settings = ReconstructionSettings(
        algorithm=algorithm, position_correction=True, position_correction_start=10
    )
    result = reconstruct(sim, settings, wrong_probe, 120)
    before = position_error(sim.data.positions, sim.true_positions, pixel)
    after = position_error(result.positions, sim.true_positions, pixel)
    assert after < 0.6 * before, f"RMS position error {before:.2f} px -> {after:.2f} px"
    moved = np.hypot(*((result.positions - sim.data.positions) / pixel[::-1]).T)
    record = result.extra["position_refinement"]
    assert record["moved_rms_px"] == pytest.approx(np.sqrt(np.mean(moved**2)), rel=1e-6)
    assert record["moved_max_px"] == pytest.approx(moved.max(), rel=1e-6) and moved.max() > 0.5
    assert record["frames_at_bound"] == 0 and not result.warnings


@pytest.mark.parametrize("algorithm", ["rpie", "lsqml", "dm"])
def test_position_step_is_the_share_of_the_least_squares_shift_taken(algorithm, noisy_sim, wrong_probe):
    def moves(step: float) -> np.ndarray:
        settings = ReconstructionSettings(
            algorithm=algorithm,
            position_correction=True,
            position_correction_start=0,
            position_step=step,
            max_position_step=100.0,  # no move clipped: the share shows whole
        )
        result = reconstruct(noisy_sim, settings, wrong_probe, 1)
        return (result.positions - noisy_sim.data.positions) / noisy_sim.data.geometry.sample_pixel_size[::-1]

    full, quarter = moves(1.0), moves(0.25)
    assert np.abs(full).max() > 0.05
    np.testing.assert_allclose(quarter, 0.25 * full, atol=1e-6 * np.abs(full).max())


def test_positions_that_run_away_are_held_at_the_bound_and_the_record_warns(noisy_sim):
    data = noisy_sim.data
    settings = ReconstructionSettings(position_correction=True, iterations=1)
    reconstructor = Reconstructor.from_data(data, settings)
    state = reconstructor.state
    bound = offset_bound(state.frame_shape)
    runaway = np.zeros((len(data), 2))
    runaway[::7] = (3 * bound, -bound)  # far out of the scan: as a diverging refinement would move them
    move_positions(state, [(np.arange(len(data)), runaway)])
    reconstructor.iterate(1)
    result = reconstructor.result()
    assert np.all(np.isfinite(result.positions))
    moved = np.hypot(*((result.positions - data.positions) / data.geometry.sample_pixel_size[::-1]).T)
    np.testing.assert_allclose(moved[::7], bound)
    assert moved.max() <= bound * (1 + 1e-9)
    record = result.extra["position_refinement"]
    assert record["frames_at_bound"] == len(moved[::7]) and record["bound_px"] == bound
    assert any(f"{len(moved[::7])} frames were held at {bound:g} pixels" in w for w in result.warnings)


def test_no_refinement_no_record(noisy_sim):
    result = Reconstructor.from_data(noisy_sim.data, ReconstructionSettings(iterations=1)).iterate().result()
    assert "position_refinement" not in result.extra


@pytest.fixture(scope="module")
def chunked_and_whole(noisy_sim, wrong_probe):
    """The same data reconstructed in 4 chunks of 50 iterations and in one batch of 200."""
    data = noisy_sim.data
    whole = reconstruct(noisy_sim, ReconstructionSettings(algorithm="rpie"), wrong_probe, 200)
    chunked = Reconstructor(data.geometry, ReconstructionSettings(algorithm="rpie"), probe=wrong_probe)
    for chunk in np.array_split(np.arange(len(data)), 4):  # in scan order: the scan grows outwards
        chunked.add_frames(data.frames[chunk], data.positions[chunk])
        chunked.iterate(50)
    return chunked.result(), whole


def test_adding_frames_in_chunks_grows_the_canvas(chunked_and_whole, noisy_sim):
    result, whole = chunked_and_whole
    assert result.iterations == whole.iterations == 200
    assert result.n_frames == len(noisy_sim.data)
    assert result.object.shape[0] >= whole.object.shape[0] - 8
    np.testing.assert_allclose(result.positions, noisy_sim.data.positions, atol=1e-12)


def test_adding_frames_in_chunks_matches_one_batch(chunked_and_whole, noisy_sim):
    result, whole = chunked_and_whole
    whole_error, chunked_error = object_error(whole, noisy_sim), object_error(result, noisy_sim)
    assert chunked_error <= 1.2 * whole_error, (whole_error, chunked_error)


def test_a_reconstruction_continues_with_other_settings(noisy_sim):
    """Previews in rPIE with one mode, then the final in LSQ-ML with three: no jump in the cost."""
    data = noisy_sim.data
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings())
    reconstructor.add_frames(data.frames, data.positions).iterate(30)
    before = reconstructor.cost_history[-1]
    reconstructor.use_settings(ReconstructionSettings.final()).iterate(30)
    result = reconstructor.result()
    assert result.probe.shape[0] == 3 and result.settings["algorithm"] == "lsqml"
    assert reconstructor.cost_history[30] < 2 * before and result.final_cost <= before
    assert "divergence" not in result.extra


@pytest.mark.parametrize(
    ("frame", "modes", "threads"),
    [(256, 3, 2), (256, 5, 2), (256, 1, 2), (128, 3, 2), (64, 5, 2), (64, 3, 4)],
)
def test_chunks_share_their_transforms_out_evenly_among_the_fft_threads(frame, modes, threads):
    sim = simulate(n_frames=4, frame_size=frame, photons=1e5, seed=0)
    settings = ReconstructionSettings(probe_modes=modes, fft_workers=threads)
    reconstructor = Reconstructor(sim.data.geometry, settings)
    reconstructor.add_frames(sim.data.frames, sim.data.positions).iterate(1)
    state, batch = reconstructor.state, np.arange(201)
    chunks = reconstructor.engine.chunks(batch, state)
    assert np.array_equal(np.concatenate(chunks), batch)
    *whole, _ = chunks  # the last takes what is left
    assert all(len(chunk) * modes % threads == 0 for chunk in whole)
    frames_per_share = threads // np.gcd(threads, modes)
    largest = max(CHUNK_BYTES, frames_per_share * state.probe.nbytes)
    assert max(len(chunk) for chunk in chunks) * state.probe.nbytes <= largest
    assert max(map(len, whole)) - min(map(len, whole)) <= frames_per_share  # balanced
