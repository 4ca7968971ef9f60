"""Staging a scan's frames as CXI chunk files, as the scan progresses.

A remote worker that shares a file system with the beamline (or receives the
files by Globus Transfer) reads frames from these files instead of having
them pushed through the executor. Each chunk is a complete CXI file, so any
ptychography code can read it too. Layout, under the staging directory::

    <scan uid>/frames/chunk_00000.cxi, chunk_00001.cxi, ...
    <scan uid>/results/result_00000.cxi, ...
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.cxi import write_cxi
from ..solver.data import Geometry, PtychoData
from .jobs import ReconstructionJob

logger = logging.getLogger(__name__)

#: The name of a scan's k-th result file, and the pattern of all of them.
RESULT_NAME = "result_{:05d}.cxi"
RESULT_GLOB = "result_*.cxi"


@dataclass
class StagedJob:
    """The files of one job of a staged scan.

    Attributes
    ----------
    result
        Where the job's result goes (not written yet).
    previous
        The scan's latest result, to continue from (None for its first job).
    bytes_written
        Size of the chunk file the job's new frames went into (0: no new frames).
    """

    result: Path
    previous: Path | None
    bytes_written: int


class ScanStaging:
    """The staged files of one scan.

    Parameters
    ----------
    directory
        The staging directory (e.g. the local path of a Globus collection).
    scan_uid
        uid of the raw scan; its files go under ``directory / scan_uid``.
    """

    def __init__(self, directory: str | Path, scan_uid: str) -> None:
        self.root = Path(directory) / scan_uid
        self.frames_directory = self.root / "frames"
        self.results_directory = self.root / "results"
        self.chunks: list[Path] = []
        self.results: list[Path] = []  # results that came back, oldest first
        self._result_count = 0

    def add_chunk(
        self,
        frames: np.ndarray,
        positions: np.ndarray,
        geometry: Geometry,
        mask: np.ndarray | None = None,
        probe: np.ndarray | None = None,
    ) -> Path:
        """Write frames (N, H, W) and positions (N, 2) as the next chunk file; return its path.

        ``probe``, the initial probe, goes with the scan's first chunk.
        """
        self.frames_directory.mkdir(parents=True, exist_ok=True)
        path = self.frames_directory / f"chunk_{len(self.chunks):05d}.cxi"
        partial = path.with_suffix(".cxi.part")
        data = PtychoData(frames=frames, positions=positions, geometry=geometry, mask=mask, probe=probe)
        write_cxi(partial, data)
        partial.replace(path)  # a reader (or a transfer) never sees a half-written chunk
        self.chunks.append(path)
        return path

    def next_result(self) -> Path:
        """A new path for a result file of this scan (not created; add it to :attr:`results` once it exists)."""
        path = self.results_directory / RESULT_NAME.format(self._result_count)
        self._result_count += 1
        return path

    def stage_job(self, job: ReconstructionJob) -> StagedJob:
        """Write ``job``'s new frames as the next chunk file, once, and name the file of its result.

        Raises
        ------
        ValueError
            When the scan has no frames yet.
        """
        written = 0
        if len(job.frames):
            chunk = self.add_chunk(job.frames, job.positions, job.geometry, job.mask, job.probe)
            written = chunk.stat().st_size
        if not self.chunks:
            raise ValueError(f"scan {job.scan_uid}: no frames to reconstruct")
        previous = self.results[-1] if self.results else None
        return StagedJob(self.next_result(), previous, written)

    def remove(self) -> None:
        """Delete the scan's staged files (after its final reconstruction succeeded)."""
        shutil.rmtree(self.root, ignore_errors=True)
        logger.debug("removed staged files of %s", self.root)
