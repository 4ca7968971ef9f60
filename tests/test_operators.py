"""Inner-product (adjoint) tests of the forward model and a finite-difference
check of the LSQ-ML gradient."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver.backend import make_backend, to_numpy
from bluesky_ptycho.solver.forward import (
    exit_wave_update,
    exit_waves_at,
    gather_patches,
    gaussian_cost,
    scatter_patches,
)
from bluesky_ptycho.solver.state import SolverState
from bluesky_ptycho.solver.updates import update_terms


@pytest.fixture(params=["compiled", "arrays"])
def backend(request, device):
    """On NumPy through the compiled kernels and through the array expressions CuPy runs; on ``device``."""
    return make_backend(device, compiled=request.param == "compiled")


def random_complex(xp, rng, shape, dtype=np.complex128):
    return xp.asarray((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype))


def inner(xp, a, b) -> complex:
    return complex(xp.vdot(a.ravel(), b.ravel()))


@pytest.fixture
def corners(xp):
    rng = np.random.default_rng(3)
    return xp.asarray(rng.integers(0, 40, size=(25, 2)))


def test_gather_scatter_are_adjoint(xp, corners):
    rng = np.random.default_rng(0)
    obj = random_complex(xp, rng, (56, 56))
    patches = random_complex(xp, rng, (25, 16, 16))
    scattered = xp.zeros_like(obj)
    scatter_patches(scattered, corners, patches)
    lhs = inner(xp, gather_patches(obj, corners, (16, 16)), patches)
    rhs = inner(xp, obj, scattered)
    assert abs(lhs - rhs) <= 1e-9 * abs(lhs)


def test_propagation_is_unitary_and_adjoint(xp, device, fft_library):
    rng = np.random.default_rng(1)
    x = random_complex(xp, rng, (4, 2, 32, 32))
    y = random_complex(xp, rng, (4, 2, 32, 32))
    backend = make_backend(device, fft_library if device == "cpu" else None)
    fft2, ifft2 = backend.fft2, backend.ifft2
    assert abs(inner(xp, fft2(x), y) - inner(xp, x, ifft2(y))) <= 1e-9 * abs(inner(xp, x, ifft2(y)))
    assert np.isclose(float(xp.linalg.norm(fft2(x))), float(xp.linalg.norm(x)), rtol=1e-12)


def test_exit_wave_operator_is_adjoint_to_update_terms(xp, corners, backend):
    """<P * gather(O), Y> == <O, scatter(sum_m conj(P_m) Y_m)> for two probe modes."""
    rng = np.random.default_rng(2)
    obj = random_complex(xp, rng, (56, 56))
    probe = random_complex(xp, rng, (2, 16, 16))
    y = random_complex(xp, rng, (25, 2, 16, 16))
    state = SolverState(
        backend, obj, probe, None, None, to_numpy(corners).astype(float), corners, np.zeros(2), (1.0, 1.0)
    )
    terms = update_terms(state, corners, y)
    lhs = inner(xp, exit_waves_at(obj, corners, probe, kernels=backend.kernels), y)
    assert abs(lhs - inner(xp, obj, terms.object_numerator)) <= 1e-9 * abs(lhs)
    assert abs(lhs - inner(xp, probe, terms.probe_numerator)) <= 1e-9 * abs(lhs)


def test_lsqml_gradient_matches_finite_differences(xp, corners, backend):
    """The LSQ-ML directions are (minus) the Wirtinger gradients of the amplitude cost."""
    rng = np.random.default_rng(4)
    shape = (16, 16)
    obj = random_complex(xp, rng, (56, 56)) * 0.3 + 1
    probe = random_complex(xp, rng, (2, *shape))
    true_obj = obj + 0.2 * random_complex(xp, rng, obj.shape)
    farfield = backend.fft2(exit_waves_at(true_obj, corners, probe))
    amplitude = xp.sqrt(xp.sum(xp.abs(farfield) ** 2, axis=1))
    state = SolverState(
        backend,
        obj,
        probe,
        amplitude,
        None,
        to_numpy(corners).astype(float),
        corners,
        np.zeros(2),
        (1.0, 1.0),
    )
    chi, _ = exit_wave_update(backend, probe, obj, corners, amplitude)
    terms = update_terms(state, corners, chi)
    object_gradient = -terms.object_numerator
    probe_gradient = -terms.probe_numerator

    def cost(o, p):
        return gaussian_cost(backend, o, p, corners, amplitude)

    step = 1e-6
    direction = random_complex(xp, rng, obj.shape)
    numeric = (cost(obj + step * direction, probe) - cost(obj - step * direction, probe)) / (2 * step)
    analytic = 2 * inner(xp, object_gradient, direction).real
    assert numeric == pytest.approx(analytic, rel=1e-4)
    direction = random_complex(xp, rng, probe.shape)
    numeric = (cost(obj, probe + step * direction) - cost(obj, probe - step * direction)) / (2 * step)
    analytic = 2 * inner(xp, probe_gradient, direction).real
    assert numeric == pytest.approx(analytic, rel=1e-4)
