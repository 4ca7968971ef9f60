"""CXI (HDF5) files: ptychography datasets in, reconstructions out.

The layout is the CXI 1.6 one used by PyNX, PtyPy and ptychodus (SI units):

=============================================  =================================
``/entry_1/data_1/data``                        frames (N, H, W), zero frequency
                                                at the centre (may be a link to
                                                ``instrument_1/detector_1/data``)
``/entry_1/instrument_1/detector_1/distance``   sample-detector distance, m
``.../detector_1/x_pixel_size``, ``y_pixel_size`` detector pixel, m
``.../detector_1/mask``                         optional, non-zero = bad pixel
``/entry_1/instrument_1/source_1/energy``       photon energy, J (or
                                                ``wavelength`` in m)
``/entry_1/sample_1/geometry_1/translation``    (N, 3) or (N, 2) x, y(, z), m
``.../source_1/illumination``                   optional initial probe
``.../source_1/probe_defocus``                  optional defocus, m (our
                                                extension; + = downstream)
=============================================  =================================

A reconstruction is written to ``/entry_1/image_1`` (object) and
``/entry_1/image_2`` (probe modes) for CXI viewers, and in full to
``/entry_1/reconstruction_1``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..solver.data import Geometry, PtychoData, ReconstructionResult, wavelength_from_energy

DETECTOR = "entry_1/instrument_1/detector_1"
SOURCE = "entry_1/instrument_1/source_1"
TRANSLATION = "entry_1/sample_1/geometry_1/translation"
FRAMES = ("entry_1/data_1/data", f"{DETECTOR}/data")
RESULT = "entry_1/reconstruction_1"
# the result's arrays that only some reconstructions have (None where they have not), kept under their own names
OPTIONAL_ARRAYS = ("frame_scales", "eigen_probes", "eigen_weights")
# a subset of the frames is read this many consecutive frames at a time (HDF5 reads whole chunks anyway)
READ_BLOCK_FRAMES = 256


class CXIFormatError(ValueError):
    """A CXI file lacks a required field or holds an unusable value."""


def _scalar(file: h5py.File, path: str, what: str) -> float:
    if path not in file:
        raise CXIFormatError(f"{file.filename}: missing required field /{path} ({what})")
    value = np.asarray(file[path][()], dtype=float).ravel()
    if value.size != 1 or not np.isfinite(value[0]) or value[0] <= 0:
        raise CXIFormatError(f"{file.filename}: /{path} ({what}) must be one positive number, got {value}")
    return float(value[0])


def _wavelength(file: h5py.File) -> float:
    if f"{SOURCE}/energy" in file:
        return wavelength_from_energy(_scalar(file, f"{SOURCE}/energy", "photon energy in J"))
    if f"{SOURCE}/wavelength" in file:
        return _scalar(file, f"{SOURCE}/wavelength", "wavelength in m")
    raise CXIFormatError(f"{file.filename}: missing required field /{SOURCE}/energy (photon energy in J)")


def read_cxi(path: str | Path, frames: np.ndarray | None = None) -> PtychoData:
    """Read a ptychography dataset from a CXI file: every frame, or the frames of sorted indices ``frames``.

    Raises
    ------
    CXIFormatError
        Naming the missing or malformed field.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such CXI file: {path}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise CXIFormatError(f"{path}: not an HDF5/CXI file ({error})") from None
    with file:
        frames_path = next((p for p in FRAMES if p in file), None)
        if frames_path is None:
            raise CXIFormatError(f"{path}: missing required field /{FRAMES[0]} (diffraction frames)")
        dataset = file[frames_path]
        if dataset.ndim != 3:
            raise CXIFormatError(f"{path}: /{frames_path} must be (N, H, W), got shape {dataset.shape}")
        index = None if frames is None else np.asarray(frames, dtype=np.int64)
        # counts as recorded (uint16 from a detector: two bytes a pixel)
        frames = dataset[()] if index is None else _read_frames(dataset, index)
        distance = _scalar(file, f"{DETECTOR}/distance", "detector distance in m")
        x_pixel = _scalar(file, f"{DETECTOR}/x_pixel_size", "detector pixel size in m")
        y_pixel = _scalar(file, f"{DETECTOR}/y_pixel_size", "detector pixel size in m")
        if not np.isclose(x_pixel, y_pixel, rtol=1e-6):
            raise CXIFormatError(
                f"{path}: non-square detector pixels ({x_pixel} x {y_pixel} m) are not supported"
            )
        wavelength = _wavelength(file)
        translation = _translation(file)
        if index is not None and len(translation) == len(dataset):
            translation = translation[index]
        mask = None
        if f"{DETECTOR}/mask" in file:
            mask = np.asarray(file[f"{DETECTOR}/mask"][()]) == 0
        probe = file[f"{SOURCE}/illumination"][()] if f"{SOURCE}/illumination" in file else None
        defocus = float(file[f"{SOURCE}/probe_defocus"][()]) if f"{SOURCE}/probe_defocus" in file else None
    geometry = Geometry(wavelength, distance, x_pixel, frames.shape[1:])
    try:
        return PtychoData(
            frames=frames,
            positions=translation[:, :2],
            geometry=geometry,
            mask=mask,
            probe=probe,
            probe_defocus=defocus,
        )
    except ValueError as error:
        raise CXIFormatError(f"{path}: {error}") from None


