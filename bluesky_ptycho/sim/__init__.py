"""A simulated ophyd ptychography beamline: devices, plans and the imaged sample."""

from .devices import PtychoDetector, SampleStage, simulated_beamline
from .plans import PTYCHO_KEYS, fermat_spiral_ptycho_scan, ptycho_metadata, raster_ptycho_scan
from .sample import SimulatedSample

__all__ = [
    "PTYCHO_KEYS",
    "PtychoDetector",
    "SampleStage",
    "SimulatedSample",
    "fermat_spiral_ptycho_scan",
    "ptycho_metadata",
    "raster_ptycho_scan",
    "simulated_beamline",
]
