"""A batch's object update touches only the canvas its patches cover, and the batches of a large
scan come from spatially compact blocks: the work per frame does not grow with the scan."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor
from bluesky_ptycho.solver.backend import make_backend, sliding_windows
from bluesky_ptycho.solver.communicator import Communicator
from bluesky_ptycho.solver.positions import patch_gradients
from bluesky_ptycho.solver.regions import CanvasRegion, spatial_blocks
from bluesky_ptycho.solver.rpie import RPIE
from bluesky_ptycho.solver.simulate import fermat_spiral, simulate
from bluesky_ptycho.solver.updates import add_scaled_in, regularised_step, regularised_step_in

COMPILED = make_backend("cpu")
FRAME = (20, 13)


def covered_pixels(corners, canvas_shape) -> np.ndarray:
    """True at every canvas pixel some ``FRAME`` patch at ``corners`` lies on."""
    covered = np.zeros(canvas_shape, dtype=bool)
    for r, c in corners:
        covered[r : r + FRAME[0], c : c + FRAME[1]] = True
    return covered


@pytest.mark.parametrize("canvas_shape", [(90, 77), (96, 80), (41, 30)])
def test_a_region_holds_every_patch_pixel_once_and_little_else(canvas_shape):
    rng = np.random.default_rng(3)
    corners = np.stack(
        [
            rng.integers(0, canvas_shape[0] - FRAME[0] + 1, 7),
            rng.integers(0, canvas_shape[1] - FRAME[1] + 1, 7),
        ],
        axis=1,
    )
    region = CanvasRegion.covering(corners, FRAME, canvas_shape, tile=8)
    index = region.pixel_index
    assert len(np.unique(index)) == len(index), "each pixel once"
    assert index.min() >= 0 and index.max() < canvas_shape[0] * canvas_shape[1]
    in_region = np.zeros(canvas_shape, dtype=bool).ravel()
    in_region[index] = True
    in_region = in_region.reshape(canvas_shape)
    patches = covered_pixels(corners, canvas_shape)
    assert np.all(in_region[patches]), "every patch pixel is in the region"
    # and nothing beyond the tiles that some patch touches
    tiles_touched = np.zeros(canvas_shape, dtype=bool)
    for r, c in corners:
        tiles_touched[
            r // 8 * 8 : (r + FRAME[0] - 1) // 8 * 8 + 8, c // 8 * 8 : (c + FRAME[1] - 1) // 8 * 8 + 8
        ] = True
    assert np.array_equal(in_region, tiles_touched)


def canvas_sums(rng, canvas_shape, corners):
    """A batch's sums: zero outside the patches, as the algorithms leave them."""
    covered = covered_pixels(corners, canvas_shape)
    numerator = (
        (rng.standard_normal(canvas_shape) + 1j * rng.standard_normal(canvas_shape)) * covered
    ).astype(np.complex64)
    weights = (rng.random(canvas_shape) * covered).astype(np.float32)
    return numerator, weights


@pytest.mark.parametrize("kernels", [COMPILED.kernels, None], ids=["compiled", "arrays"])
def test_the_regularised_step_in_a_region_is_the_step_on_the_whole_canvas_and_clears_the_sums(kernels):
    rng = np.random.default_rng(5)
    canvas_shape = (70, 61)
    corners = np.array([[3, 4], [40, 2], [22, 45], [49, 47]])
    numerator, weights = canvas_sums(rng, canvas_shape, corners)
    obj = (1 + 0.1 * rng.standard_normal(canvas_shape)).astype(np.complex64)
    expected = obj + np.float32(0.7) * regularised_step(numerator, weights, 0.1)
    region = CanvasRegion.covering(corners, FRAME, canvas_shape)
    direction, sums = numerator.copy(), weights.copy()
    regularised_step_in(region, direction, sums, 0.1, kernels)
    assert not sums.any(), "the weights are cleared for the next batch"
    add_scaled_in(region, obj, direction, 0.7, kernels)
    assert not direction.any(), "and so is the numerator"
    assert obj.dtype == np.complex64
    np.testing.assert_allclose(obj, expected, rtol=2e-6, atol=2e-6)


def test_blocks_are_compact_and_split_only_large_scans():
    positions = fermat_spiral(5000, 1.0)
    assert [len(b) for b in spatial_blocks(positions, 5000)] == [5000]
    blocks = spatial_blocks(positions, 1000)
    assert sorted(np.concatenate(blocks)) == list(range(5000))
    assert all(500 <= len(b) <= 1000 for b in blocks)
    whole = np.ptp(positions, axis=0).prod()
    assert all(np.ptp(positions[b], axis=0).prod() < whole / 4 for b in blocks), "each block covers a part"


