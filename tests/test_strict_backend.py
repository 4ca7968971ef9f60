"""The strict (CuPy-like) array module, and the solver's GPU code path run on it without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, fourier_r_factor, object_error
from bluesky_ptycho.solver.backend import array_module, fft2, ifft2, module_for_device, to_numpy
from bluesky_ptycho.solver.simulate import realistic
from bluesky_ptycho.solver.strict import StrictArray

xp = module_for_device("strict")


def test_no_implicit_conversion_to_host_arrays():
    a = xp.asarray(np.arange(6.0).reshape(2, 3))
    assert isinstance(a, StrictArray) and array_module(a) is xp
    for convert in (np.asarray, np.array, lambda v: np.float64(1) * np.ones(3) + v.__array__()):
        with pytest.raises(TypeError, match="implicit conversion"):
            convert(a)
    total = xp.sum(a)
    assert isinstance(total, StrictArray) and total.shape == (), "reductions give 0-d arrays, as CuPy's do"
    assert float(total) == 15.0 and int(a[1, 2]) == 5 and bool(a[0, 1])
    np.testing.assert_array_equal(to_numpy(a * 2), np.arange(6.0).reshape(2, 3) * 2)
    b = a.copy()
    b[0] += 1
    assert isinstance(b, StrictArray) and float(b[0, 0]) == 1.0 and float(a[0, 0]) == 0.0


def test_ffts_and_linear_algebra_stay_strict():
    rng = np.random.default_rng(0)
    host = (rng.standard_normal((3, 8, 8)) + 1j * rng.standard_normal((3, 8, 8))).astype(np.complex64)
    spectrum = fft2(xp.asarray(host))
    assert isinstance(spectrum, StrictArray)
    np.testing.assert_allclose(to_numpy(ifft2(spectrum)), host, atol=1e-5)
    values, vectors = xp.linalg.eigh(xp.asarray(np.eye(3)))
    assert isinstance(values, StrictArray) and isinstance(vectors, StrictArray)


@pytest.fixture(scope="module")
def measured_like():
    return realistic(-1e-3, photons=1e5, n_frames=120, frame_size=64, seed=4)


@pytest.mark.parametrize(
    ("algorithm", "algorithm_options"),
    [("rpie", {}), ("epie", {}), ("dm", {}), ("dm", {"farfield_precision": "single"}), ("lsqml", {})],
)
def test_every_algorithm_with_modes_position_and_intensity_correction_and_a_varying_probe(
    measured_like, algorithm, algorithm_options
):
    data = measured_like.data
    options = {
        "algorithm": algorithm,
        "options": algorithm_options,
        "probe_modes": 2,
        "position_correction": True,
        "position_correction_start": 5,
        "intensity_correction": True,
        "intensity_correction_start": 5,
        # LSQ-ML alone fits a probe varying through the scan
        **({"variable_probe_modes": 1, "variable_probe_start": 5} if algorithm == "lsqml" else {}),
    }
    strict = Reconstructor.from_data(data, ReconstructionSettings(device="strict", **options))
    assert isinstance(strict.state.object, StrictArray) and isinstance(strict.state.probe, StrictArray)
    strict.iterate(15)
    host = Reconstructor.from_data(data, ReconstructionSettings(**options)).iterate(15)
    assert strict.extra["probe_defocus"] == pytest.approx(host.extra["probe_defocus"], rel=1e-3)
    result = strict.result()
    assert isinstance(result.object, np.ndarray) and isinstance(result.probe, np.ndarray)
    assert fourier_r_factor(result, data) <= 1.1 * fourier_r_factor(host.result(), data)
    assert object_error(result, measured_like) <= 1.2 * object_error(host.result(), measured_like) + 0.01


def test_the_defocus_estimate_runs_its_trials_on_the_device(measured_like):
    from bluesky_ptycho.solver.defocus import estimate_defocus

    data = measured_like.data
    host = estimate_defocus(data.frames, data.positions, data.geometry, data.mask)
    strict = estimate_defocus(data.frames, data.positions, data.geometry, data.mask, device="strict")
    assert strict.defocus == pytest.approx(host.defocus, rel=0.02)
    assert list(strict.trials) == list(host.trials)
