"""The compiled CPU kernels give the numbers of the array expressions (the code CuPy runs),
and both FFT libraries give the same transforms."""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import replace

import numpy as np
import pytest
import scipy.fft

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, object_error
from bluesky_ptycho.solver.backend import FFTW_INSTALLED, make_backend
from bluesky_ptycho.solver.data import ProbeVariation
from bluesky_ptycho.solver.dm import fourier_update
from bluesky_ptycho.solver.forward import exit_waves_at, fourier_change
from bluesky_ptycho.solver.lsqml import step_products
from bluesky_ptycho.solver.positions import gradient_sums, subpixel_exit_waves
from bluesky_ptycho.solver.state import SolverState
from bluesky_ptycho.solver.updates import add_regularised_step, patch_overlap, update_terms
from bluesky_ptycho.solver.variable_probe import probe_change_sums

SHAPE = (16, 12)


def random_complex(rng, shape, dtype=np.complex64):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


COMPILED = make_backend("cpu")
ARRAYS = make_backend("cpu", compiled=False)


def both_ways(function, *args):
    """``function(*copies of args, kernels=...)`` through the compiled kernels and through the array expressions.

    Returns both results and both sets of (possibly modified in place) arguments.
    """
    compiled_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    array_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    compiled = function(*compiled_args, kernels=COMPILED.kernels)
    arrays = function(*array_args, kernels=None)
    return (compiled, compiled_args), (arrays, array_args)


