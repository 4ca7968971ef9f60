"""Bad input raises a ValueError naming the problem, never a bare NumPy error."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import Geometry, PtychoData, ReconstructionSettings, Reconstructor

GEOMETRY = Geometry(1.5e-10, 2.0, 75e-6, (32, 32))


def frames(n=10):
    return np.ones((n, 32, 32), np.float32)


def positions(n=10, step=1e-7):
    return np.stack([np.arange(n) * step, np.zeros(n)], axis=1)


@pytest.mark.parametrize(
    ("frames_", "positions_", "message"),
    [
        (frames(10), positions(9), "different lengths: 10 frames, 9 positions"),
        (np.full((10, 32, 32), np.nan, np.float32), positions(), "non-finite"),
        (-frames(), positions(), "negative counts"),
        (frames(0), positions(0), "empty"),
        (np.ones((10, 16, 16)), positions(), "geometry expects"),
        (frames(), np.ones((10, 3)), r"shape \(N, 2\)"),
        (np.ones((10, 1, 32, 32)), positions(), r"shape \(N, H, W\)"),
    ],
)
def test_bad_frames_and_positions(frames_, positions_, message):
    with pytest.raises(ValueError, match=message):
        Reconstructor(GEOMETRY).add_frames(frames_, positions_)
    with pytest.raises(ValueError, match=message):
        PtychoData(frames_, positions_, GEOMETRY)


def test_probe_larger_than_the_frames():
    with pytest.raises(ValueError, match="probe must have the frame shape"):
        Reconstructor(GEOMETRY, probe=np.ones((64, 64), np.complex64))


def test_positions_that_never_overlap():
    reconstructor = Reconstructor(GEOMETRY).add_frames(frames(), positions(step=1e-3))
    with pytest.raises(ValueError, match="do not overlap"):
        reconstructor.iterate(1)


def test_empty_reconstructor_cannot_iterate_or_snapshot():
    with pytest.raises(ValueError, match="empty"):
        Reconstructor(GEOMETRY).iterate(1)
    with pytest.raises(ValueError, match="empty"):
        Reconstructor(GEOMETRY).result()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithm": "magic"}, "algorithm must be one of"),
        ({"probe_modes": 0}, "probe_modes"),
        ({"options": {"alpha": 2.0}}, "alpha must be within"),
        ({"algorithm": "lsqml", "options": {"noise_model": "laplace"}}, "noise_model must be one of"),
        ({"algorithm": "dm", "options": {"relaxation": 0}}, "relaxation must be within"),
        ({"algorithm": "dm", "options": {"alpha": 0.5}}, "dm takes no option alpha"),
        (
            {"algorithm": "dm", "options": {"farfield_precision": "double"}},
            "farfield_precision must be one of",
        ),
        ({"algorithm": "epie", "options": {"alpha": 0.5}}, "epie takes no option alpha"),
        ({"options": {"batch_size": 0}}, "batch_size must be >= 1"),
        ({"device": "tpu"}, "device must be one of"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Reconstructor(GEOMETRY, ReconstructionSettings(**kwargs))


def test_bad_geometry_and_mask():
    with pytest.raises(ValueError, match="wavelength must be a positive"):
        Geometry(-1.0, 2.0, 75e-6, (32, 32))
    with pytest.raises(ValueError, match="mask has shape"):
        Reconstructor(GEOMETRY, mask=np.ones((16, 16), bool))
    with pytest.raises(ValueError, match="every detector pixel as bad"):
        Reconstructor(GEOMETRY, mask=np.zeros((32, 32), bool))
