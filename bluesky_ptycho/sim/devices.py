"""Simulated ophyd devices of a ptychography beamline: a sample stage and a detector."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import hdf5plugin
import numpy as np
from event_model import StreamRange, compose_resource, compose_stream_resource
from ophyd import Component, Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import StatusBase

from ..solver.data import ELECTRON_VOLT
from ..solver.detector import EIGER_PIXEL_MASK, EIGER_SATURATION
from .sample import SimulatedSample

MICROMETRE = 1e-6
AssetDocs = Literal["stream", "resource"]


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
        return _finished()


#: Where an area detector's HDF5 plugin puts the frames in its files.
AD_HDF5_DATASET = "/entry/data/data"


#: HDF5 filters the simulated detector can compress its frames with (hdf5plugin's), by name
COMPRESSION = {
    "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
    "lz4": hdf5plugin.LZ4,
    "zstd": hdf5plugin.Zstd,
}


#: Dectris pixel-mask bits of the simulated detector's bad pixels
GAP, DEAD, HOT = 1, 2, 16


@dataclass(frozen=True)
class DetectorLayout:
    """A pixel detector larger than the reconstruction's frames, as an Eiger's: modules and gaps, the beam off-centre.

    Parameters
    ----------
    shape
        (rows, columns) of the detector; default an Eiger2 1M's.
    module_shape, gap
        Each module's (rows, columns), and the (rows, columns) of the gaps
        between modules (they read 0 and are masked).
    beam_centre
        (row, column) on which the sample's frame (its zero frequency) falls;
        default: off the detector's centre.
    dead_fraction, hot_fraction
        Fractions of pixels that read 0 and that read the saturation count.
    saturation
        The count cutoff: no pixel reads more (a saturated pixel reads it).
    seed
        Seed of which pixels are dead and hot.
    """

    shape: tuple[int, int] = (1062, 1028)
    module_shape: tuple[int, int] = (514, 1028)
    gap: tuple[int, int] = (34, 0)
    beam_centre: tuple[int, int] | None = None
    dead_fraction: float = 1e-3
    hot_fraction: float = 2e-4
    saturation: int = 2**20
    seed: int = 1

    @property
    def centre(self) -> tuple[int, int]:
        """Where the beam falls: ``beam_centre``, or a third of the way into the detector."""
        return self.beam_centre or (self.shape[0] // 3, 2 * self.shape[1] // 5)

    def pixel_mask(self) -> np.ndarray:
        """The Eiger-style pixel mask (0 good; :data:`GAP`, :data:`DEAD`, :data:`HOT` bits)."""
        rows, columns = np.indices(self.shape)
        pitch = np.add(self.module_shape, self.gap)
        in_gap = (rows % pitch[0] >= self.module_shape[0]) | (columns % pitch[1] >= self.module_shape[1])
        rng = np.random.default_rng(self.seed)
        mask = np.where(in_gap, GAP, 0).astype(np.uint32)
        mask[rng.random(self.shape) < self.dead_fraction] |= DEAD
        mask[rng.random(self.shape) < self.hot_fraction] |= HOT
        return mask

    def record(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The detector frame of one centred ``frame`` of counts (given the :meth:`pixel_mask`)."""
        h, w = frame.shape
        top, left = self.centre[0] - h // 2, self.centre[1] - w // 2
        if top < 0 or left < 0 or top + h > self.shape[0] or left + w > self.shape[1]:
            raise ValueError(
                f"a {h} x {w} frame centred on {self.centre} does not fit the {self.shape} detector"
            )
        raw = np.zeros(self.shape, np.uint32)
        raw[top : top + h, left : left + w] = np.minimum(frame, self.saturation)
        raw[mask & (GAP | DEAD) != 0] = 0
        raw[mask & HOT != 0] = self.saturation
        return raw


