"""Frames stored outside the documents: HDF5 files referenced by StreamResource/StreamDatum.

Detectors (area detectors, ophyd-async) write frames to HDF5 files and emit
documents that point into them. :class:`ExternalFrames` resolves those
pointers while the files are still being written (SWMR readers, refreshed
before every read). Legacy Resource/Datum documents reach it converted to
StreamResource/StreamDatum (by bluesky-tiled-plugins' ``RunNormalizer``).
Compressed frames read through the HDF5 filters ``hdf5plugin`` registers
(bitshuffle-LZ4 as Dectris Eiger detectors write, LZ4, zstd, Blosc and more).
A file that holds an Eiger master file's pixel mask and count cutoff gives
them to the scan's :class:`~bluesky_ptycho.solver.detector.FramePreparation`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

from ..io.frame_files import FramePoint, FrameSource, check_points, read_points
from ..solver.detector import EIGER_PIXEL_MASK, EIGER_SATURATION

HDF5_MIMETYPE = "application/x-hdf5"


class ExternalFrames:
    """Reads the frames that asset documents point to, as their files are written."""

    def __init__(self) -> None:
        self._sources: dict[str, FrameSource] = {}  # stream resource uid -> source
        self._files: dict[Path, h5py.File] = {}

    def add_stream_resource(self, doc: dict) -> None:
        """Register a StreamResource (event-model >= 1.20).

        Raises
        ------
        ValueError
            For a mimetype other than HDF5 or a URI that is not a local file.
        """
        if doc.get("mimetype") != HDF5_MIMETYPE:
            raise ValueError(
                f"stream resource {doc['uid']}: mimetype {doc.get('mimetype')!r} is not supported "
                f"(only {HDF5_MIMETYPE})"
            )
        uri = urlparse(doc["uri"])
        if uri.scheme not in ("file", ""):
            raise ValueError(f"stream resource {doc['uid']}: cannot read {doc['uri']!r} (not a local file)")
        parameters = doc.get("parameters", {})
        if not (parameters.get("dataset") or parameters.get("path")):
            raise ValueError(f"stream resource {doc['uid']}: its parameters name no dataset of the HDF5 file")
        self._sources[doc["uid"]] = FrameSource(
            Path(unquote(uri.path)),
            parameters.get("dataset") or parameters.get("path"),
            int(parameters.get("multiplier") or parameters.get("frame_per_point") or 1),
        )

    def knows(self, stream_resource: str) -> bool:
        """Whether the StreamResource ``stream_resource`` was registered (frames of this scan's detector)."""
        return stream_resource in self._sources

    def read_stream_datum(self, doc: dict) -> np.ndarray:
        """The frames (n, H, W) of a StreamDatum, one per sequence number it covers."""
        source = self._sources[doc["stream_resource"]]
        return read_points(source, self._dataset(source), doc["indices"]["start"], doc["indices"]["stop"])

    def points_of(self, doc: dict) -> list[FramePoint]:
        """The frames of a StreamDatum by reference, one per sequence number it covers.

        Nothing is read but the dataset's length: the file must hold them.
        """
        source = self._sources[doc["stream_resource"]]
        check_points(source, self._dataset(source), doc["indices"]["start"], doc["indices"]["stop"])
        return [FramePoint(source, point) for point in range(doc["indices"]["start"], doc["indices"]["stop"])]

    def read_point(self, point: FramePoint) -> np.ndarray:
        """The frame (H, W) of one referenced scan point."""
        return read_points(point.source, self._dataset(point.source), point.point, point.point + 1)[0]

    def frames_of(self, stream_resource: str) -> h5py.Dataset:
        """The dataset a StreamResource's frames are in (its shape and type: nothing is read)."""
        return self._dataset(self._sources[stream_resource])

    def detector_file_facts(self, stream_resource: str) -> tuple[np.ndarray | None, float | None]:
        """The pixel mask and saturation cutoff the frames' file holds (as an Eiger master file does), or None."""
        file = self.frames_of(stream_resource).file
        mask = np.asarray(file[EIGER_PIXEL_MASK]) if EIGER_PIXEL_MASK in file else None
        cutoff = float(np.asarray(file[EIGER_SATURATION])) if EIGER_SATURATION in file else None
        return mask, cutoff

    def _dataset(self, source: FrameSource) -> h5py.Dataset:
        if source.path not in self._files:
            self._files[source.path] = source.open()
        return source.dataset_of(self._files[source.path])

    def close(self) -> None:
        """Close every file opened for reading."""
        while self._files:
            _, file = self._files.popitem()
            file.close()
