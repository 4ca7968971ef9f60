"""The typed interface between the RunEngine side and wherever reconstructions run."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..io.frame_files import FileFrames
from ..solver.data import Geometry, ReconstructionResult
from ..solver.settings import ReconstructionSettings
from .shared_frames import BlockPool, SharedFrames


@dataclass
class ReconstructionJob:
    """One reconstruction step of a scan.

    Attributes
    ----------
    scan_uid
        uid of the raw scan; jobs of one scan continue from each other.
    geometry, settings
        What to reconstruct and how.
    frames, positions
        Frames (N, H, W) and positions (N, 2, x/y metres) new since the
        scan's previous job (may be empty). The frames are counts, or, for
        a runner that ``reads_files``, :class:`~bluesky_ptycho.io.frame_files.FileFrames`
        its worker reads (:meth:`frame_counts`).
    iterations
        Iterations to do in this job.
    final
        True for the last job of the scan; the runner then forgets the scan.
    mask
        Good detector pixels (H, W), or None.
    probe
        The initial probe (modes, H, W) for the scan's first job (None: built
        from the data); later jobs continue from the scan's own probe.
    seconds
        A preview's time budget: its iterations visit the newest frames first
        and end after about this long (:meth:`.Reconstructor.preview`),
        counting the time the runner spent taking its frames in.
        None: every iteration over every frame (a final, always).
    frames_only
        True: only take the frames into the scan's reconstruction (no
        iterations, no result: the job's future gives None). Sent between
        previews to a runner that ``keeps_frames``, so that the frames are
        stored as they arrive and a preview only iterates.
    """

    scan_uid: str
    geometry: Geometry
    settings: ReconstructionSettings
    frames: np.ndarray | FileFrames | SharedFrames
    positions: np.ndarray
    iterations: int
    final: bool = False
    mask: np.ndarray | None = None
    probe: np.ndarray | None = None
    seconds: float | None = None
    frames_only: bool = False

    def frame_counts(self) -> tuple[np.ndarray, int]:
        """The frames as counts (read from their files here when the job holds references).

        And how many of those read here hold trusted pixels at or above the
        saturation count (frames the callback read, it counted itself).
        """
        if isinstance(self.frames, SharedFrames):
            return np.concatenate(self.frames.arrays()), 0
        return self.frames.read() if isinstance(self.frames, FileFrames) else (self.frames, 0)

    def frame_blocks(self) -> tuple[list[np.ndarray], int]:
        """The frames as counts in blocks, with no copy of frames in shared memory; saturated as :meth:`frame_counts`."""
        if isinstance(self.frames, SharedFrames):
            return self.frames.arrays(), 0
        frames, saturated = self.frame_counts()
        return [frames], saturated


class Runner(Protocol):
    """Where reconstructions run: takes jobs, returns futures of results."""

    #: Where this runner runs work, recorded with every reconstruction.
    location: str
    #: Optional (default False): whether its jobs may hold frames as references to the
    #: detector's files (:class:`~bluesky_ptycho.io.frame_files.FileFrames`), read where the job runs.
    reads_files: bool
    #: Optional (default None): where its jobs' inline frames are held in shared memory
    #: (:class:`.SharedFrames` of blocks from this pool), for a worker process on this machine.
    block_pool: BlockPool | None
    #: Optional (default False): whether it keeps a scan's frames from job to job, so that
    #: they may go to it as they arrive, in ``frames_only`` jobs between previews.
    keeps_frames: bool

    def submit(self, job: ReconstructionJob) -> Future[ReconstructionResult | None]:
        """Queue ``job``; jobs of one scan run in the order they were submitted."""
        ...

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, finish the queued ones first."""
        ...
