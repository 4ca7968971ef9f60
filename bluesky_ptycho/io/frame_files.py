"""Frames in a detector's HDF5 files: where they are, and reading them (decompressed, cut to a region).

:class:`FrameSource` is one dataset of frames; :func:`read_points` reads a
range of its scan points from an open dataset. :class:`FileFrames` is a
reconstruction job's frames by reference (spans of files), for a runner
whose worker reads the files itself: the frames are then read and
decompressed there, not on the RunEngine's document thread, and never
travel between processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import hdf5plugin
import numpy as np

from ..solver.detector import FrameRegion, binned, saturated_pixels


@dataclass(frozen=True)
class FrameSource:
    """An HDF5 dataset of frames, and how many of its frames make one point of the scan."""

    path: Path
    dataset: str
    frames_per_point: int = 1

    def open(self) -> h5py.File:
        """The file, opened for reading while it is written (SWMR) where it was written so."""
        if not self.path.exists():
            raise FileNotFoundError(f"external frame file {self.path} does not exist")
        try:
            return h5py.File(self.path, "r", swmr=True)
        except OSError:  # a file not written in SWMR mode (older HDF5 format): read it as it is
            return h5py.File(self.path, "r")

    def dataset_of(self, file: h5py.File) -> h5py.Dataset:
        """The frames' dataset in the open ``file``."""
        if self.dataset not in file:
            raise ValueError(f"{self.path} has no dataset {self.dataset}")
        return file[self.dataset]


def _missing_filters(dataset: h5py.Dataset) -> list[str]:
    """The filters of ``dataset``'s pipeline that this process cannot apply, as "name (id)"."""
    pipeline = dataset.id.get_create_plist()
    filters = (pipeline.get_filter(i) for i in range(pipeline.get_nfilters()))
    return [
        f"{name.decode(errors='replace') or 'unnamed'} ({code})"
        for code, _, _, name in filters
        if not h5py.h5z.filter_avail(code)
    ]


def check_points(source: FrameSource, dataset: h5py.Dataset, start: int, stop: int) -> None:
    """Check that ``dataset`` holds the frames of scan points [start, stop) (as written so far).

    Raises
    ------
    ValueError
        Naming the file and dataset, how many frames it holds and which were asked for.
    """
    first, last = start * source.frames_per_point, stop * source.frames_per_point
    if last > dataset.shape[0]:
        dataset.refresh()
    if last > dataset.shape[0]:
        raise ValueError(
            f"{source.path}:{source.dataset} holds {dataset.shape[0]} frames; "
            f"the documents refer to frames {first} to {last - 1}"
        )


def read_points(
    source: FrameSource, dataset: h5py.Dataset, start: int, stop: int, region: FrameRegion | None = None
) -> np.ndarray:
    """The frames (stop - start, H, W) of scan points [start, stop) of ``dataset``, cut to ``region`` (not binned).

    Raises
    ------
    ValueError
        Naming the file and dataset when they hold fewer frames, or a
        compression filter that is not available here.
    """
    check_points(source, dataset, start, stop)
    per_point = source.frames_per_point
    first, last = start * per_point, stop * per_point
    try:
        frames = np.asarray(
            dataset[first:last] if region is None else dataset[(slice(first, last), *region.slices)]
        )
    except OSError as error:
        missing = _missing_filters(dataset)
        if not missing:
            raise
        raise ValueError(
            f"{source.path}:{source.dataset} cannot be decompressed: its HDF5 filter "
            f"{', '.join(missing)} is not available here (registered: HDF5's own and hdf5plugin "
            f"{hdf5plugin.version}'s {', '.join(hdf5plugin.FILTERS)}): {error}"
        ) from error
    if per_point > 1:
        frames = frames.reshape(stop - start, per_point, *frames.shape[1:]).sum(axis=1, dtype=frames.dtype)
    return frames


class FramePoint(NamedTuple):
    """One scan point's frame, by reference: its source and its point's index there."""

    source: FrameSource
    point: int


@dataclass(frozen=True)
class FileFrames:
    """A job's frames as references: spans of scan points in detector files, and the region they are cut to.

    Attributes
    ----------
    spans
        (source, first point, stop point) in the order of the job's positions.
    region
        The reconstruction frames' region of the detector frames, or None (as recorded).
    saturation, mask
        The count at and above which a pixel is not trusted (None: none), and
        the reconstruction frames' good pixels (None: all).
    """

    spans: tuple[tuple[FrameSource, int, int], ...]
    region: FrameRegion | None = None
    saturation: float | None = None
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return sum(stop - start for _, start, stop in self.spans)

    def read(self) -> tuple[np.ndarray, int]:
        """The frames (N, H, W), read and decompressed here, and how many hold trusted pixels that saturate."""
        files: dict[Path, h5py.File] = {}
        binning = 1 if self.region is None else self.region.binning
        try:
            parts, saturated = [], 0
            for source, start, stop in self.spans:
                if source.path not in files:
                    files[source.path] = source.open()
                cut = read_points(source, source.dataset_of(files[source.path]), start, stop, self.region)
                if self.saturation is not None:
                    saturated += int(
                        np.count_nonzero(saturated_pixels(cut, self.saturation, binning, self.mask))
                    )
                parts.append(binned(cut, binning))
            return (parts[0] if len(parts) == 1 else np.concatenate(parts)), saturated
        finally:
            for file in files.values():
                file.close()

    @classmethod
    def of_points(cls, points: list[FramePoint], **cut) -> FileFrames:
        """The references to ``points`` in order, consecutive points of a source joined in one span; ``cut``: the other fields."""
        spans: list[list] = []
        for source, point in points:
            if spans and spans[-1][0] == source and spans[-1][2] == point:
                spans[-1][2] += 1
            else:
                spans.append([source, point, point + 1])
        return cls(tuple((source, start, stop) for source, start, stop in spans), **cut)
