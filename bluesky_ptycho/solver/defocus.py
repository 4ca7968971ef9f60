"""The defocus of the initial probe: from the user, or estimated from the data.

Beamline ptychography is usually recorded with the sample out of the probe
focus. An initial probe without the right defocus leaves the algorithms stuck,
so when none is given we estimate it: every candidate defocus builds an
initial probe (:func:`~bluesky_ptycho.solver.probe.probe_from_mean_pattern`)
and is scored by the cost after a few cheap rPIE iterations on a compact
subset of frames; a coarse scan over both signs is refined around its best
value and a parabola through the three best points gives the estimate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .data import Geometry
from .probe import probe_from_mean_pattern

logger = logging.getLogger(__name__)

COARSE_CANDIDATES = 9
FINE_CANDIDATES = 4
TRIAL_FRAMES = 32
TRIAL_ITERATIONS = 4
CENTRAL_POWER_FOR_FOCUS = 0.2
SIGN_MARGIN = 0.9


@dataclass
class DefocusEstimate:
    """The chosen defocus (m, + = sample downstream of the focus) and how it was found."""

    defocus: float
    score: float
    candidates: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "probe_defocus": self.defocus,
            "probe_defocus_score": self.score,
            "probe_defocus_candidates": self.candidates,
            "probe_defocus_scores": self.scores,
            "probe_defocus_seconds": self.seconds,
        }


def radius_from_centre(pattern: np.ndarray) -> np.ndarray:
    """Distance in pixels of every pixel from the pattern's centre of mass."""
    y, x = np.indices(pattern.shape)
    total = pattern.sum()
    return np.hypot(y - (y * pattern).sum() / total, x - (x * pattern).sum() / total)


def bright_field_radius(mean_pattern: np.ndarray, fraction: float = 0.9) -> float:
    """Radius in detector pixels, about the pattern's centre of mass, holding ``fraction`` of its power."""
    total = mean_pattern.sum()
    radius = radius_from_centre(mean_pattern).ravel()
    order = np.argsort(radius)
    enclosed = np.cumsum(mean_pattern.ravel()[order]) / total
    return float(radius[order][min(np.searchsorted(enclosed, fraction), radius.size - 1)])


def looks_defocused(mean_pattern: np.ndarray) -> bool:
    """True when the mean diffraction pattern is a flat disc or ring rather than a central peak.

    A focused probe scatters most of its power into a bright central peak; a
    defocused one (or a filled zone-plate pupil) spreads it evenly over the
    bright-field disc. The test compares the power inside a quarter of the
    bright-field radius with the total (1/16 for a flat disc).
    """
    radius = bright_field_radius(mean_pattern)
    central = mean_pattern[radius_from_centre(mean_pattern) <= radius / 4].sum() / mean_pattern.sum()
    return bool(central < CENTRAL_POWER_FOR_FOCUS)


def defocus_range(mean_pattern: np.ndarray, geometry: Geometry) -> float:
    """Largest defocus worth trying (m): the probe then spans a third of the field of view.

    The beam's numerical aperture follows from the bright-field radius on the
    detector; a defocus ``d`` widens the probe to about ``2 d NA``.
    """
    numerical_aperture = (
        bright_field_radius(mean_pattern) * geometry.detector_pixel_size / geometry.detector_distance
    )
    field_of_view = min(np.multiply(geometry.frame_shape, geometry.sample_pixel_size))
    return float(field_of_view / (3 * max(numerical_aperture, 1e-12)))


