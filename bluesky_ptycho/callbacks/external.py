"""Frames stored outside the documents: HDF5 files referenced by StreamResource/StreamDatum or Resource/Datum.

Detectors (area detectors, ophyd-async) write frames to HDF5 files and emit
documents that point into them. :class:`ExternalFrames` resolves those
pointers while the files are still being written (SWMR readers, refreshed
before every read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

#: Resource specs whose files hold frames in one HDF5 dataset, and that dataset.
HDF5_SPECS = dict.fromkeys(("AD_HDF5", "AD_HDF5_SWMR", "AD_HDF5_SINGLE", "HDF5"), "/entry/data/data")
HDF5_MIMETYPE = "application/x-hdf5"


@dataclass(frozen=True)
class _Source:
    """An HDF5 dataset and how many of its frames make one point of the scan."""

    path: Path
    dataset: str
    frames_per_point: int = 1


class ExternalFrames:
    """Reads the frames that asset documents point to, as their files are written."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}  # stream resource / resource uid -> source
        self._datums: dict[str, tuple[str, dict]] = {}  # datum_id -> (resource uid, datum_kwargs)
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
        self._sources[doc["uid"]] = _Source(
            Path(unquote(uri.path)),
            parameters.get("dataset") or parameters.get("path") or HDF5_SPECS["AD_HDF5"],
            int(parameters.get("multiplier") or parameters.get("frame_per_point") or 1),
        )

    def add_resource(self, doc: dict) -> None:
        """Register a legacy Resource (e.g. spec ``AD_HDF5`` of the area detector HDF5 plugin).

        Raises
        ------
        ValueError
            For a spec that does not name one HDF5 dataset of frames.
        """
        spec = doc.get("spec")
        if spec not in HDF5_SPECS:
            raise ValueError(
                f"resource {doc['uid']}: spec {spec!r} is not supported (use one of {', '.join(HDF5_SPECS)})"
            )
        kwargs = doc.get("resource_kwargs", {})
        root, relative = doc.get("root", ""), doc["resource_path"]
        self._sources[doc["uid"]] = _Source(
            Path(root) / relative,
            kwargs.get("dataset") or HDF5_SPECS[spec],
            int(kwargs.get("frame_per_point", 1)),
        )

    def add_datum(self, doc: dict) -> None:
        """Register a Datum of a known resource (others are ignored)."""
        if doc["resource"] in self._sources:
            self._datums[doc["datum_id"]] = (doc["resource"], doc.get("datum_kwargs", {}))

    def read_stream_datum(self, doc: dict) -> np.ndarray:
        """The frames (n, H, W) of a StreamDatum, one per sequence number it covers."""
        source = self._sources[doc["stream_resource"]]
        return self._read(source, doc["indices"]["start"], doc["indices"]["stop"])

    def read_datum(self, datum_id: str) -> np.ndarray:
        """The frame (H, W) a Datum points to.

        Raises
        ------
        KeyError
            If no Datum document with this id arrived.
        """
        if datum_id not in self._datums:
            raise KeyError(f"no datum document {datum_id!r} arrived before the event that refers to it")
        resource, kwargs = self._datums.pop(datum_id)
        point = int(kwargs.get("point_number", 0))
        return self._read(self._sources[resource], point, point + 1)[0]

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
        frames = np.asarray(dataset[first:last])
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