def test_a_small_scan_is_batched_as_one_block_and_a_large_one_block_by_block():
    engine = RPIE(ReconstructionSettings(algorithm="rpie"))

    class Scan:
        def __init__(self, n):
            self.positions = fermat_spiral(n, 10.0)
            self.n_frames = n
            self.comm = Communicator()

    small = engine.batches(Scan(700), np.random.default_rng(1))
    expected = np.array_split(np.random.default_rng(1).permutation(700), 11)
    assert all(np.array_equal(a, b) for a, b in zip(small, expected, strict=True)), "as before blocks"
    large = Scan(4000)
    batches = engine.batches(large, np.random.default_rng(1))
    assert sorted(np.concatenate(batches)) == list(range(4000)), "every frame once"
    block_of = np.empty(4000, int)
    for number, block in enumerate(spatial_blocks(large.positions)):
        block_of[block] = number
    assert all(len(set(block_of[b])) == 1 for b in batches), "each batch within one block"


def test_patch_gradients_are_the_central_differences_of_the_object():
    rng = np.random.default_rng(2)
    obj = (rng.standard_normal((60, 50)) + 1j * rng.standard_normal((60, 50))).astype(np.complex64)
    corners = np.array([[1, 1], [30, 20], [60 - FRAME[0] - 1, 50 - FRAME[1] - 1]])
    d_row, d_col = np.gradient(obj)
    for computed, whole in zip(patch_gradients(obj, corners, FRAME), (d_row, d_col), strict=True):
        expected = sliding_windows(whole.astype(np.complex64), FRAME)[corners[:, 0], corners[:, 1]]
        assert computed.dtype == np.complex64
        np.testing.assert_allclose(computed, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["rpie", "lsqml"])
def test_a_refined_position_never_leaves_its_patch_without_a_pixel_of_canvas(algorithm, noisy_sim):
    settings = ReconstructionSettings(
        algorithm=algorithm, position_correction=True, position_correction_start=0, max_position_step=3.0
    )
    reconstructor = Reconstructor.from_data(noisy_sim.data, settings)
    reconstructor.state.set_positions(
        reconstructor.state.positions - reconstructor.state.positions.min(axis=0)
    )
    assert reconstructor.state.host_corners.min() >= 1
    reconstructor.iterate(3)
    state = reconstructor.state
    assert state.host_corners.min() >= 1
    assert np.all(state.host_corners + state.frame_shape + 1 <= state.object.shape)
    assert np.isfinite(reconstructor.cost_history[-1])


def test_dm_visits_a_large_scan_block_by_block_and_each_frame_keeps_its_own_results():
    """DM stores and visits the far fields in spatially compact blocks; positions, scales and amplitudes
    stay with their frames, so the frames' order in the scan changes nothing but rounding."""
    data = simulate(n_frames=2400, frame_size=32, photons=1e5, position_error=1.0, seed=1).data
    rng = np.random.default_rng(2)
    shuffled = np.concatenate(
        [rng.permutation(1500), 1500 + rng.permutation(900)]
    )  # the same frames come first
    settings = ReconstructionSettings(
        algorithm="dm",
        position_correction=True,
        position_correction_start=0,
        intensity_correction=True,
        intensity_correction_start=2,
    )
    results = []
    for order in (np.arange(len(shuffled)), shuffled):
        reconstructor = Reconstructor(data.geometry, settings)
        reconstructor.add_frames(data.frames[order[:1500]], data.positions[order[:1500]])
        reconstructor.iterate(1)  # live: the rest arrive after an iteration
        reconstructor.add_frames(data.frames[order[1500:]], data.positions[order[1500:]])
        reconstructor.iterate(5)
        stored = reconstructor.engine.order
        assert sorted(stored) == list(range(2400)), "every frame's far fields once"
        first = spatial_blocks(data.positions[order[:1500]])
        assert np.array_equal(stored[: len(first[0])], first[0]), "block by block"
        results.append(reconstructor.result())
        if len(results) == 1:
            canvas_positions = reconstructor.state.positions  # pixels, as the patches' corners round them
    natural, permuted = results
    back = np.argsort(shuffled)
    np.testing.assert_allclose(
        permuted.positions[back], natural.positions, rtol=0, atol=1e-3 * min(natural.pixel_size)
    )
    # a frame resting on a half pixel, where refinement holds many (the patches start at whole pixels),
    # is patched from either neighbour as the rounding falls
    on_edge = np.any(np.abs(canvas_positions % 1 - 0.5) < 1e-3, axis=1)
    assert on_edge.mean() < 0.01  # 11 of 2400
    np.testing.assert_allclose(
        permuted.frame_scales[back][~on_edge], natural.frame_scales[~on_edge], rtol=1e-4
    )
    np.testing.assert_allclose(permuted.cost_history, natural.cost_history, rtol=1e-4)
    assert np.abs(natural.positions - data.positions).max() > 0.1 * min(natural.pixel_size), "refined"
