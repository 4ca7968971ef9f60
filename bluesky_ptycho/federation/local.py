"""Reconstructions in this process, on the CPU or a local GPU."""

from __future__ import annotations

import logging
import socket
from concurrent.futures import Future, ThreadPoolExecutor

from ..solver.data import ReconstructionResult
from ..solver.reconstructor import Reconstructor
from .jobs import ReconstructionJob

logger = logging.getLogger(__name__)


class LocalRunner:
    """Runs jobs one after another on a worker thread of this process.

    The scan's :class:`~bluesky_ptycho.solver.Reconstructor` stays in memory
    between jobs, so each preview continues from the previous estimate with
    only the new frames added. A final job releases it.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycho-local")
        self._reconstructors: dict[str, Reconstructor] = {}
        self.location = f"local:{socket.gethostname()}"

    def submit(self, job: ReconstructionJob) -> Future[ReconstructionResult]:
        return self._executor.submit(self._run, job)

    def _run(self, job: ReconstructionJob) -> ReconstructionResult:
        reconstructor = self._reconstructors.get(job.scan_uid)
        try:
            if reconstructor is None:
                reconstructor = Reconstructor(job.geometry, job.settings, mask=job.mask)
                self._reconstructors[job.scan_uid] = reconstructor
            if len(job.frames):
                reconstructor.add_frames(job.frames, job.positions)
            reconstructor.iterate(job.iterations)
            return reconstructor.result()
        finally:
            if job.final:
                self._reconstructors.pop(job.scan_uid, None)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)
