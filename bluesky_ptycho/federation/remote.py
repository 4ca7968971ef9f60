"""The functions that run on a remote worker: a Dask worker, a Globus Compute endpoint.

A remote worker keeps nothing between jobs, so every job carries the whole
scan so far (frames inline, or as staged CXI files the worker can read) and
the previous result of the scan to continue from. Both entry points are
plain top-level functions of an installed module, so executors ship them by
reference and the facility runs exactly the code tested here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.cxi import read_cxi, read_result, write_result
from ..solver.data import Geometry, ReconstructionResult
from ..solver.reconstructor import Reconstructor
from ..solver.settings import ReconstructionSettings


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
    """

    scan_uid: str
    geometry: Geometry
    settings: ReconstructionSettings
    iterations: int
    chunks: list[FrameChunk | str] = field(default_factory=list)
    mask: np.ndarray | None = None
    previous: ReconstructionResult | None = None
    probe: np.ndarray | None = None


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
    The seconds this took go into ``result.extra["compute_s"]``.
    """
    started = time.perf_counter()
    frames = np.concatenate([chunk.frames for chunk in chunks])
    positions = np.concatenate([chunk.positions for chunk in chunks]).astype(float)
    if previous is None:
        reconstructor = Reconstructor(geometry, settings, mask=mask, probe=probe)
    else:
        if previous.n_frames > len(frames):
            raise ValueError(
                f"the previous result used {previous.n_frames} frames but this job has only {len(frames)}"
            )
        reconstructor = Reconstructor.resume(previous, geometry, settings, mask=mask)
        positions[: previous.n_frames] = previous.positions
    result = reconstructor.add_frames(frames, positions).iterate(iterations).result()
    result.extra["compute_s"] = time.perf_counter() - started
    return result


def reconstruct_remote(request: RemoteRequest) -> ReconstructionResult:
    """Do one job of a scan on a stateless worker (the function :class:`ExecutorRunner` ships)."""
    return continue_reconstruction(
        request.geometry,
        request.settings,
        [_load(chunk) for chunk in request.chunks],
        request.iterations,
        mask=request.mask,
        previous=request.previous,
        probe=request.probe,
    )


def reconstruct_files(
    frame_files: list[str],
    result_file: str,
    iterations: int,
    settings: dict[str, Any] | None = None,
    previous_file: str | None = None,
) -> dict[str, Any]:
    """Reconstruct staged CXI chunk files and write the result file (the Globus Flow's compute step).

    Every argument is plain JSON, as a Globus Flow passes them. The geometry,
    mask and any initial probe come from the first chunk file.

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

    Returns
    -------
    dict
        A small JSON summary: result file, frames used, iterations, final cost.
    """
    if not frame_files:
        raise ValueError("no frame files to reconstruct")
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
    return {
        "result_file": str(result_file),
        "n_frames": result.n_frames,
        "iterations": result.iterations,
        "final_cost": result.final_cost,
    }
