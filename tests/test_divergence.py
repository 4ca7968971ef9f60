"""No silent divergence: a diverging run recovers (recorded) or fails naming where; DM with modes converges."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bluesky_ptycho.solver import Geometry, ReconstructionSettings, Reconstructor, fourier_r_factor, simulate
from bluesky_ptycho.solver.data import ELECTRON_VOLT, geometry_warnings
from bluesky_ptycho.solver.simulate import realistic


@pytest.fixture(scope="module")
def small():
    return simulate(n_frames=100, frame_size=32, photons=1e5, seed=1)


@pytest.fixture(scope="module")
def measured_like():
    return realistic(1e-3, photons=1e5, n_frames=150, frame_size=64, seed=3)


def test_too_large_a_step_is_caught_restored_and_recorded(small, caplog):
    settings = ReconstructionSettings(object_step=3.0, probe_step=3.0)
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho"):
        reconstructor = Reconstructor.from_data(small.data, settings).iterate(40)
    result = reconstructor.result()
    assert result.extra["divergence"], "the run should have diverged and recovered"
    assert "rpie diverged at iteration" in caplog.text
    assert any("best state restored" in warning for warning in result.warnings)
    assert result.final_cost <= 1.01 * min(result.cost_history)
    assert max(result.cost_history) < 10 * min(result.cost_history[:3])
    assert result.settings["object_step"] < 3.0 and settings.object_step == 3.0, "the caller's settings stay"


@pytest.mark.parametrize("algorithm", ["rpie", "lsqml"])
def test_a_run_that_keeps_diverging_fails_naming_algorithm_iteration_and_cost(small, algorithm):
    settings = ReconstructionSettings(algorithm=algorithm, object_step=200.0, probe_step=200.0)
    with pytest.raises(FloatingPointError, match=rf"{algorithm} diverged at iteration \d+: cost \S+ against"):
        Reconstructor.from_data(small.data, settings).iterate(30)


def test_dm_with_three_modes_converges_on_measured_like_data(measured_like):
    data = measured_like.data
    settings = ReconstructionSettings(algorithm="dm", probe_modes=3, probe_defocus=1e-3)
    dm = Reconstructor.from_data(data, settings).iterate(60)
    history = np.array(dm.cost_history)
    assert "divergence" not in dm.extra
    assert history[-1] <= 1.05 * history.min() and history.max() < 10 * history.min()
    single = Reconstructor.from_data(data, ReconstructionSettings(probe_defocus=1e-3)).iterate(60)
    assert fourier_r_factor(dm.result(), data) <= 1.05 * fourier_r_factor(single.result(), data)


def test_new_frames_do_not_count_as_divergence(measured_like):
    data = measured_like.data
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(probe_defocus=1e-3), mask=data.mask)
    reconstructor.add_frames(data.frames[:30], data.positions[:30]).iterate(30)
    reconstructor.add_frames(data.frames[30:], data.positions[30:]).iterate(5)
    assert "divergence" not in reconstructor.extra


def test_suspicious_geometry_is_warned_about(small, caplog):
    electron_volts = Geometry.from_energy(8 * ELECTRON_VOLT, 2.0, 75e-6, (32, 32))
    warnings = geometry_warnings(electron_volts)
    assert any("photon energy 8 eV" in w for w in warnings)
    assert any("object pixel size" in w for w in warnings)
    assert geometry_warnings(small.data.geometry) == []
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho"):
        reconstructor = Reconstructor(electron_volts, ReconstructionSettings())
        reconstructor.add_frames(small.data.frames, small.data.positions)
    assert "photon energy 8 eV" in caplog.text
    assert any("photon energy 8 eV" in w for w in reconstructor.result().warnings)


def test_the_best_state_is_kept_in_memory_already_touched():
    """The best state is copied each time the cost improves: into the same buffers while the shapes stay."""
    from bluesky_ptycho.solver.reconstructor import copied_into

    canvas, kept = np.arange(12, dtype=np.complex64).reshape(3, 4), np.zeros((3, 4), np.complex64)
    assert copied_into(kept, canvas) is kept and np.array_equal(kept, canvas)
    grown = copied_into(kept, np.ones((4, 4), np.complex64))
    assert grown is not kept and grown.shape == (4, 4) and np.array_equal(kept, canvas)
    first = copied_into(None, canvas)
    assert first is not canvas and np.array_equal(first, canvas)
