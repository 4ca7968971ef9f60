"""Reconstructions on this machine, on the CPU or a local GPU: in a worker thread or a worker process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import uuid
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

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
            reconstructor = Reconstructor(job.geometry, job.settings, mask=job.mask, probe=job.probe)
            _reconstructors[key] = reconstructor
        reconstructor.use_settings(job.settings)
        if len(job.frames):
            reconstructor.add_frames(job.frames, job.positions)
        reconstructor.iterate(job.iterations)
        return reconstructor.result()
    finally:
        if job.final:
            _reconstructors.pop(key, None)


def _lower_priority(niceness: int) -> None:
    os.nice(niceness)


class WorkerDiedError(RuntimeError):
    """The worker process holding a scan's reconstruction died; that scan cannot continue."""


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
        to it by pickling. If the worker dies (killed, out of memory), the
        scans it held fail with :class:`WorkerDiedError` and a new worker
        takes the next scans.
    niceness
        With ``process``, how much to lower the worker's scheduling priority
        (0-19), so that on a machine with few cores the RunEngine comes first.
    """

    def __init__(self, process: bool = False, niceness: int = 10) -> None:
        self._id = uuid.uuid4().hex
        self._process = process
        self._niceness = niceness
        self._lock = threading.Lock()
        self._scans_in_worker: set[str] = set()  # unfinished scans whose state the worker holds
        self._lost_scans: dict[str, str] = {}  # scan uid -> why its state is gone
        self._executor = self._new_executor()
        kind = "process" if process else "thread"
        self.location = f"local:{socket.gethostname()}:{kind}"

    def _new_executor(self) -> Executor:
        if self._process:
            return ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
                initargs=(self._niceness,),
            )
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycho-local")

    def submit(self, job: ReconstructionJob) -> Future[ReconstructionResult]:
        with self._lock:
            lost = self._lost_scans.get(job.scan_uid)
            if lost is not None:
                if job.final:
                    del self._lost_scans[job.scan_uid]
                failed: Future[ReconstructionResult] = Future()
                failed.set_exception(WorkerDiedError(lost))
                return failed
            executor = self._executor
            self._scans_in_worker.add(job.scan_uid)
            try:
                future = executor.submit(run_job, self._id, job)
            except BrokenProcessPool as error:  # it died since the last job came back
                future = Future()
                future.set_exception(error)
        future.add_done_callback(lambda done: self._check_worker(done, executor, job))
        return future

    def _check_worker(self, future: Future, executor: Executor, job: ReconstructionJob) -> None:
        error = future.exception()
        with self._lock:
            died = isinstance(error, BrokenProcessPool) and executor is self._executor
            if died:
                reason = f"the reconstruction worker process died ({error}); the scan's earlier work is lost"
                logger.error(
                    "%s; %d scan(s) affected, starting a new worker", reason, len(self._scans_in_worker)
                )
                self._lost_scans.update(dict.fromkeys(self._scans_in_worker, reason))
                self._scans_in_worker = set()
                self._executor = self._new_executor()
            if job.final:  # the scan is over: nothing more to remember of it
                self._scans_in_worker.discard(job.scan_uid)
                self._lost_scans.pop(job.scan_uid, None)
        if died:
            executor.shutdown(wait=False)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)