def _translation(file: h5py.File) -> np.ndarray:
    if TRANSLATION not in file:
        raise CXIFormatError(f"{file.filename}: missing required field /{TRANSLATION} (scan positions in m)")
    translation = np.asarray(file[TRANSLATION][()], dtype=float)
    if translation.ndim != 2 or translation.shape[1] not in (2, 3):
        raise CXIFormatError(
            f"{file.filename}: /{TRANSLATION} must be (N, 3) or (N, 2), got {translation.shape}"
        )
    return translation


def _read_frames(dataset: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """The frames of sorted ``index`` from ``dataset`` (N, H, W), read a block of consecutive frames at a time."""
    if len(index) and (np.any(np.diff(index) <= 0) or index[0] < 0 or index[-1] >= len(dataset)):
        raise ValueError(f"frame indices must be increasing and within 0..{len(dataset) - 1}")
    out = np.empty((len(index), *dataset.shape[1:]), dtype=dataset.dtype)
    done = 0
    while done < len(index):
        first = index[done]
        block = dataset[first : min(first + READ_BLOCK_FRAMES, len(dataset))]
        wanted = index[done:][index[done:] < first + len(block)]
        out[done : done + len(wanted)] = block[wanted - first]
        done += len(wanted)
    return out


def read_positions(path: str | Path) -> np.ndarray:
    """The (N, 2) scan positions (x, y) in metres of a CXI file, without its frames."""
    with h5py.File(path, "r") as file:
        return _translation(file)[:, :2]


def write_cxi(path: str | Path, data: PtychoData) -> Path:
    """Write a dataset as a CXI file readable by this package, PyNX and ptychodus."""
    path = Path(path)
    g = data.geometry
    with h5py.File(path, "w") as file:
        file.create_dataset("cxi_version", data=160)
        file.create_dataset("number_of_entries", data=1)
        detector = file.create_group(DETECTOR)
        detector.create_dataset(
            "data", data=data.frames, chunks=(1, *data.frames.shape[1:]), compression="gzip"
        )
        detector.create_dataset("distance", data=g.detector_distance)
        detector.create_dataset("x_pixel_size", data=g.detector_pixel_size)
        detector.create_dataset("y_pixel_size", data=g.detector_pixel_size)
        if data.mask is not None:
            detector.create_dataset("mask", data=(~data.mask).astype(np.uint32))
        source = file.create_group(SOURCE)
        source.create_dataset("energy", data=g.energy)
        if data.probe is not None:
            source.create_dataset("illumination", data=data.probe)
        if data.probe_defocus is not None:
            source.create_dataset("probe_defocus", data=data.probe_defocus)
        translation = np.zeros((len(data), 3))
        translation[:, :2] = data.positions
        file.create_dataset(TRANSLATION, data=translation)
        file["entry_1/data_1/data"] = h5py.SoftLink(f"/{DETECTOR}/data")
    return path


def write_result(path: str | Path, result: ReconstructionResult) -> Path:
    """Write a reconstruction (object, probe, positions, history, settings) to HDF5/CXI."""
    path = Path(path)
    with h5py.File(path, "a") as file:
        for name in ("entry_1/image_1", "entry_1/image_2", RESULT):
            if name in file:
                del file[name]
        image = file.create_group("entry_1/image_1")
        image.create_dataset("data", data=result.object)
        image.create_dataset("x_pixel_size", data=result.pixel_size[1])
        image.create_dataset("y_pixel_size", data=result.pixel_size[0])
        image.create_dataset("data_type", data="object")
        probe = file.create_group("entry_1/image_2")
        probe.create_dataset("data", data=result.probe)
        probe.create_dataset("data_type", data="probe")
        group = file.create_group(RESULT)
        group.create_dataset("object", data=result.object)
        group.create_dataset("probe", data=result.probe)
        group.create_dataset("positions", data=result.positions)
        group.create_dataset("pixel_size", data=np.asarray(result.pixel_size))
        group.create_dataset("object_origin", data=np.asarray(result.object_origin))
        group.create_dataset("cost_history", data=np.asarray(result.cost_history, dtype=float))
        for name in OPTIONAL_ARRAYS:
            if getattr(result, name) is not None:
                group.create_dataset(name, data=getattr(result, name))
        group.attrs["iterations"] = result.iterations
        group.attrs["wall_time"] = result.wall_time
        group.attrs["settings"] = json.dumps(result.settings)
        group.attrs["extra"] = json.dumps(result.extra)
        if result.geometry is not None:
            group.attrs["geometry"] = json.dumps(result.geometry.to_dict())
    return path


def read_result(path: str | Path) -> ReconstructionResult:
    """Read a reconstruction written by :func:`write_result`."""
    with h5py.File(path, "r") as file:
        if RESULT not in file:
            raise CXIFormatError(f"{path}: no reconstruction (missing /{RESULT})")
        group = file[RESULT]
        return ReconstructionResult(
            object=group["object"][()],
            probe=group["probe"][()],
            positions=group["positions"][()],
            pixel_size=tuple(float(v) for v in group["pixel_size"][()]),
            object_origin=tuple(float(v) for v in group["object_origin"][()]),
            cost_history=[float(v) for v in group["cost_history"][()]],
            iterations=int(group.attrs["iterations"]),
            settings=json.loads(group.attrs["settings"]),
            wall_time=float(group.attrs["wall_time"]),
            extra=json.loads(group.attrs["extra"]),
            geometry=Geometry.from_dict(json.loads(group.attrs["geometry"]))
            if "geometry" in group.attrs
            else None,
            **{name: group[name][()] if name in group else None for name in OPTIONAL_ARRAYS},
        )
