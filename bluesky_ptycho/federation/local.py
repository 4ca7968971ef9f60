"""Reconstructions on this machine, on the CPU or a local GPU: in a worker thread or a worker process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import uuid
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from ..solver.data import ReconstructionResult
from ..solver.reconstructor import Reconstructor
from .jobs import ReconstructionJob

logger = logging.getLogger(__name__)

#: The reconstructors of the scans in progress, in the process that runs them, by (runner, scan uid).
_reconstructors: dict[tuple[str, str], Reconstructor] = {}


def run_job(runner_id: str, job: ReconstructionJob) -> ReconstructionResult:
    """Do ``job``, continuing from the scan's previous job in this process; a final job forgets the scan."""
    key = (runner_id, job.scan_uid)
    try:
        reconstructor = _reconstructors.get(key)
        if reconstructor is None:
            reconstructor = Reconstructor(job.geometry, job.settings, mask=job.mask)
            _reconstructors[key] = reconstructor
        if len(job.frames):
            reconstructor.add_frames(job.frames, job.positions)
        reconstructor.iterate(job.iterations)
        return reconstructor.result()
    finally:
        if job.final:
            _reconstructors.pop(key, None)


def _lower_priority(niceness: int) -> None:
    os.nice(niceness)


class LocalRunner:
    """Runs jobs one after another on this machine.

    The scan's :class:`~bluesky_ptycho.solver.Reconstructor` stays in memory
    between jobs, so each preview continues from the previous estimate with
    only the new frames added. A final job releases it.

    Parameters
    ----------
    process
        False (default): a worker thread of this process. True: one worker
        process (started on first use), so the reconstruction does not
        compete with the RunEngine for the interpreter lock; frames travel
        to it by pickling.
    niceness
        With ``process``, how much to lower the worker's scheduling priority
        (0-19), so that on a machine with few cores the RunEngine comes first.
    """

    def __init__(self, process: bool = False, niceness: int = 10) -> None:
        self._id = uuid.uuid4().hex
        self._executor: Executor
        if process:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
                initargs=(niceness,),
            )
        else:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycho-local")
        kind = "process" if process else "thread"
        self.location = f"local:{socket.gethostname()}:{kind}"

    def submit(self, job: ReconstructionJob) -> Future[ReconstructionResult]:
        return self._executor.submit(run_job, self._id, job)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)
