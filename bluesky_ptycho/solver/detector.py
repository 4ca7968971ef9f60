"""Raw detector frames to reconstruction frames: the region around the beam, binned, bad pixels masked.

A pixel detector records far more than a reconstruction uses: an Eiger or a
Jungfrau frame is 1028 x 1062 pixels with gaps between its modules, the
direct beam somewhere on it, and pixels that are dead, hot or saturated.
:class:`DetectorSettings` says, once for a beamline, which region of the
frame to reconstruct (a square of ``frame_size`` binned pixels around the
beam centre, given or measured from the bright-field disc of the first
frames), how to bin it, and which pixels to trust; :class:`FramePreparation`
applies it to one scan, frame by frame.

The detector's pixel mask follows the Dectris convention (the Eiger master
file's ``pixel_mask``): 0 for a good pixel, any set bit a reason it is not
(gap, dead, hot, ...). The solver's mask is the opposite (True: good).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: where an Eiger master file holds its pixel mask and the count above which a pixel is unreliable
EIGER_PIXEL_MASK = "/entry/instrument/detector/detectorSpecific/pixel_mask"
EIGER_SATURATION = "/entry/instrument/detector/detectorSpecific/countrate_correction_count_cutoff"
#: frames whose sum the beam centre is measured on (refraction by the sample moves one frame's disc)
CENTRE_FRAMES = 8
# the bright field: pixels above this share of the way from the background to the brightest
# (median-filtered, so that isolated hot pixels do not count), at least BRIGHT_FIELD_CONTRAST x the background
BRIGHT_FIELD_LEVEL = 0.5
BRIGHT_FIELD_CONTRAST = 10.0
BRIGHT_FIELD_MIN_PIXELS = 12


class DetectorError(ValueError):
    """The frames cannot be prepared as the settings ask (a region off the detector, no bright field)."""


@dataclass(frozen=True)
class DetectorSettings:
    """How a beamline's raw detector frames become reconstruction frames.

    Parameters
    ----------
    frame_size
        Edge, in binned pixels, of the square region reconstructed; None
        (default): the whole frame as recorded (``binning`` still applies).
    beam_centre
        (row, column) of the direct beam on the detector, in detector
        pixels; None (default): measured from the bright-field disc of the
        scan's first :data:`CENTRE_FRAMES` frames.
    binning
        Detector pixels summed along each edge into one reconstruction pixel
        (1: none). The geometry's pixel size grows by the same factor.
    saturation
        Counts at and above which a pixel is not trusted; None: the
        detector file's own cutoff (Eiger's
        ``countrate_correction_count_cutoff``), or none. A pixel saturated in
        the frames that fix the region (the first :data:`CENTRE_FRAMES`
        when the centre is measured, else the first) is masked for the scan;
        later saturated pixels are counted in the record.
    pixel_mask
        The detector's pixel mask (detector shape, Dectris convention: 0
        good, nonzero bad), combined with the one in the detector file.
    """

    frame_size: int | None = None
    beam_centre: tuple[float, float] | None = None
    binning: int = 1
    saturation: float | None = None
    pixel_mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.frame_size is not None and not (isinstance(self.frame_size, int) and self.frame_size >= 2):
            raise ValueError(f"frame_size must be an integer of at least 2 pixels, not {self.frame_size!r}")
        if not (isinstance(self.binning, int) and self.binning >= 1):
            raise ValueError(f"binning must be a positive integer, not {self.binning!r}")
        if self.saturation is not None and not self.saturation > 0:
            raise ValueError(f"saturation must be a positive count, not {self.saturation!r}")
        if self.beam_centre is not None:
            centre = tuple(float(value) for value in self.beam_centre)
            if len(centre) != 2 or not all(np.isfinite(centre)):
                raise ValueError(
                    f"beam_centre must be (row, column) in detector pixels, not {self.beam_centre!r}"
                )
            object.__setattr__(self, "beam_centre", centre)
        if self.pixel_mask is not None:
            mask = np.asarray(self.pixel_mask)
            if mask.ndim != 2:
                raise ValueError(f"pixel_mask must be an image (2-D), not of shape {mask.shape}")
            object.__setattr__(self, "pixel_mask", mask)

    @property
    def measures_centre(self) -> bool:
        """Whether the beam centre is measured (on the first :data:`CENTRE_FRAMES` frames)."""
        return self.frame_size is not None and self.beam_centre is None

    @property
    def reshapes(self) -> bool:
        """Whether frames are cut or binned (otherwise only masked)."""
        return self.frame_size is not None or self.binning > 1

    def frame_shape(self, detector_shape: tuple[int, int]) -> tuple[int, int]:
        """The reconstruction frames' shape for frames of ``detector_shape``."""
        if self.frame_size is not None:
            return (self.frame_size, self.frame_size)
        return (detector_shape[0] // self.binning, detector_shape[1] // self.binning)


def bright_field_centre(total: np.ndarray, good: np.ndarray) -> tuple[float, float]:
    """(row, column) of the bright-field disc's centroid in ``total`` (summed counts; ``good``: pixels to trust).

    Raises
    ------
    DetectorError
        If no disc stands out of the background.
    """
    counts = np.where(good, total, 0.0)
    smooth = ndimage.median_filter(counts, size=3)
    background = float(np.median(smooth[good])) if good.any() else 0.0
    peak = float(smooth.max())
    if peak <= BRIGHT_FIELD_CONTRAST * max(background, 1.0):
        raise DetectorError(
            f"no bright field found: the brightest region reads {peak:.3g} counts against a background "
            f"of {background:.3g} (needs {BRIGHT_FIELD_CONTRAST:g}x); give the beam centre "
            "(DetectorSettings(beam_centre=(row, column)), --beam-centre)"
        )
    labels, _ = ndimage.label(smooth >= background + BRIGHT_FIELD_LEVEL * (peak - background))
    brightest = int(np.argmax(ndimage.sum_labels(smooth, labels, index=np.arange(labels.max() + 1))[1:])) + 1
    if np.count_nonzero(labels == brightest) < BRIGHT_FIELD_MIN_PIXELS:
        raise DetectorError(
            f"no bright field found: the brightest region is only {np.count_nonzero(labels == brightest)} "
            "pixels (a hot spot, not the direct beam); give the beam centre "
            "(DetectorSettings(beam_centre=(row, column)), --beam-centre)"
        )
    row, column = ndimage.center_of_mass(smooth, labels, brightest)
    return float(row), float(column)


def binned(image: np.ndarray, binning: int, combine: np.ufunc = np.add) -> np.ndarray:
    """``image`` (..., H, W) with ``binning`` x ``binning`` blocks of its last two axes combined.

    ``np.add`` sums counts (unsigned ones in 32 bits, as detectors record
    them); ``np.logical_and``, ``np.logical_or`` combine masks.
    """
    if binning == 1:
        return image
    h, w = image.shape[-2] // binning, image.shape[-1] // binning
    blocks = image[..., : h * binning, : w * binning].reshape(*image.shape[:-2], h, binning, w, binning)
    if combine is np.add:
        return blocks.sum(axis=(-3, -1), dtype=np.uint32 if image.dtype.kind == "u" else None)
    return combine.reduce(combine.reduce(blocks, axis=-1), axis=-2)


def saturated_pixels(cut: np.ndarray, saturation: float, binning: int, mask: np.ndarray | None) -> np.ndarray:
    """How many trusted reconstruction pixels of each frame of ``cut`` (..., H, W: a region, not binned) saturate."""
    over = binned(cut >= saturation, binning, np.logical_or)
    return np.count_nonzero(over if mask is None else over & mask, axis=(-2, -1))


@dataclass(frozen=True)
class FrameRegion:
    """Where the reconstruction frames lie on the detector: rows and columns [start, stop), and the binning."""

    rows: tuple[int, int]
    columns: tuple[int, int]
    binning: int = 1

    @property
    def slices(self) -> tuple[slice, slice]:
        """The region as (rows, columns) slices of a detector frame."""
        return slice(*self.rows), slice(*self.columns)

    def cut(self, frames: np.ndarray) -> np.ndarray:
        """The reconstruction frames of detector ``frames`` (..., H, W), a copy (the detector frames are not held)."""
        rows, columns = self.slices
        cut = frames[..., rows, columns]
        return cut.copy() if self.binning == 1 else binned(cut, self.binning)

    def __str__(self) -> str:
        return f"rows {self.rows[0]}:{self.rows[1]}, columns {self.columns[0]}:{self.columns[1]}"


class FramePreparation:
    """One scan's raw frames to reconstruction frames, as :class:`DetectorSettings` say.

    The region and the mask are fixed by :meth:`fix` (with the scan's
    first frames, where the beam centre is measured); :meth:`prepare` then
    cuts and bins every frame (or its :class:`FrameRegion`, where the frames
    are read: a worker reading the detector's files itself).

    Parameters
    ----------
    settings
        The beamline's detector settings.
    pixel_mask, saturation
        What the detector file says (Dectris convention), combined with the settings'.
    """

    def __init__(
        self,
        settings: DetectorSettings,
        pixel_mask: np.ndarray | None = None,
        saturation: float | None = None,
    ) -> None:
        self.settings = settings
        self.file_mask = None if pixel_mask is None else np.asarray(pixel_mask)
        self.saturation = settings.saturation if settings.saturation is not None else saturation
        self.region: FrameRegion | None = None  # once fixed
        self.mask: np.ndarray | None = None  # good pixels of the reconstruction frames (None: all)
        self.beam_centre: tuple[float, float] | None = None

    def fix(self, frames: np.ndarray) -> None:
        """Fix the region and the mask from the scan's first ``frames`` (n, detector rows, columns).

        Raises
        ------
        DetectorError
            Naming the region and the detector when the region leaves it, or
            why no beam centre was found.
        """
        shape = frames.shape[-2:]
        bad = np.zeros(shape, bool)
        for given, source in (
            (self.file_mask, "the detector file's"),
            (self.settings.pixel_mask, "the given"),
        ):
            if given is None:
                continue
            if given.shape != shape:
                raise DetectorError(f"{source} pixel_mask has shape {given.shape}, the frames {tuple(shape)}")
            bad |= given != 0
        if self.saturation is not None:
            bad |= (frames >= self.saturation).any(axis=0)
        b, (h, w) = self.settings.binning, self.settings.frame_shape(shape)
        if self.settings.frame_size is None:
            top, left = 0, 0
        else:
            centre = self.settings.beam_centre or bright_field_centre(
                frames.sum(axis=0, dtype=np.float64), ~bad
            )
            self.beam_centre = centre
            # the binned pixel h // 2 (the solver's zero frequency) is the one the beam centre falls in
            top = int(np.rint(centre[0] - b * (h // 2) - (b - 1) / 2))
            left = int(np.rint(centre[1] - b * (w // 2) - (b - 1) / 2))
            if top < 0 or left < 0 or top + b * h > shape[0] or left + b * w > shape[1]:
                raise DetectorError(
                    f"the region of {b * h} x {b * w} detector pixels around the beam centre "
                    f"({centre[0]:.1f}, {centre[1]:.1f}) spans rows {top} to {top + b * h - 1} and columns "
                    f"{left} to {left + b * w - 1}, outside the {shape[0]} x {shape[1]} detector"
                )
        region = FrameRegion((top, top + b * h), (left, left + b * w), b)
        good = binned(~bad[region.slices], b, np.logical_and)
        if not good.any():
            raise DetectorError(f"the pixel mask marks every pixel of the region ({region}) as bad")
        self.region, self.mask = region, None if good.all() else good

    def record(self) -> dict:
        """The region, binning and beam centre, as a reconstruction's record says them."""
        return {
            "rows": list(self.region.rows),
            "columns": list(self.region.columns),
            "binning": self.settings.binning,
            "beam_centre": None if self.beam_centre is None else list(self.beam_centre),
            "beam_centre_measured": self.settings.measures_centre,
            "masked_pixels": 0 if self.mask is None else int(self.mask.size - np.count_nonzero(self.mask)),
        }

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """The reconstruction frame of one raw ``frame`` (a copy when cut: the raw frame is not held)."""
        return self.region.cut(frame) if self.settings.reshapes else frame

    def saturated(self, frame: np.ndarray) -> int:
        """How many trusted pixels of the region of ``frame`` are saturated."""
        if self.saturation is None:
            return 0
        return int(
            saturated_pixels(frame[self.region.slices], self.saturation, self.region.binning, self.mask)
        )
