"""A simulated ophyd ptychography beamline: devices, plans and the imaged sample."""

from ..scan_metadata import PTYCHO_KEYS
from .devices import (
    AD_HDF5_DATASET,
    DetectorLayout,
    HDF5PtychoDetector,
    PtychoDetector,
    SampleStage,
    simulated_beamline,
)
from .plans import fermat_spiral_ptycho_scan, ptycho_metadata, raster_ptycho_scan
from .sample import SimulatedSample

__all__ = [
    "AD_HDF5_DATASET",
    "PTYCHO_KEYS",
    "DetectorLayout",
    "HDF5PtychoDetector",
    "PtychoDetector",
    "SampleStage",
    "SimulatedSample",
    "fermat_spiral_ptycho_scan",
    "ptycho_metadata",
    "raster_ptycho_scan",
    "simulated_beamline",
]
