"""The simulated specimen and beam that the simulated detector images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..solver.data import Geometry, PtychoData
from ..solver.probe import add_modes, normalize_power
from ..solver.simulate import (
    DEFAULT_DISTANCE,
    DEFAULT_ENERGY_J,
    DEFAULT_PIXEL,
    SimulatedData,
    aperture_probe,
    far_field_intensity,
    focused_probe,
    grid_places,
    test_object,
)


@dataclass
class SimulatedSample:
    """A complex test object, a probe and the geometry that images them.

    The object is centred on stage position (0, 0); it is ``object_extent``
    pixels wide, and the stage may move the beam within it.
    """

    geometry: Geometry
    object: np.ndarray
    probe: np.ndarray

    @classmethod
    def create(
        cls,
        frame_size: int = 64,
        object_size: int | None = None,
        photons: float = 1e6,
        probe_kind: str = "focused",
        probe_defocus: float | None = None,
        probe_modes: int = 1,
        energy: float = DEFAULT_ENERGY_J,
        detector_distance: float = DEFAULT_DISTANCE,
        detector_pixel_size: float = DEFAULT_PIXEL,
    ) -> SimulatedSample:
        """A sample with a Siemens-star object and a zone-plate (or aperture) probe.

        By default the object is 4 frames wide and the zone-plate probe is
        ``1.5 mm * (64 / frame_size)**2`` out of focus, so that the probe fills
        the same fraction of any frame size (about a third).
        """
        shape = (frame_size, frame_size)
        object_size = object_size or 4 * frame_size
        if probe_defocus is None:
            probe_defocus = 1.5e-3 * (64 / frame_size) ** 2
        geometry = Geometry.from_energy(energy, detector_distance, detector_pixel_size, shape)
        if probe_kind == "focused":
            probe = focused_probe(geometry, frame_size / 6, probe_defocus)
        else:
            probe = aperture_probe(shape, frame_size / 3)
        probe = normalize_power(add_modes(probe, probe_modes, weight=0.5), photons)
        return cls(geometry=geometry, object=test_object((object_size, object_size)), probe=probe)

    @property
    def origin(self) -> tuple[float, float]:
        """The stage position (x, y) in metres whose patch starts at the object's first pixel (stage (0, 0): the centre patch)."""
        py, px = self.geometry.sample_pixel_size
        h, w = self.geometry.frame_shape
        return (-(self.object.shape[1] - w) / 2 * px, -(self.object.shape[0] - h) / 2 * py)

    def truth(self, positions: np.ndarray) -> SimulatedData:
        """The truth for a scan of ``positions`` ((N, 2) x, y metres), for quality metrics."""
        frames = np.zeros((len(positions), *self.geometry.frame_shape), np.float32)
        return SimulatedData(
            data=PtychoData(frames=frames, positions=positions, geometry=self.geometry),
            true_object=self.object,
            true_probe=self.probe,
            true_positions=np.asarray(positions, dtype=float),
            object_origin=self.origin,
        )

    def intensity(self, x: float, y: float) -> np.ndarray:
        """Noise-free diffraction intensity (H, W) at stage position (x, y) in metres, centred.

        Where the stage puts the beam, between the object's pixels as a
        real stage does (:func:`.simulate.far_field_intensity`'s moved probe).
        """
        corner, offset = grid_places(np.array([x, y], float), self.origin, self.geometry.sample_pixel_size)
        h, w = self.geometry.frame_shape
        if not (0 <= corner[0] <= self.object.shape[0] - h and 0 <= corner[1] <= self.object.shape[1] - w):
            raise ValueError(f"stage position ({x:.3g}, {y:.3g}) m puts the beam outside the sample")
        return far_field_intensity(self.object, corner[None], self.probe, offsets=offset[None])[0]
