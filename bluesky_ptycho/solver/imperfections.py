"""What real scans do that a clean simulation does not: stage errors, fly-scan motion and a drifting probe.

Each is stated as a beamline scientist states it: position errors in scan
steps, a stage's scale error as a fraction, its rotation and shear in degrees,
a fly scan's motion during one exposure in steps, the probe's drift in
intensity (fraction), shift (pixels) and defocus (metres). :func:`.simulate`
takes them; the truth they make (every frame's true position and probe) is
kept with the simulated data, so what a reconstruction recovers is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Geometry
from .probe import propagate, shift_ramp

# a drifting probe is simulated as this many successive probes, each held for an equal share of the scan
PROBE_DRIFT_STAGES = 16


@dataclass(frozen=True)
class StageErrors:
    """Where the sample really was, against the positions the stage recorded.

    Parameters
    ----------
    random
        RMS (2-D) of an independent error at every position, in scan steps:
        a worn or fly-scanned stage, interferometer glitches.
    scale
        Relative scale error of the stage (0.02: the sample moved 2 % further
        than recorded).
    rotation
        Angle between the stage's axes and the detector's, degrees.
    shear
        Non-orthogonality of the stage's axes, degrees.
    drift
        RMS (2-D) of a random walk along the scan at its end, in scan steps:
        thermal or piezo drift.
    """

    random: float = 0.0
    scale: float = 0.0
    rotation: float = 0.0
    shear: float = 0.0
    drift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("random", "drift"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"StageErrors.{name} is an rms in scan steps, >= 0; got {getattr(self, name)!r}"
                )
        if not -1 < self.scale < 1:
            raise ValueError(f"StageErrors.scale is a relative error within (-1, 1); got {self.scale!r}")

    def true_positions(self, recorded: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
        """The true (x, y) positions of the ``recorded`` ones (N, 2), ``step`` the scan step in their unit."""
        centre = recorded.mean(axis=0)
        rotation, shear = np.radians(self.rotation), np.radians(self.shear)
        turn = np.array([[np.cos(rotation), -np.sin(rotation)], [np.sin(rotation), np.cos(rotation)]])
        stage = turn @ np.array([[1 + self.scale, np.tan(shear)], [0.0, 1 + self.scale]])
        true = centre + (recorded - centre) @ stage.T
        per_axis = step / np.sqrt(2)
        true += rng.normal(scale=self.random * per_axis, size=recorded.shape)
        walk = np.cumsum(
            rng.normal(scale=self.drift * per_axis / np.sqrt(len(recorded)), size=recorded.shape), 0
        )
        return true + walk


@dataclass(frozen=True)
class ProbeDrift:
    """A probe that changes slowly through the scan, by at most these amounts.

    Parameters
    ----------
    intensity
        Largest relative change of the probe's power (0.2: +-20 %).
    shift
        Largest lateral move of the beam, sample pixels.
    defocus
        Largest change of the sample's distance from the focus, metres.
    """

    intensity: float = 0.0
    shift: float = 0.0
    defocus: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.intensity < 1:
            raise ValueError(
                f"ProbeDrift.intensity is a relative change within [0, 1); got {self.intensity!r}"
            )

    def probes(self, probe: np.ndarray, geometry: Geometry, rng: np.random.Generator) -> np.ndarray:
        """``PROBE_DRIFT_STAGES`` successive probes (stages, modes, h, w), the first ``probe`` (to rounding).

        Each quantity follows its own random walk, scaled so that its largest
        excursion is the amount given.
        """
        walks = np.cumsum(rng.normal(size=(4, PROBE_DRIFT_STAGES)), axis=1)
        walks -= walks[:, :1]
        walks /= np.maximum(np.abs(walks).max(axis=1, keepdims=True), 1e-12)
        shape, spectrum = probe.shape[-2:], np.fft.fft2(probe)
        stages = []
        for power, shift_y, shift_x, defocus in walks.T:
            moved = np.fft.ifft2(spectrum * shift_ramp(shape, (self.shift * shift_y, self.shift * shift_x)))
            moved = propagate(moved.astype(np.complex64), geometry, self.defocus * defocus)
            stages.append(np.sqrt(1 + self.intensity * power) * moved)
        return np.stack(stages).astype(np.complex64)


def stage_of_frames(n_frames: int, stages: int) -> np.ndarray:
    """Which of ``stages`` successive probes lit each of ``n_frames`` frames (equal shares of the scan, in order)."""
    return np.arange(n_frames) * stages // n_frames


def fly_path(positions: np.ndarray, motion: float, pixel_size: tuple[float, float]) -> np.ndarray:
    """Where the sample was during each exposure of a fly scan: (samples, N, 2) (x, y), ``positions`` the middles.

    The sample moves ``motion`` (in the positions' unit) along the scan,
    towards the next position (the last along the one before), sampled at
    every sample pixel of the way (at least two samples).
    """
    direction = np.diff(positions, axis=0, append=positions[-1:] * 2 - positions[-2:-1])
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-30)
    samples = max(2, int(np.ceil(motion / min(pixel_size))) + 1)
    along = np.linspace(-motion / 2, motion / 2, samples)
    return positions[None] + along[:, None, None] * direction[None]