def assert_close(a, b, rtol=2e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.abs(a - b).max() <= rtol * np.abs(b).max()


@pytest.fixture
def problem():
    """A small problem: 9 patches on a 30 x 28 object, 3 probe modes, measured amplitudes."""
    rng = np.random.default_rng(7)
    obj = random_complex(rng, (30, 28))
    probe = random_complex(rng, (3, *SHAPE))
    corners = rng.integers(0, 14, size=(9, 2))
    amplitude = np.abs(rng.standard_normal((12, *SHAPE))).astype(np.float32)
    mask = rng.random(SHAPE) > 0.1
    return rng, obj, probe, corners, amplitude, mask


@pytest.mark.parametrize("modes", [1, 3])
def test_exit_waves(problem, modes):
    _, obj, probe, corners, _, _ = problem
    (compiled, _), (arrays, _) = both_ways(exit_waves_at, obj, corners, probe[:modes])
    assert_close(compiled, arrays)
    out = np.zeros_like(arrays)
    assert exit_waves_at(obj, corners, probe[:modes], out=out, kernels=COMPILED.kernels) is out
    assert_close(out, arrays)


@pytest.mark.parametrize("modes", [1, 3])
@pytest.mark.parametrize("noise_model", ["gaussian", "poisson"])
@pytest.mark.parametrize("masked", [False, True])
def test_fourier_change(problem, modes, noise_model, masked):
    rng, _, _, _, amplitude, mask = problem
    farfield = random_complex(rng, (9, modes, *SHAPE))
    (cost, (changed, *_, photons)), (array_cost, (array_changed, *_, array_photons)) = both_ways(
        fourier_change, farfield, amplitude[:9], mask if masked else None, noise_model, np.zeros(9)
    )
    assert cost == pytest.approx(array_cost, rel=1e-5)
    assert_close(changed, array_changed)
    assert_close(photons, array_photons)
    assert array_photons.min() > 0
    if masked:
        assert np.all(changed[:, :, ~mask] == 0), "bad pixels keep the modelled far field"


@pytest.mark.parametrize("modes", [1, 3])
def test_update_terms(problem, modes):
    rng, obj, probe, corners, _, _ = problem
    state = SolverState(
        COMPILED, obj, probe[:modes], None, None, corners.astype(float), corners, np.zeros(2), (1, 1)
    )
    diff = random_complex(rng, (9, modes, *SHAPE))

    def terms(state, corners, diff, for_object, for_probe, kernels):
        backend = COMPILED if kernels is not None else ARRAYS
        return update_terms(replace(state, backend=backend), corners, diff, for_object, for_probe)

    for for_object, for_probe in [(True, True), (True, False), (False, True)]:
        (compiled, _), (arrays, _) = both_ways(terms, state, corners, diff, for_object, for_probe)
        for name in ("object_numerator", "illumination", "probe_numerator", "probe_weights"):
            expected = getattr(arrays, name)
            if expected is None:
                assert getattr(compiled, name) is None
            else:
                assert_close(getattr(compiled, name), expected)


@pytest.mark.parametrize("modes", [1, 3])
def test_position_gradient_sums(problem, modes):
    rng, obj, probe, corners, _, _ = problem
    corners = np.clip(corners, 1, 12)  # a pixel of canvas around each patch, as the canvas keeps
    state = SolverState(
        COMPILED, obj, probe[:modes], None, None, corners.astype(float), corners, np.zeros(2), (1, 1)
    )
    chi = random_complex(rng, (9, modes, *SHAPE))

    def sums(state, corners, chi, kernels):
        return gradient_sums(
            replace(state, backend=COMPILED if kernels is not None else ARRAYS), corners, chi
        )

    ((numerator, denominator), _), ((expected_numerator, expected_denominator), _) = both_ways(
        sums, state, corners, chi
    )
    assert numerator.shape == denominator.shape == (9, 2)
    assert_close(numerator, expected_numerator, rtol=1e-5)
    assert_close(denominator, expected_denominator, rtol=1e-5)


@pytest.mark.parametrize("modes", [1, 3])
@pytest.mark.parametrize("varies", [False, True])
def test_subpixel_exit_waves(problem, modes, varies):
    rng, obj, probe, corners, _, _ = problem
    corners = np.clip(corners, 1, 12)  # a pixel of canvas around each patch, as the canvas keeps
    state = SolverState(
        COMPILED, obj, probe[:modes], None, None, corners.astype(float), corners, np.zeros(2), (1, 1)
    )
    offsets = rng.uniform(-0.5, 0.5, (9, 2))
    variation = ProbeVariation(
        rng.standard_normal((9, 2)).astype(np.float32), random_complex(rng, (2, *SHAPE))
    )

    def waves(state, corners, offsets, kernels):
        backend = COMPILED if kernels is not None else ARRAYS
        return subpixel_exit_waves(
            replace(state, backend=backend), corners, offsets, variation if varies else None
        )

    (compiled, _), (arrays, _) = both_ways(waves, state, corners, offsets)
    assert_close(compiled, arrays)
    still = subpixel_exit_waves(state, corners, np.zeros((9, 2)), variation if varies else None)
    assert_close(still, exit_waves_at(obj, corners, probe[:modes], variation=variation if varies else None))


def test_patch_overlap(problem):
    rng, obj, probe, corners, _, _ = problem
    state = SolverState(COMPILED, obj, probe, None, None, corners.astype(float), corners, np.zeros(2), (1, 1))
    changed = obj + 0.1 * random_complex(rng, obj.shape)

    def overlap(state, first, second, kernels):
        return patch_overlap(
            replace(state, backend=COMPILED if kernels is not None else ARRAYS), first, second, state.corners
        )

    (compiled, _), (arrays, _) = both_ways(overlap, state, obj, changed)
    assert_close(compiled, arrays)
    expected = sum(
        obj[r : r + SHAPE[0], c : c + SHAPE[1]].conj() * changed[r : r + SHAPE[0], c : c + SHAPE[1]]
        for r, c in corners
    )
    assert_close(compiled, expected.astype(np.complex64))


def test_add_regularised_step(problem):
    rng, obj, probe, _, _, _ = problem
    weights = np.abs(rng.standard_normal(obj.shape)).astype(np.float32)
    (_, (target, *_)), (_, (array_target, *_)) = both_ways(
        add_regularised_step, obj, random_complex(rng, obj.shape), weights, 0.1, 0.7
    )
    assert_close(target, array_target)
    assert not np.allclose(target, obj)
    probe_weights = np.abs(rng.standard_normal(SHAPE)).astype(np.float32)
    (_, (target, *_)), (_, (array_target, *_)) = both_ways(
        add_regularised_step, probe, random_complex(rng, probe.shape), probe_weights, 0.5, 1.0
    )
    assert_close(target, array_target)
    strided = obj.copy()[:, ::2]
    expected = strided.copy()
    add_regularised_step(expected, strided, weights[:, ::2], 0.1, 1.0)
    add_regularised_step(strided, strided.copy(), weights[:, ::2], 0.1, 1.0, COMPILED.kernels)
    assert_close(strided, expected)


@pytest.mark.parametrize("beta", [1.0, 0.75])
@pytest.mark.parametrize("modes", [1, 3])
def test_difference_map_fourier_update(problem, beta, modes):
    rng, _, _, _, amplitude, mask = problem
    model = random_complex(rng, (12, modes, *SHAPE))
    farfield = random_complex(rng, (12, modes, *SHAPE))
    (cost, (_, updated, *_, photons)), (array_cost, (_, array_updated, *_, array_photons)) = both_ways(
        fourier_update, model, farfield, amplitude, mask, beta, np.zeros(12)
    )
    assert cost == pytest.approx(array_cost, rel=1e-5)
    assert_close(updated, array_updated)
    assert_close(photons, array_photons)
    assert array_photons.min() > 0


@pytest.mark.parametrize("modes", [1, 3])
@pytest.mark.parametrize("with_probe", [True, False])
def test_lsqml_step_products(problem, modes, with_probe):
    rng, obj, probe, corners, _, _ = problem
    direction = random_complex(rng, obj.shape)
    probe_direction = random_complex(rng, (modes, *SHAPE)) if with_probe else None
    chi = random_complex(rng, (9, modes, *SHAPE))
    (compiled, _), (arrays, _) = both_ways(
        step_products, obj, direction, probe[:modes], probe_direction, corners, chi
    )
    for ours, theirs in zip(compiled, arrays, strict=True):
        if theirs is None:
            assert ours is None
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.skipif(not FFTW_INSTALLED, reason="needs pyFFTW")
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float32])
def test_fftw_matches_scipy(dtype):
    rng = np.random.default_rng(3)
    x = random_complex(rng, (5, 2, *SHAPE), np.complex128)
    x = (x if np.issubdtype(dtype, np.complexfloating) else x.real).astype(dtype)
    expected = scipy.fft.fft2(x, norm="ortho")
    rtol = 1e-5 if np.finfo(dtype).bits == 32 else 1e-12
    fftw = make_backend("cpu", "fftw")
    assert_close(fftw.fft2(x), expected.astype(np.result_type(dtype, np.complex64)), rtol)
    unaligned = np.empty(x.size + 1, x.dtype)[1:].reshape(x.shape)  # offset by one element
    unaligned[...] = x
    assert_close(fftw.fft2(unaligned), fftw.fft2(x), rtol)
    in_place = x.astype(np.result_type(dtype, np.complex64))
    assert_close(fftw.ifft2(fftw.fft2(in_place, overwrite_x=True), overwrite_x=True), in_place.copy(), rtol)
    assert_close(fftw.ifft2(fftw.fft2(x)), x.astype(np.result_type(dtype, np.complex64)), rtol)


