"""The functions that run on a remote worker: a Dask worker, a Globus Compute endpoint.

A remote worker keeps nothing between jobs, so every job carries the whole
scan so far (frames inline, or as staged CXI files the worker can read) and
the previous result of the scan to continue from. Both entry points are
plain top-level functions of an installed module, so executors ship them by
reference and the facility runs exactly the code tested here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io.cxi import read_cxi, read_result, write_result
from ..solver.data import Geometry, ReconstructionResult
from ..solver.reconstructor import Reconstructor
from ..solver.settings import ReconstructionSettings
from .mpi import parsl_launcher, run_ranks
from .staging import RESULT_GLOB

logger = logging.getLogger(__name__)

#: Set in a facility worker's environment, the device it reconstructs on ("cpu" or "gpu"), whatever the
#: beamline's settings say (they describe the beamline's machine).
DEVICE_ENV = "BLUESKY_PTYCHO_DEVICE"


class VersionMismatchError(ValueError):
    """The worker's bluesky-ptycho is another major or minor version than the beamline's."""


def check_client_version(client_version: str | None) -> None:
    """Refuse a job from a beamline whose bluesky-ptycho differs from this worker's in major or minor version.

    The function is registered by reference, so the worker runs whatever
    version its environment has; results and file layouts are only promised
    within one minor version.
    """
    if client_version is None or client_version.split(".")[:2] == __version__.split(".")[:2]:
        return
    raise VersionMismatchError(
        f"the beamline runs bluesky-ptycho {client_version} but this worker has {__version__}; install "
        f"the beamline's version in the facility's environment: pip install 'bluesky-ptycho[facility]=={client_version}'"
    )


def facility_settings(settings: ReconstructionSettings) -> ReconstructionSettings:
    """``settings`` with the device the facility chose in :data:`DEVICE_ENV`, when it chose one."""
    device = os.environ.get(DEVICE_ENV)
    return replace(settings, device=device.strip().lower()) if device else settings


@dataclass
class FrameChunk:
    """Frames (N, H, W) and their (x, y) positions in metres, sent inline."""

    frames: np.ndarray
    positions: np.ndarray

    @property
    def nbytes(self) -> int:
        """Size of the frames in bytes."""
        return int(self.frames.nbytes)


@dataclass
class RemoteRequest:
    """Everything a stateless worker needs for one job of a scan.

    Attributes
    ----------
    scan_uid
        uid of the raw scan (for logs and errors).
    geometry, settings, mask
        What to reconstruct and how.
    chunks
        The scan's frames so far, in order: inline :class:`FrameChunk`\\ s or
        paths of staged CXI files (as the worker sees them).
    iterations
        Iterations to do in this job.
    previous
        The scan's previous result to continue from (None for the first job).
    probe
        The initial probe of the first job (None: built from the data).
    client_version
        The beamline's bluesky-ptycho version (:func:`check_client_version`).
    """

    scan_uid: str
    geometry: Geometry
    settings: ReconstructionSettings
    iterations: int
    chunks: list[FrameChunk | str] = field(default_factory=list)
    mask: np.ndarray | None = None
    previous: ReconstructionResult | None = None
    probe: np.ndarray | None = None
    client_version: str = __version__


def _load(chunk: FrameChunk | str) -> FrameChunk:
    if isinstance(chunk, FrameChunk):
        return chunk
    data = read_cxi(chunk)
    return FrameChunk(data.frames, data.positions)


def continue_reconstruction(
    geometry: Geometry,
    settings: ReconstructionSettings,
    chunks: list[FrameChunk],
    iterations: int,
    *,
    mask: np.ndarray | None = None,
    previous: ReconstructionResult | None = None,
    probe: np.ndarray | None = None,
) -> ReconstructionResult:
    """Reconstruct the frames of ``chunks``, continuing from ``previous`` when given.

    The frames ``previous`` already used keep its refined positions; without
    ``previous``, ``probe`` is the initial probe (None: built from the data).
    The device is the facility's choice where it made one (:data:`DEVICE_ENV`).
    The seconds this took go into ``result.extra["compute_s"]``, the device
    into ``result.extra["device"]``.
    """
    started = time.perf_counter()
    settings = facility_settings(settings)
    reconstructor, positions = Reconstructor.start_or_resume(
        geometry,
        settings,
        np.concatenate([chunk.positions for chunk in chunks]).astype(float),
        mask=mask,
        probe=probe,
        previous=previous,
    )
    first = 0
    for chunk in chunks:  # each as it came: the frames are never copied into one array
        reconstructor.add_frames(chunk.frames, positions[first : first + len(chunk.frames)])
        first += len(chunk.frames)
    result = reconstructor.iterate(iterations).result()
    result.extra["compute_s"] = time.perf_counter() - started
    result.extra["device"] = settings.device
    return result


def run_inline_job(request: RemoteRequest) -> ReconstructionResult:
    """Do one job of a scan whose frames came inline (what :func:`reconstruct_remote` runs)."""
    check_client_version(request.client_version)
    return continue_reconstruction(
        request.geometry,
        request.settings,
        [_load(chunk) for chunk in request.chunks],
        request.iterations,
        mask=request.mask,
        previous=request.previous,
        probe=request.probe,
    )


def reconstruct_remote(request):
    """Do one job of a scan on a stateless worker (the function :class:`ExecutorRunner` ships inline).

    Self-contained, like :func:`reconstruct_files`: ``request`` is a :class:`RemoteRequest`.
    """
    from bluesky_ptycho.federation.remote import run_inline_job

    return run_inline_job(request)


def _remove_scan_files(frame_files: list[str], keep: Path) -> None:
    """Delete a finished scan's frame files and its results other than ``keep``."""
    for path in [*map(Path, frame_files), *keep.parent.glob(RESULT_GLOB)]:
        if path != keep:
            path.unlink(missing_ok=True)


