"""The defocus of the initial probe: from the user, or measured from the data.

Beamline ptychography is usually recorded with the sample out of the probe
focus, and an initial probe without the right defocus leaves every algorithm
stuck. The defocus is measured from the frames themselves, with no trial
reconstruction (whose scores are nearly flat on measured data):

A probe ``d`` metres from its focus is a spherical wave, and the far field of
a spherical wave through the sample is a magnified (Fresnel-blurred) shadow
image of the sample inside the bright-field disc (the Fresnel scaling
theorem). When the sample moves by ``s`` sample pixels between two frames,
that shadow moves by ``M s`` detector pixels with

    M = wavelength * distance**2 / (N * detector_pixel**2 * d)

(N: frame edge in pixels), the same direction as the sample for ``d > 0``
(downstream of the focus) and the opposite one for ``d < 0``. Every pair of
neighbouring frames gives the cross-correlation of their shadows; the
magnification whose predicted shifts collect the most correlation, over all
pairs at once, gives the defocus with its sign.

Where no moving shadow is resolved (a focused probe casts none; a small
disc far from the focus shows one too blurred to follow) the data correlate
most where nothing moves. The probe's size then comes from the scan step
(scans are planned for a known overlap) and the sign from the side on which
the shadow correlates: a probe no larger than its focus is taken as focused.

The shadow is least precise where it is most blurred, so a few short trial
reconstructions on the central frames, within a factor of two of the
estimate, settle its size where their cost is clearly lower (see
:func:`trial_costs`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy.spatial import cKDTree

from .data import Geometry
from .probe import probe_from_mean_pattern

logger = logging.getLogger(__name__)

MAX_PAIRS = 256
CANDIDATES = 120
BRIGHT_FIELD_LEVEL = 0.25
SIGN_MARGIN = 1.2
# how many standard errors the other sign's gain, pair by pair, must reach to overturn a given sign
# (a paired t: a wrong sign on the robustness grid 4.5-36; noise where positions are off by a step: at most 2.2)
SIGN_SIGNIFICANCE = 3.0
# how much scans overlap neighbouring probe footprints, as planned at beamlines
ASSUMED_OVERLAP = 0.65
# a probe less than this many times its focus's size is taken as focused
FOCUS_SIZE_MARGIN = 1.5
# the trial reconstructions that settle the size of the measured defocus
TRIAL_FRAMES = 64
TRIAL_ITERATIONS = 10
TRIAL_FACTORS = (0.5, 0.63, 0.8, 1.0, 1.25, 1.6, 2.0)
# another size is taken only if its trial cost is this much lower (flat costs
# on measured data must not pull the shadow's estimate away)
TRIAL_MARGIN = 0.9
# the trials fall toward the smallest probe when positions are off by a large share of the step
# (robustness.py --positions: half a step of random error took half the defocus; none on the grid)
SMALLEST_TRIAL = (
    "the probe's defocus is in doubt: the trial reconstructions took the smallest probe tried "
    "({:.3g} m; the shadow measured {:.3g} m), as they do where the positions are off by a large "
    "part of the scan step; if they may be, give the defocus (probe_defocus, --probe-defocus)"
)


@dataclass
class DefocusEstimate:
    """The measured defocus (m, + = sample downstream of the focus) and how it was found.

    ``magnifications`` and ``scores`` are the candidate shadow magnifications
    (detector pixels per sample pixel, signed as the defocus) and the mean
    correlation each collected; ``magnification`` is the one taken (from the
    scan step where no shadow was resolved), 0 for a focused probe.
    ``trials`` maps the defoci tried around it to their trial costs;
    ``warning`` says why the measurement is in doubt (None: it is not).
    """

    defocus: float
    magnification: float
    score: float
    magnifications: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    trials: dict[float, float] = field(default_factory=dict)
    seconds: float = 0.0
    warning: str | None = None

    def as_dict(self) -> dict:
        return {
            "probe_defocus": self.defocus,
            "probe_source": "defocus estimate",
            "probe_defocus_magnification": self.magnification,
            "probe_defocus_score": self.score,
            "probe_defocus_seconds": self.seconds,
            "probe_defocus_in_doubt": self.warning is not None,
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


def magnification_scale(geometry: Geometry) -> float:
    """``M * d``: the shadow magnification times the defocus (m), from the geometry alone."""
    return (
        geometry.wavelength
        * geometry.detector_distance**2
        / (geometry.frame_shape[0] * geometry.detector_pixel_size**2)
    )


@dataclass
class ShadowCorrelations:
    """Normalised cross-correlations of the bright-field shadows of neighbouring frames.

    ``correlations[p]`` (P, H', W') is ``sum_k a(k + tau) b(k)`` of pair p's
    contrasts ``a`` (first frame) and ``b``, divided by the bright-field area
    both share at ``tau`` (so a large shift is not penalised for overlapping
    less); ``shifts[p]`` the sample's move (rows, columns) in sample pixels
    from the first frame to the second.
    """

    correlations: np.ndarray
    shifts: np.ndarray
    bright_field_radius: float
    frame_shape: tuple[int, int]

    @classmethod
    def measure(
        cls, frames: np.ndarray, positions: np.ndarray, geometry: Geometry, mask: np.ndarray | None = None
    ) -> ShadowCorrelations:
        h, w = geometry.frame_shape
        good = np.ones((h, w), bool) if mask is None else mask
        mean = frames.mean(axis=0) * good
        radius = bright_field_radius(mean)
        bright = good & (mean > BRIGHT_FIELD_LEVEL * np.percentile(mean[good], 99))
        pixels = positions[:, ::-1] / geometry.sample_pixel_size
        distinct = np.unique(pixels, axis=0, return_index=True)[1]  # frames at one place are no neighbours
        if len(distinct) < 2:
            raise ValueError(
                "the probe's defocus cannot be measured: all the frames are at one position (give probe_defocus)"
            )
        neighbours = distinct[cKDTree(pixels[distinct]).query(pixels[distinct], k=2)[1][:, 1]]
        pairs = np.unique(np.sort(np.stack([distinct, neighbours], axis=1), axis=1), axis=0)
        if len(pairs) > MAX_PAIRS:
            pairs = pairs[np.random.default_rng(0).choice(len(pairs), MAX_PAIRS, replace=False)]
        # the contrast is zero outside the bright field: only its bounding box is transformed,
        # padded so that shifts up to the disc's diameter do not wrap around
        rows, cols = (np.flatnonzero(bright.any(axis=other)) for other in (1, 0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] if bright.any() else np.s_[:, :]
        bright = bright[box]
        size = tuple(scipy.fft.next_fast_len(int(n + 2 * radius + 2), real=True) for n in bright.shape)
        safe_mean = np.where(bright, mean[box], 1).astype(np.float32)

        def contrast_spectrum(index):
            contrast = np.where(bright, frames[(index, *box)] / safe_mean - 1, np.float32(0))
            contrast -= (contrast.sum(axis=(1, 2)) / bright.sum())[:, None, None] * bright
            contrast /= np.sqrt((contrast**2).sum(axis=(1, 2)))[:, None, None] + 1e-30
            return scipy.fft.rfft2(contrast, s=size)

        first, second = contrast_spectrum(pairs[:, 0]), contrast_spectrum(pairs[:, 1])
        correlations = scipy.fft.irfft2(first * second.conj(), s=size)
        window = scipy.fft.rfft2(bright.astype(np.float32), s=size)
        overlap = scipy.fft.irfft2(window * window.conj(), s=size)
        correlations *= bright.sum() / np.maximum(overlap, 0.25 * bright.sum())
        return cls(correlations, pixels[pairs[:, 1]] - pixels[pairs[:, 0]], radius, (h, w))

    def score(self, magnification: float) -> float:
        """Mean correlation found where ``magnification`` puts each pair's shadow."""
        return float(self.values(magnification).mean())

    def values(self, magnification: float) -> np.ndarray:
        """Each pair's correlation where ``magnification`` puts its shadow (bilinear), (P,)."""
        tau = magnification * self.shifts
        low = np.floor(tau).astype(int)
        frac = tau - low
        rows, cols = self.correlations.shape[1:]
        r0, c0 = low[:, 0] % rows, low[:, 1] % cols
        r1, c1 = (r0 + 1) % rows, (c0 + 1) % cols
        pair = np.arange(len(tau))
        value = (
            self.correlations[pair, r0, c0] * (1 - frac[:, 0]) * (1 - frac[:, 1])
            + self.correlations[pair, r1, c0] * frac[:, 0] * (1 - frac[:, 1])
            + self.correlations[pair, r0, c1] * (1 - frac[:, 0]) * frac[:, 1]
            + self.correlations[pair, r1, c1] * frac[:, 0] * frac[:, 1]
        )
        return value

    @property
    def step(self) -> float:
        """The typical distance between neighbouring scan points, sample pixels."""
        return float(np.median(np.hypot(*self.shifts.T)))

    def magnification_from_scan_step(self) -> float:
        """The shadow magnification of a probe as large as the scan step suggests; 0 for a focused one.

        Where the shadow is too blurred to follow (a small bright-field disc,
        a large defocus) the scan itself tells the probe's size: scans are
        planned with neighbours ``1 - ASSUMED_OVERLAP`` of a probe diameter
        apart. A focused probe is about ``1.22 N / R`` sample pixels wide (its
        Airy disc); what the defocus adds to that is ``2 R / M``.
        """
        h, w = self.frame_shape
        probe = self.step / (1 - ASSUMED_OVERLAP)
        focus = 1.22 * min(h, w) / self.bright_field_radius
        if probe < FOCUS_SIZE_MARGIN * focus:
            return 0.0
        return 2 * self.bright_field_radius / np.sqrt(probe**2 - focus**2)

    def candidates(self) -> np.ndarray:
        """Magnifications worth trying, both signs, log-spaced.

        From the weakest at which the probe (about ``2 R / |M|`` sample pixels
        wide for a bright-field radius ``R``) still fits the frame, or moves
        the shadow half a pixel, to the strongest that moves it by the disc's
        diameter.
        """
        low = max(2 * self.bright_field_radius / min(self.frame_shape), 0.5 / self.step)
        high = max(2 * self.bright_field_radius / self.step, 2 * low)
        magnitudes = np.geomspace(low, high, CANDIDATES // 2)
        return np.concatenate([-magnitudes[::-1], magnitudes])


def estimate_defocus(
    frames: np.ndarray,
    positions: np.ndarray,
    geometry: Geometry,
    mask: np.ndarray | None = None,
    device: str = "cpu",
) -> DefocusEstimate:
    """Measure the probe defocus from the shadow's magnification between neighbouring frames.

    Parameters
    ----------
    frames, positions
        Photon counts (N, H, W) and (x, y) positions in metres.
    geometry
        The instrument geometry.
    mask
        Optional good-pixel mask.
    device
        Where the trial reconstructions run (the reconstruction's own device).

    Returns
    -------
    DefocusEstimate
        The defocus (0 where no shadow moves with the sample: a focused
        probe), the magnification and every candidate's score.
    """
    start = time.perf_counter()
    shadows = ShadowCorrelations.measure(frames, positions, geometry, mask)
    candidates = shadows.candidates()
    scores = np.array([shadows.score(m) for m in candidates])
    best = int(np.argmax(scores))
    magnification = refine_maximum(candidates, scores, best)
    weakest = len(candidates) // 2
    if best in (weakest - 1, weakest):
        # the best score at the weakest magnification is the peak of what
        # does not move with the sample: no shadow is resolved
        magnification = shadows.magnification_from_scan_step() * np.sign(candidates[best])
    defocus = magnification_scale(geometry) / magnification if magnification else 0.0
    trials = trial_costs(frames, positions, geometry, mask, defocus, device) if defocus else {}
    warning = None
    if trials:
        best_trial = min(trials, key=trials.get)
        if trials[best_trial] < TRIAL_MARGIN * trials[defocus]:
            if best_trial == min(trials, key=abs):
                warning = SMALLEST_TRIAL.format(best_trial, defocus)
            defocus = refine_on_log_scale(trials, best_trial)
    estimate = DefocusEstimate(
        defocus=defocus,
        magnification=magnification,
        score=float(scores[best]),
        magnifications=candidates.tolist(),
        scores=scores.tolist(),
        trials=trials,
        seconds=time.perf_counter() - start,
        warning=warning,
    )
    logger.info(
        "measured probe defocus %.3g m (shadow magnification %.3g, score %.3g, %.2f s)",
        estimate.defocus,
        estimate.magnification,
        estimate.score,
        estimate.seconds,
    )
    return estimate


def trial_costs(
    frames: np.ndarray,
    positions: np.ndarray,
    geometry: Geometry,
    mask: np.ndarray | None,
    defocus: float,
    device: str = "cpu",
) -> dict[float, float]:
    """Cost after ``TRIAL_ITERATIONS`` rPIE iterations on the ``TRIAL_FRAMES`` most central frames, per defocus tried.

    The candidates are ``defocus`` times ``TRIAL_FACTORS``: the shadow gives
    the sign and the scale, these short reconstructions the last factor of
    two, where a blurred shadow is least precise and the cost is sharpest.
    """
    from .reconstructor import Reconstructor
    from .settings import ReconstructionSettings

    central = np.argsort(np.sum((positions - positions.mean(axis=0)) ** 2, axis=1))[:TRIAL_FRAMES]
    frames, positions = frames[central], positions[central]
    good = np.ones(geometry.frame_shape, bool) if mask is None else mask
    mean_pattern = frames.mean(axis=0) * good
    costs = {}
    for factor in TRIAL_FACTORS:
        probe = probe_from_mean_pattern(mean_pattern, geometry, defocus * factor)
        settings = ReconstructionSettings(
            options={"batch_size": len(frames)}, probe_defocus=defocus * factor, device=device
        )
        trial = Reconstructor(geometry, settings, mask=mask, probe=probe)
        costs[defocus * factor] = (
            trial.add_frames(frames, positions).iterate(TRIAL_ITERATIONS).cost_history[-1]
        )
    return costs


def refine_on_log_scale(costs: dict[float, float], best: float) -> float:
    """The vertex of the parabola through the lowest cost and its neighbours, in log |defocus|."""
    points = sorted(costs, key=abs)
    index = points.index(best)
    if index in (0, len(points) - 1):
        return best
    x = np.log(np.abs(points[index - 1 : index + 2]))
    a, b, _ = np.polyfit(x, [costs[p] for p in points[index - 1 : index + 2]], 2)
    if a <= 0:
        return best
    return float(np.sign(best) * np.exp(np.clip(-b / (2 * a), x.min(), x.max())))


def refine_maximum(candidates: np.ndarray, scores: np.ndarray, best: int) -> float:
    """The vertex of the parabola through the best candidate and its neighbours, on a log scale."""
    if best in (0, len(candidates) - 1) or np.sign(candidates[best - 1]) != np.sign(candidates[best + 1]):
        return float(candidates[best])
    x = np.log(np.abs(candidates[best - 1 : best + 2]))
    a, b, _ = np.polyfit(x, scores[best - 1 : best + 2], 2)
    if a >= 0:
        return float(candidates[best])
    return float(np.sign(candidates[best]) * np.exp(np.clip(-b / (2 * a), x.min(), x.max())))


def check_defocus_sign(
    frames: np.ndarray,
    positions: np.ndarray,
    geometry: Geometry,
    defocus: float,
    mask: np.ndarray | None = None,
) -> tuple[float, bool]:
    """Return ``(defocus, False)``, or ``(-defocus, True)`` when the data's shadow clearly moves the other way.

    Sign conventions differ between instruments and codes; a defocus given
    with the wrong sign is a common mistake, and the shadow tells it at once.
    Clearly: the other sign collects more correlation pair by pair, beyond
    the pairs' scatter (``SIGN_SIGNIFICANCE``); positions off by half a step
    or more leave the shadow as noise, and the given sign stands.
    """
    if defocus == 0:
        return defocus, False
    shadows = ShadowCorrelations.measure(frames, positions, geometry, mask)
    magnification = magnification_scale(geometry) / defocus
    given_by_pair, flipped_by_pair = shadows.values(magnification), shadows.values(-magnification)
    given, flipped = float(given_by_pair.mean()), float(flipped_by_pair.mean())
    gain = flipped_by_pair - given_by_pair
    clear = gain.mean() > SIGN_SIGNIFICANCE * gain.std() / np.sqrt(len(gain))
    if clear and flipped > 0 and flipped > SIGN_MARGIN * max(given, 0):
        logger.warning(
            "probe defocus %.3g m does not fit the data's shadow, %.3g m does (correlation %.3g against %.3g): "
            "using %.3g m; check the sign convention (+ = sample downstream of the focus)",
            defocus,
            -defocus,
            given,
            flipped,
            -defocus,
        )
        return -defocus, True
    return defocus, False