def trial_data(frames: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``TRIAL_FRAMES`` frames nearest the scan's centre, their positions and their mean pattern."""
    distance = np.sum((positions - positions.mean(axis=0)) ** 2, axis=1)
    subset = np.argsort(distance)[:TRIAL_FRAMES]
    return frames[subset], positions[subset], frames[subset].mean(axis=0)


def trial_score(frames, positions, geometry, mask, mean_pattern, defocus: float, seed: int = 0) -> float:
    """Cost after ``TRIAL_ITERATIONS`` rPIE iterations started from a probe of ``defocus``."""
    from .reconstructor import Reconstructor
    from .settings import ReconstructionSettings

    settings = ReconstructionSettings(algorithm="rpie", batch_size=len(frames), seed=seed)
    probe = probe_from_mean_pattern(mean_pattern, geometry, defocus)
    reconstructor = Reconstructor(geometry, settings, mask=mask, probe=probe)
    reconstructor.add_frames(frames, positions).iterate(TRIAL_ITERATIONS)
    return reconstructor.cost_history[-1]


def estimate_defocus(
    frames: np.ndarray,
    positions: np.ndarray,
    geometry: Geometry,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> DefocusEstimate:
    """Estimate the probe defocus from the data (both signs are tried).

    Parameters
    ----------
    frames, positions
        Photon counts (N, H, W) and (x, y) positions in metres; the frames
        nearest the scan centre are used.
    geometry
        The instrument geometry.
    mask
        Optional good-pixel mask.

    Returns
    -------
    DefocusEstimate
        The value, its score (trial cost) and every candidate tried.
    """
    start = time.perf_counter()
    frames, positions, mean_pattern = trial_data(frames, positions)
    tried: dict[float, float] = {}

    def score(defocus: float) -> float:
        if defocus not in tried:
            tried[defocus] = trial_score(frames, positions, geometry, mask, mean_pattern, defocus, seed)
        return tried[defocus]

    limit = defocus_range(mean_pattern, geometry)
    coarse = np.linspace(-limit, limit, COARSE_CANDIDATES)
    best = min(coarse, key=score)
    step = coarse[1] - coarse[0]
    for offset in np.linspace(-step, step, FINE_CANDIDATES + 2)[1:-1]:
        score(float(best + offset))
    defocus = refine_minimum(tried)
    estimate = DefocusEstimate(
        defocus=defocus,
        score=score(defocus),
        candidates=sorted(tried),
        scores=[tried[d] for d in sorted(tried)],
        seconds=time.perf_counter() - start,
    )
    logger.info(
        "estimated probe defocus %.3g m (score %.4g, %d trials, %.2f s)",
        estimate.defocus,
        estimate.score,
        len(tried),
        estimate.seconds,
    )
    return estimate


def check_defocus_sign(
    frames: np.ndarray,
    positions: np.ndarray,
    geometry: Geometry,
    defocus: float,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[float, bool]:
    """Return ``(defocus, False)``, or ``(-defocus, True)`` when the opposite sign fits the data clearly better.

    Sign conventions differ between instruments and codes; a defocus given
    with the wrong sign is a common mistake and costs only two trials to catch.
    """
    if defocus == 0:
        return defocus, False
    frames, positions, mean_pattern = trial_data(frames, positions)
    given = trial_score(frames, positions, geometry, mask, mean_pattern, defocus, seed)
    flipped = trial_score(frames, positions, geometry, mask, mean_pattern, -defocus, seed)
    if flipped < SIGN_MARGIN * given:
        logger.warning(
            "probe defocus %.3g m fits the data worse than %.3g m (cost %.4g against %.4g): "
            "using %.3g m; check the sign convention (+ = sample downstream of the focus)",
            defocus,
            -defocus,
            given,
            flipped,
            -defocus,
        )
        return -defocus, True
    return defocus, False


def refine_minimum(scores: dict[float, float]) -> float:
    """Vertex of the parabola through the best sampled point and its two neighbours."""
    points = sorted(scores)
    values = [scores[p] for p in points]
    best = int(np.argmin(values))
    if best == 0 or best == len(points) - 1:
        return points[best]
    x = np.array(points[best - 1 : best + 2])
    y = np.array(values[best - 1 : best + 2])
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return points[best]
    return float(np.clip(-b / (2 * a), x[0], x[2]))
