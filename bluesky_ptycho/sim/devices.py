"""Simulated ophyd devices of a ptychography beamline: a sample stage and a detector."""

from __future__ import annotations

import numpy as np
from ophyd import Component, Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import StatusBase

from ..solver.data import ELECTRON_VOLT
from .sample import SimulatedSample

MICROMETRE = 1e-6


class SampleStage(Device):
    """Sample stage with x and y motors in micrometres."""

    x = Component(SynAxis, kind="hinted")
    y = Component(SynAxis, kind="hinted")


class PtychoDetector(Device):
    """A detector that records the far-field diffraction of the simulated sample.

    Each trigger images the sample at the stage's current position, with
    Poisson noise; the frame is put inline in the event (``image``). Photon
    energy (eV), detector distance (m) and pixel size (m) are configuration
    signals, so they land in the descriptor.

    Parameters
    ----------
    stage
        The :class:`SampleStage` that moves the sample.
    sample
        What is imaged; default :meth:`SimulatedSample.create`.
    seed
        Seed of the photon noise.
    """

    image = Component(Signal, kind="hinted")
    photon_energy = Component(Signal, kind="config")
    detector_distance = Component(Signal, kind="config")
    pixel_size = Component(Signal, kind="config")

    def __init__(
        self, *args, stage: SampleStage, sample: SimulatedSample | None = None, seed: int = 0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.sample_stage = stage
        self.sample = sample or SimulatedSample.create()
        self._rng = np.random.default_rng(seed)
        geometry = self.sample.geometry
        self.photon_energy.put(geometry.energy / ELECTRON_VOLT)
        self.detector_distance.put(geometry.detector_distance)
        self.pixel_size.put(geometry.detector_pixel_size)
        self.image.put(np.zeros(geometry.frame_shape, dtype=np.uint32))

    def acquire_frame(self) -> np.ndarray:
        """One noisy frame (photon counts) at the stage's current position."""
        x = self.sample_stage.x.position * MICROMETRE
        y = self.sample_stage.y.position * MICROMETRE
        return self._rng.poisson(self.sample.intensity(x, y)).astype(np.uint32)

    def trigger(self) -> StatusBase:
        self.image.put(self.acquire_frame())
        status = StatusBase()
        status.set_finished()
        return status


def simulated_beamline(
    frame_size: int = 64, photons: float = 1e6, probe_defocus: float | None = None, seed: int = 0
) -> tuple[SampleStage, PtychoDetector]:
    """A connected stage and detector, named "stage" and "det" (see :meth:`SimulatedSample.create`)."""
    stage = SampleStage(name="stage")
    sample = SimulatedSample.create(frame_size=frame_size, photons=photons, probe_defocus=probe_defocus)
    detector = PtychoDetector(name="det", stage=stage, sample=sample, seed=seed)
    return stage, detector
