"""An iteration's cost as measured: a fixed part over the canvas plus a part per frame."""

from __future__ import annotations

import pytest

from bluesky_ptycho.solver.iteration_cost import IterationCost


def test_the_fixed_part_and_the_part_per_frame_are_fitted_from_iterations_of_different_sizes():
    cost = IterationCost()
    with pytest.raises(ValueError, match="nothing measured"):
        cost.frames_in(1.0)
    assert cost.seconds(100) == 0.0
    cost.add(64, 0.2 + 64 * 0.002)
    assert (cost.fixed, cost.per_frame) == (0.0, pytest.approx(0.328 / 64))  # one size: all of it per frame
    cost.add(1000, 0.2 + 1000 * 0.002)
    cost.add(500, 0.2 + 500 * 0.002)
    assert cost.fixed == pytest.approx(0.2) and cost.per_frame == pytest.approx(0.002)
    assert cost.seconds(2000) == pytest.approx(4.2)
    assert cost.frames_in(1.2) == pytest.approx(500, abs=1)
    assert cost.frames_in(0.1) == 0  # not even the fixed part fits


def test_a_fit_that_makes_no_sense_falls_back_to_the_mean_cost_per_frame():
    cost = IterationCost()
    cost.add(100, 1.0)
    cost.add(200, 0.5)  # a busy machine: the larger iteration was faster
    assert cost.fixed == 0.0 and cost.per_frame == pytest.approx(1.5 / 300)


def test_old_measurements_are_forgotten_as_the_canvas_grows():
    cost = IterationCost(keep=2)
    for frames in (100, 200):
        cost.add(frames, 0.1 + frames * 0.001)
    for frames in (100, 200):
        cost.add(frames, 0.5 + frames * 0.001)
    assert cost.fixed == pytest.approx(0.5)