class HDF5PtychoDetector(PtychoDetector):
    """A :class:`PtychoDetector` that writes its frames to HDF5 files, as an area detector does.

    Each staging opens a new file ``<directory>/<uuid>.h5`` (SWMR mode, frames
    at ``/entry/data/data``); each trigger appends one frame and flushes it,
    so readers see it at once. The event does not carry the frame; the
    detector emits asset documents that point into the file instead:

    - ``asset_docs="stream"``: a StreamResource (``application/x-hdf5``) per
      file and a StreamDatum per frame (event-model >= 1.20);
    - ``asset_docs="resource"``: the legacy Resource (spec ``AD_HDF5``) and a
      Datum per frame, whose ``datum_id`` is the event's value.

    Parameters
    ----------
    directory
        Where the files go (a catalog reading them must be allowed to read it).
    asset_docs
        ``"stream"`` or ``"resource"``.
    compression
        None, or the name of an HDF5 filter of :data:`COMPRESSION` that
        compresses each frame's chunk: ``"bitshuffle-lz4"`` as Dectris Eiger
        file writers do, ``"lz4"``, ``"zstd"``.
    layout
        None: frames of the sample's frame shape, centred. A
        :class:`DetectorLayout`: each frame recorded on that larger, gapped
        detector, off-centre, with dead, hot and saturated pixels; the file
        holds the pixel mask and the count cutoff where an Eiger master file does.
    **kwargs
        As for :class:`PtychoDetector`.
    """

    def __init__(
        self,
        *args,
        directory: str | Path,
        asset_docs: AssetDocs = "stream",
        compression: str | None = None,
        layout: DetectorLayout | None = None,
        **kwargs,
    ):
        if asset_docs not in ("stream", "resource"):
            raise ValueError(f"asset_docs must be 'stream' or 'resource', not {asset_docs!r}")
        if compression is not None and compression not in COMPRESSION:
            raise ValueError(f"compression must be None or one of {sorted(COMPRESSION)}, not {compression!r}")
        super().__init__(*args, **kwargs)
        self.directory = Path(directory)
        self.asset_docs = asset_docs
        self.compression = compression
        self.layout = layout
        self._pixel_mask = None if layout is None else layout.pixel_mask()
        self._file: h5py.File | None = None
        self._frames: h5py.Dataset | None = None
        self._new_docs: deque[tuple[str, dict]] = deque()
        self._compose_datum = None

    def stage(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{uuid.uuid4()}.h5"
        self._file = h5py.File(path, "w", libver="latest")
        shape = self.recorded_shape
        if self.layout is not None:
            self._file[EIGER_PIXEL_MASK] = self._pixel_mask
            self._file[EIGER_SATURATION] = self.layout.saturation
        self._frames = self._file.create_dataset(
            AD_HDF5_DATASET,
            shape=(0, *shape),
            maxshape=(None, *shape),
            dtype="<u4",
            chunks=(1, *shape),
            **(COMPRESSION[self.compression]() if self.compression else {}),
        )
        self._file.swmr_mode = True
        if self.asset_docs == "stream":
            stream = compose_stream_resource(
                mimetype="application/x-hdf5",
                uri=path.absolute().as_uri(),
                data_key=self.image.name,
                parameters={"dataset": AD_HDF5_DATASET, "chunk_shape": [1, *shape]},
            )
            self._new_docs.append(("stream_resource", stream.stream_resource_doc))
            self._compose_datum = stream.compose_stream_datum
        else:
            resource = compose_resource(
                spec="AD_HDF5",
                root="/",
                resource_path=str(path.absolute()).lstrip("/"),
                resource_kwargs={"frame_per_point": 1},
            )
            self._new_docs.append(("resource", resource.resource_doc))
            self._compose_datum = resource.compose_datum
        return super().stage()

    def unstage(self):
        if self._file is not None:
            self._file.close()
            self._file = self._frames = self._compose_datum = None
        return super().unstage()

    def trigger(self) -> StatusBase:
        if self._frames is None:
            raise RuntimeError(f"{self.name} must be staged before it is triggered")
        index = len(self._frames)
        self._frames.resize(index + 1, axis=0)
        frame = self.acquire_frame()
        self._frames[index] = frame if self.layout is None else self.layout.record(frame, self._pixel_mask)
        self._frames.flush()
        if self.asset_docs == "stream":
            datum = self._compose_datum(
                indices=StreamRange(start=index, stop=index + 1), seq_nums=StreamRange(start=0, stop=0)
            )
            self._new_docs.append(("stream_datum", datum))
        else:
            datum = self._compose_datum(datum_kwargs={"point_number": index})
            self._new_docs.append(("datum", datum))
            self.image.put(datum["datum_id"])
        return _finished()

    def describe(self) -> dict:
        description = super().describe()
        key = self.image.name
        description[key] = {
            "source": f"file:{self.directory}",
            "dtype": "array",
            "dtype_numpy": "<u4",
            "shape": list(self.recorded_shape),
            "external": "STREAM:" if self.asset_docs == "stream" else "FILESTORE:",
        }
        return description

    @property
    def recorded_shape(self) -> tuple[int, int]:
        """The shape of the frames in the files: the layout's, or the sample's frames'."""
        return self.sample.geometry.frame_shape if self.layout is None else self.layout.shape

    def read(self) -> dict:
        reading = super().read()
        if self.asset_docs == "stream":
            reading.pop(self.image.name)
        return reading

    def collect_asset_docs(self):
        while self._new_docs:
            yield self._new_docs.popleft()


def _finished() -> StatusBase:
    status = StatusBase()
    status.set_finished()
    return status


def simulated_beamline(
    frame_size: int = 64,
    photons: float = 1e6,
    probe_defocus: float | None = None,
    seed: int = 0,
    hdf5_directory: str | Path | None = None,
    asset_docs: AssetDocs = "stream",
    object_size: int | None = None,
    compression: str | None = None,
    layout: DetectorLayout | None = None,
) -> tuple[SampleStage, PtychoDetector]:
    """A stage and detector, named "stage" and "det" (sample: :meth:`SimulatedSample.create`).

    ``object_size`` (pixels; default 4 frames) sets how far the stage may move.

    With ``hdf5_directory`` the detector is an :class:`HDF5PtychoDetector`
    writing there (its frames compressed by ``compression``, recorded on
    the larger detector of ``layout``) and emitting ``asset_docs``;
    otherwise frames are inline.
    """
    stage = SampleStage(name="stage")
    sample = SimulatedSample.create(
        frame_size=frame_size, object_size=object_size, photons=photons, probe_defocus=probe_defocus
    )
    if hdf5_directory is None:
        return stage, PtychoDetector(name="det", stage=stage, sample=sample, seed=seed)
    detector = HDF5PtychoDetector(
        name="det",
        stage=stage,
        sample=sample,
        seed=seed,
        directory=hdf5_directory,
        asset_docs=asset_docs,
        compression=compression,
        layout=layout,
    )
    return stage, detector
