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

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import h5py
import hdf5plugin
import numpy as np

from ..solver.detector import EIGER_PIXEL_MASK, EIGER_SATURATION

HDF5_MIMETYPE = "application/x-hdf5"


@dataclass(frozen=True)
class _Source:
    """An HDF5 dataset and how many of its frames make one point of the scan."""

    path: Path
    dataset: str
    frames_per_point: int = 1


def _missing_filters(dataset: h5py.Dataset) -> list[str]:
    """The filters of ``dataset``'s pipeline that this process cannot apply, as "name (id)"."""
    pipeline = dataset.id.get_create_plist()
    filters = (pipeline.get_filter(i) for i in range(pipeline.get_nfilters()))
    return [
        f"{name.decode(errors='replace') or 'unnamed'} ({code})"
        for code, _, _, name in filters
        if not h5py.h5z.filter_avail(code)
    ]


class ExternalFrames:
    """Reads the frames that asset documents point to, as their files are written."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}  # stream resource uid -> source
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
        self._sources[doc["uid"]] = _Source(
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
        return self._read(source, doc["indices"]["start"], doc["indices"]["stop"])

    def detector_file_facts(self, stream_resource: str) -> tuple[np.ndarray | None, float | None]:
        """The pixel mask and saturation cutoff the frames' file holds (as an Eiger master file does), or None."""
        source = self._sources[stream_resource]
        file = self._dataset(source).file
        mask = np.asarray(file[EIGER_PIXEL_MASK]) if EIGER_PIXEL_MASK in file else None
        cutoff = float(np.asarray(file[EIGER_SATURATION])) if EIGER_SATURATION in file else None
        return mask, cutoff

    def _read(self, source: _Source, start: int, stop: int) -> np.ndarray:
        dataset = self._dataset(source)
        per_point = source.frames_per_point
        first, last = start * per_point, stop * per_point
        if last > dataset.shape[0]:
            dataset.refresh()
        if last > dataset.shape[0]:
            raise ValueError(
                f"{source.path}:{source.dataset} holds {dataset.shape[0]} frames; "
                f"the documents refer to frames {first} to {last - 1}"
            )
        try:
            frames = np.asarray(dataset[first:last])
        except OSError as error:
            missing = _missing_filters(dataset)
            if not missing:
                raise
            raise ValueError(
                f"{source.path}:{source.dataset} cannot be decompressed: its HDF5 filter "
                f"{', '.join(missing)} is not available here (registered: HDF5's own and hdf5plugin "
                f"{hdf5plugin.version}'s {', '.join(hdf5plugin.FILTERS)}): {error}"
            ) from error
        if per_point == 1:
            return frames
        return frames.reshape(stop - start, per_point, *frames.shape[1:]).sum(axis=1, dtype=frames.dtype)

    def _dataset(self, source: _Source) -> h5py.Dataset:
        if source.path not in self._files:
            if not source.path.exists():
                raise FileNotFoundError(f"external frame file {source.path} does not exist")
            try:
                self._files[source.path] = h5py.File(source.path, "r", swmr=True)
            except OSError:  # a file not written in SWMR mode (older HDF5 format): read it as it is
                self._files[source.path] = h5py.File(source.path, "r")
        file = self._files[source.path]
        if source.dataset not in file:
            raise ValueError(f"{source.path} has no dataset {source.dataset}")
        return file[source.dataset]

    def close(self) -> None:
        """Close every file opened for reading."""
        while self._files:
            _, file = self._files.popitem()
            file.close()