@pytest.mark.skipif(not FFTW_INSTALLED, reason="needs pyFFTW")
@pytest.mark.parametrize("shape", [(3, 4, 256, 256), (5, 15, 15)])
def test_fftw_runs_large_stacks_in_chunks_and_odd_frames(shape):
    """12 frames of 256 x 256 take two chunks with measured plans; 15 x 15 frames go to scipy.fft."""
    x = random_complex(np.random.default_rng(6), shape)
    fftw = make_backend("cpu", "fftw")
    assert_close(fftw.fft2(x), scipy.fft.fft2(x, norm="ortho"), 1e-5)
    assert_close(fftw.ifft2(x.copy(), overwrite_x=True), scipy.fft.ifft2(x, norm="ortho"), 1e-5)


@pytest.mark.skipif(not FFTW_INSTALLED, reason="needs pyFFTW")
def test_fftw_plans_are_safe_across_threads():
    """Threads reusing plans of the same shape on their own arrays all get their own transforms."""
    rng = np.random.default_rng(4)
    stacks = [random_complex(rng, (8, 1, *SHAPE)) for _ in range(4)]
    expected = [scipy.fft.fft2(s, norm="ortho") for s in stacks]
    errors = []
    fftw = make_backend("cpu", "fftw")

    def transform(index):
        for _ in range(200):
            result = fftw.fft2(stacks[index])
            if not np.allclose(result, expected[index], atol=1e-4):
                errors.append(index)
                return

    threads = [threading.Thread(target=transform, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _transform_in_child(queue, stack):
    queue.put(make_backend("cpu", "fftw", workers=2).fft2(stack))


@pytest.mark.skipif(not FFTW_INSTALLED, reason="needs pyFFTW")
def test_a_child_forked_after_threaded_fftw_still_transforms():
    """FFTW's thread pool does not survive fork(); a forked child must not hang in it."""
    stack = random_complex(np.random.default_rng(5), (8, 1, *SHAPE))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    make_backend("cpu", "fftw", workers=2).fft2(stack)
    child = context.Process(target=_transform_in_child, args=(queue, stack))
    child.start()
    result = queue.get(timeout=60)
    child.join(10)
    assert_close(result, scipy.fft.fft2(stack, norm="ortho"))


def test_unknown_fft_library_is_refused():
    with pytest.raises(ValueError, match="FFT library must be one of"):
        make_backend("cpu", "mkl")
    with pytest.raises(ValueError, match="fft_library must be one of"):
        ReconstructionSettings(fft_library="mkl")


@pytest.mark.parametrize("algorithm", ["rpie", "dm", "lsqml"])
@pytest.mark.parametrize("kernels", ["compiled", "arrays"])
def test_every_path_reconstructs(algorithm, kernels, clean_sim, wrong_probe):
    """Compiled kernels and array expressions, with scipy.fft, reconstruct equally well."""
    backend = make_backend("cpu", "scipy", compiled=kernels == "compiled")
    reconstructor = Reconstructor(
        clean_sim.data.geometry,
        ReconstructionSettings(algorithm=algorithm),
        probe=wrong_probe,
        backend=backend,
    )
    reconstructor.add_frames(clean_sim.data.frames, clean_sim.data.positions)
    reconstructor.iterate(100)
    result = reconstructor.result()
    assert object_error(result, clean_sim) <= 0.05
    assert result.extra["backend"] == backend.describe() and "scipy" in result.extra["backend"]


@pytest.mark.parametrize("modes", [1, 3])
def test_rotate_modes(problem, modes):
    from bluesky_ptycho.solver.probe import mode_rotation, rotate_modes

    rng, _, probe, *_ = problem
    waves = random_complex(rng, (5, modes, *SHAPE))
    rotation = mode_rotation(probe[:modes])
    (compiled, _), (arrays, _) = both_ways(rotate_modes, waves, rotation)
    assert_close(compiled, arrays)
    expected = np.einsum("jmyx,mk->jkyx", waves, rotation)
    assert_close(compiled, expected.astype(np.complex64), rtol=1e-5)
    rotated_probe = rotate_modes(probe[:modes], rotation)
    flat = rotated_probe.reshape(modes, -1)
    gram = flat.conj() @ flat.T
    assert np.abs(gram - np.diag(np.diag(gram))).max() <= 1e-4 * np.abs(gram).max()
    assert np.all(np.diff(np.diag(gram).real) <= 0), "strongest mode first"


@pytest.mark.parametrize("eigen", [1, 3])
def test_variable_probe_kernels(problem, eigen):
    """The variable probe's passes (:mod:`.variable_probe`): exit waves, object terms, probe changes, projections, sums."""
    rng, obj, probe, corners, _, _ = problem
    eigen_probes = random_complex(rng, (eigen, *SHAPE))
    weights = rng.standard_normal((9, eigen)).astype(np.float32)
    variation = ProbeVariation(weights, eigen_probes)
    waves = exit_waves_at(obj, corners, probe)

    def varied_waves(obj, corners, probe, kernels):
        return exit_waves_at(obj, corners, probe, kernels=kernels, variation=variation)

    (compiled_waves, _), (array_waves, _) = both_ways(varied_waves, obj, corners, probe)
    assert_close(compiled_waves, array_waves)
    assert not np.allclose(array_waves[:, 0], waves[:, 0]) and np.array_equal(
        array_waves[:, 1:], waves[:, 1:]
    )

    state = SolverState(COMPILED, obj, probe, None, None, corners.astype(float), corners, np.zeros(2), (1, 1))
    diff = random_complex(rng, (9, 3, *SHAPE))

    def terms(state, corners, diff, kernels):
        backend = COMPILED if kernels is not None else ARRAYS
        return update_terms(
            replace(state, backend=backend), corners, diff, for_probe=False, variation=variation
        )

    (compiled, _), (arrays, _) = both_ways(terms, state, corners, diff)
    assert_close(compiled.object_numerator, arrays.object_numerator)
    without = update_terms(replace(state, backend=ARRAYS), corners, diff, for_probe=False)
    assert not np.allclose(without.object_numerator, arrays.object_numerator)

    gain = rng.standard_normal((eigen, eigen))
    (compiled, _), (arrays, _) = both_ways(
        probe_change_sums, obj, corners, diff, 0.1, eigen_probes, weights, gain
    )
    for got, expected in zip(compiled, arrays, strict=True):
        assert_close(got, expected, rtol=1e-5)
