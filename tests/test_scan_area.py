"""One object canvas for every result of a scan whose area is planned."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, simulate
from bluesky_ptycho.solver.scan_area import ScanArea


@pytest.fixture(scope="module")
def growing_results():
    """Results of a live reconstruction whose canvas grows as the spiral scan leaves it."""
    sim = simulate(n_frames=120, frame_size=32, seed=3)
    data = sim.data
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(iterations=2, seed=0))
    results = []
    for chunk in (slice(0, 20), slice(20, 60), slice(60, 120)):
        reconstructor.add_frames(data.frames[chunk], data.positions[chunk]).iterate(2)
        results.append(reconstructor.result())
    return ScanArea.of_positions(data.positions), results


def test_every_result_lands_on_one_canvas_at_its_place_in_metres(growing_results):
    area, results = growing_results
    assert len({r.object.shape for r in results}) == 3  # the canvas grew twice
    canvas = area.canvas_for(results[0])
    py, px = results[0].pixel_size
    for result in results:
        amplitude = np.abs(result.object)
        placed = canvas.place(result, amplitude, fill=-1.0)
        assert placed.shape == canvas.shape and placed.dtype == amplitude.dtype
        column, row = np.rint((np.asarray(result.object_origin) - canvas.origin) / (px, py)).astype(int)
        rows, cols = result.object.shape
        np.testing.assert_array_equal(placed[row : row + rows, column : column + cols], amplitude)
        outside = np.ones(canvas.shape, bool)
        outside[row : row + rows, column : column + cols] = False
        assert outside.any() and np.all(placed[outside] == -1.0)


def test_an_object_beyond_the_planned_area_is_refused(growing_results):
    _, results = growing_results
    too_small = ScanArea.of_positions(results[0].positions[:2])
    canvas = too_small.canvas_for(results[0])
    with pytest.raises(ValueError, match=r"does not fit .* canvas of the planned scan area"):
        canvas.place(results[-1], np.abs(results[-1].object), fill=0.0)


def test_positions_may_stray_by_half_a_field_of_view():
    area = ScanArea(0.0, 1e-6, 0.0, 2e-6)
    assert area.admits((1.2e-6, 2e-6), field_of_view=0.5e-6)
    assert not area.admits((1.3e-6, 1e-6), field_of_view=0.5e-6)
    assert not area.admits((0.5e-6, -0.3e-6), field_of_view=0.5e-6)


@pytest.mark.parametrize("values", [(1.0, 0.0, 0.0, 1.0), (0.0, 1.0, np.nan, 1.0)])
def test_a_bad_area_is_refused(values):
    with pytest.raises(ValueError, match="is not \\[x_min, x_max, y_min, y_max\\]"):
        ScanArea(*values)
