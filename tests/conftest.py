"""Shared fixtures: simulated datasets and the array modules to test on."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import simulate
from bluesky_ptycho.solver.backend import gpu_available
from bluesky_ptycho.solver.simulate import aperture_probe

DEVICES = [
    "cpu",
    pytest.param("gpu", marks=pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every test that takes ``device`` runs on NumPy, and on CuPy where a GPU is present."""
    return request.param


@pytest.fixture
def xp(device):
    """The array module of ``device``."""
    from bluesky_ptycho.solver.backend import module_for_device

    return module_for_device(device)


@pytest.fixture(scope="session")
def clean_sim():
    """200 frames of 64 x 64, 70 % overlap, noise-free."""
    return simulate(n_frames=200, frame_size=64, overlap=0.7, photons=None, seed=1)


@pytest.fixture(scope="session")
def noisy_sim():
    """200 frames of 64 x 64, 70 % overlap, 1e6 photons per frame with Poisson noise."""
    return simulate(n_frames=200, frame_size=64, overlap=0.7, photons=1e6, seed=2)


@pytest.fixture(scope="session")
def wrong_probe() -> np.ndarray:
    """A reasonable but wrong starting probe: a flat-phase aperture 15 % too wide."""
    return aperture_probe((64, 64), 64 / 3 * 1.15, curvature=0.0)
