"""Ptychography scan plans that record the geometry in the start document.

The geometry lands in ``start["ptycho"]`` (the keys of
:data:`bluesky_ptycho.scan_metadata.PTYCHO_KEYS`), which is what
:class:`bluesky_ptycho.callbacks.PtychoCallback` reads.
"""

# no ``from __future__ import annotations``: Bluesky Queue Server reads the plans' parameter types
# from their signatures, and string annotations naming classes outside its namespace fail its checks
from collections.abc import Generator

import bluesky.plans as bp
import numpy as np

from ..solver.simulate import fermat_spiral
from .devices import PtychoDetector, SampleStage


def ptycho_metadata(
    detector: PtychoDetector, stage: SampleStage, positions: np.ndarray | None = None
) -> dict:
    """The ``start["ptycho"]`` dictionary for a scan of ``stage`` imaged by ``detector``.

    ``positions`` (N, 2) x, y in micrometres, when given, set ``scan_area``.
    """
    area = {}
    if positions is not None:
        (x_min, y_min), (x_max, y_max) = np.min(positions, axis=0), np.max(positions, axis=0)
        area["scan_area"] = [float(x_min), float(x_max), float(y_min), float(y_max)]
    return {
        "detector": detector.name,
        "data_key": detector.image.name,
        "x_key": stage.x.readback.name,
        "y_key": stage.y.readback.name,
        "position_unit": "um",
        "photon_energy_ev": float(detector.photon_energy.get()),
        "detector_distance_m": float(detector.detector_distance.get()),
        "detector_pixel_size_m": float(detector.pixel_size.get()),
        **area,
    }


def fermat_spiral_ptycho_scan(
    detector: PtychoDetector,
    stage: SampleStage,
    n_points: int = 200,
    step_um: float = 0.3,
    md: dict | None = None,
) -> Generator:
    """Scan ``n_points`` positions on a Fermat spiral (mean neighbour distance ``step_um``)."""
    positions = fermat_spiral(n_points, step_um)
    md = {
        "plan_name": "fermat_spiral_ptycho_scan",
        "ptycho": ptycho_metadata(detector, stage, positions),
        **(md or {}),
    }
    return (
        yield from bp.list_scan(
            [detector], stage.x, list(positions[:, 0]), stage.y, list(positions[:, 1]), md=md
        )
    )


def raster_ptycho_scan(
    detector: PtychoDetector,
    stage: SampleStage,
    shape: tuple[int, int] = (15, 15),
    step_um: float = 0.3,
    md: dict | None = None,
) -> Generator:
    """Scan a ``shape`` (rows, columns) raster of step ``step_um``, centred, row by row."""
    rows, cols = shape
    ys, xs = np.meshgrid(
        (np.arange(rows) - (rows - 1) / 2) * step_um,
        (np.arange(cols) - (cols - 1) / 2) * step_um,
        indexing="ij",
    )
    positions = np.column_stack([xs.ravel(), ys.ravel()])
    md = {
        "plan_name": "raster_ptycho_scan",
        "ptycho": ptycho_metadata(detector, stage, positions),
        **(md or {}),
    }
    return (yield from bp.list_scan([detector], stage.x, list(xs.ravel()), stage.y, list(ys.ravel()), md=md))