def reconstruct_files(
    frame_files: list,
    result_file: str,
    iterations: int,
    settings: dict | None = None,
    previous_file: str | None = None,
    client_version: str | None = None,
    final: bool = False,
) -> dict:
    """Reconstruct staged CXI chunk files and write the result file (the Globus Flow's compute step).

    Every argument is plain JSON, as a Globus Flow passes them. The geometry,
    mask and any initial probe come from the first chunk file. The function
    is self-contained (its body imports what it uses, its annotations are
    builtins), so it runs the same whether registered by reference (the
    default) or as source, as an endpoint whose ``allowed_serializers``
    admit only source strategies demands.

    Parameters
    ----------
    frame_files
        CXI files holding the scan's frames so far, in order, as paths on
        the worker.
    result_file
        Where to write the result (CXI/HDF5, :func:`~bluesky_ptycho.io.write_result`).
    iterations
        Iterations to do.
    settings
        :meth:`ReconstructionSettings.to_dict` output (default settings when None).
    previous_file
        A result file of this scan to continue from.
    client_version
        The beamline's bluesky-ptycho version (:func:`check_client_version`).
    final
        The scan's last job: once the result is written, delete the frame
        files and the scan's older results, so a scan leaves one file (this
        result, until it is fetched) where it was reconstructed.

    On a ``GlobusMPIEngine`` endpoint the task's ``resource_specification``
    (``num_nodes``, ``ranks_per_node``) sets how many MPI ranks share the
    scan (:func:`~.mpi.parsl_launcher`, :mod:`bluesky_ptycho.distributed`).

    Returns
    -------
    dict
        A small JSON summary: result file, frames used, iterations, final cost.
    """
    from bluesky_ptycho.federation.remote import run_staged_job

    return run_staged_job(
        frame_files, result_file, iterations, settings, previous_file, client_version, final
    )


def run_staged_job(
    frame_files: list[str],
    result_file: str,
    iterations: int,
    settings: dict[str, Any] | None,
    previous_file: str | None,
    client_version: str | None,
    final: bool,
) -> dict[str, Any]:
    """Do one job of a scan from staged files (what :func:`reconstruct_files` runs)."""
    check_client_version(client_version)
    if not frame_files:
        raise ValueError("no frame files to reconstruct")
    launcher = parsl_launcher()
    if (
        launcher is not None
    ):  # a GlobusMPIEngine task: the scan over the ranks its resource_specification asked for
        result = run_ranks(
            launcher,
            [Path(path) for path in frame_files],
            Path(result_file),
            facility_settings(ReconstructionSettings.from_dict(settings or {})),
            iterations=iterations,
            previous_file=None if previous_file is None else Path(previous_file),
            fit_ranks=True,  # a live scan's first preview may have fewer than two frames a rank
            echo=logger.debug,  # rank 0's progress: a worker's output may be a beamline's terminal
        )
        return _finish(frame_files, Path(result_file), result, final)
    first = read_cxi(frame_files[0])
    chunks = [FrameChunk(first.frames, first.positions)] + [_load(path) for path in frame_files[1:]]
    previous = None if previous_file is None else read_result(previous_file)
    result = continue_reconstruction(
        first.geometry,
        ReconstructionSettings.from_dict(settings or {}),
        chunks,
        iterations,
        mask=first.mask,
        previous=previous,
        probe=first.probe,
    )
    Path(result_file).parent.mkdir(parents=True, exist_ok=True)
    write_result(result_file, result)
    return _finish(frame_files, Path(result_file), result, final)


def _finish(
    frame_files: list[str], result_file: Path, result: ReconstructionResult, final: bool
) -> dict[str, Any]:
    """After the result file is written: a final job's clean-up, and the summary the flow gets."""
    if final:
        _remove_scan_files(frame_files, result_file)
    return {
        "result_file": str(result_file),
        "n_frames": result.n_frames,
        "iterations": result.iterations,
        "final_cost": result.final_cost,
    }
