"""Reconstructions on this machine, on the CPU or a local GPU: in a lane thread or one worker process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType

from ..solver.data import ReconstructionResult
from ..solver.pages import prefer_ordinary_pages
from ..solver.reconstructor import Reconstructor
from ..solver.settings import ReconstructionSettings
from .jobs import ReconstructionJob
from .lanes import LaneRunner
from .shared_frames import BlockPool, SharedFrames
from .shared_replies import ReplyArea, pack

logger = logging.getLogger(__name__)
# what the worker says once a job's frames in shared memory are stored and unmapped
FRAMES_TAKEN = "frames taken"


@dataclass
class ScanWork:
    """A scan's reconstruction where its jobs run, and what taking its frames in has cost since its last preview."""

    reconstructor: Reconstructor
    intake_seconds: float = 0.0  # in frames-only jobs: the next preview's budget counts it


def continue_scan(
    scans: dict[str, ScanWork],
    job: ReconstructionJob,
    cut_short: Callable[[], bool] = lambda: False,
    frames_taken: Callable[[], None] = lambda: None,
    copy_result: bool = True,
) -> ReconstructionResult | None:
    """Do ``job`` with the scan's reconstruction in ``scans`` (made for its first job); a final job removes it.

    A preview keeps to its time budget (``job.seconds``, from the job's
    start, less what the frames-only jobs since the last preview spent
    taking its frames in) and ends its iterations early once
    ``cut_short()`` says so (a final does neither). A frames-only job only
    takes its frames in and returns None.
    Frames by reference are read from the detector's files here; frames in
    shared memory are unmapped once stored, and ``frames_taken()`` is called
    then, before the iterations. ``copy_result=False`` for a caller that
    serialises the result at once (:meth:`.Reconstructor.result`).
    """
    started = time.perf_counter()
    try:
        work = scans.get(job.scan_uid)
        if work is None:
            reconstructor = Reconstructor(job.geometry, job.settings, mask=job.mask, probe=job.probe)
            work = scans[job.scan_uid] = ScanWork(reconstructor)
        reconstructor = work.reconstructor
        reconstructor.use_settings(job.settings)
        if len(job.frames):
            _take_frames(reconstructor, job)
        if isinstance(job.frames, SharedFrames):
            job.frames.close()
            frames_taken()
        if job.frames_only:
            work.intake_seconds += time.perf_counter() - started
            return None
        if job.final:
            reconstructor.iterate(job.iterations)
        elif job.seconds is None:
            reconstructor.iterate(job.iterations, stop_early=cut_short)
        else:
            reconstructor.preview(
                job.seconds, job.iterations, stop_early=cut_short, started=started, spent=work.intake_seconds
            )
            work.intake_seconds = 0.0
        return reconstructor.result(copy=copy_result)
    finally:
        if isinstance(job.frames, SharedFrames):
            job.frames.close()
        if job.final:
            scans.pop(job.scan_uid, None)


def _take_frames(reconstructor: Reconstructor, job: ReconstructionJob) -> None:
    """Add the job's frames (read from files, or mapped from shared memory) into the reconstruction's store."""
    blocks, saturated = job.frame_blocks()
    start = 0
    for frames in blocks:
        reconstructor.add_frames(frames, job.positions[start : start + len(frames)])
        start += len(frames)
    reconstructor.prepare()  # while shared memory is mapped: the store holds copies from now on
    if saturated:
        extra = reconstructor.extra
        extra["saturated_frames"] = extra.get("saturated_frames", 0) + saturated


def warm_up() -> None:
    """Reconstruct a tiny simulated scan, so that a scan's first preview does not wait for the solver to start.

    The first reconstruction in a process loads the compiled kernels and the
    FFT libraries and their thread pools: about a second, or several on a
    busy machine, of which the first preview would otherwise wait for most.
    It warms the CPU solver, whatever the scans' settings are.
    """
    from ..solver.simulate import simulate

    data = simulate(n_frames=16, frame_size=32, seed=0).data
    Reconstructor(data.geometry, ReconstructionSettings(iterations=2)).add_frames(
        data.frames, data.positions
    ).iterate()


def _serve(connection: Connection, niceness: int, cut_short: EventType) -> None:
    """The worker process: do the jobs sent on ``connection`` until it sends None; ``cut_short`` ends a preview."""
    os.nice(niceness)
    prefer_ordinary_pages()
    try:
        warm_up()
    except Exception:  # a job then says what is wrong; only the warm-up's time is lost
        logger.exception("the reconstruction worker's warm-up failed")
    scans: dict[str, ScanWork] = {}
    mapped: dict[str, shared_memory.SharedMemory] = {}  # the reply blocks, mapped from job to job

    def taken() -> None:
        connection.send(FRAMES_TAKEN)

    while (sent := connection.recv()) is not None:
        job, block = sent
        try:
            reply: tuple[bool, object] = (True, continue_scan(scans, job, cut_short.is_set, taken, False))
        except Exception as error:
            reply = (False, error)
        try:
            packed = pack(reply, block, mapped)
        except (pickle.PicklingError, TypeError, AttributeError):  # an error that does not pickle
            packed = pack((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")), None, mapped)
        connection.send(packed)


class WorkerDiedError(RuntimeError):
    """The worker process holding a scan's reconstruction died; that scan cannot continue."""


class _Worker:
    """One spawned worker process at lower priority, and the pipe to it."""

    def __init__(self, niceness: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._cut_short = context.Event()
        self._process = context.Process(
            target=_serve, args=(theirs, niceness, self._cut_short), name="ptycho-worker", daemon=True
        )
        self._process.start()
        theirs.close()
        self.died: str | None = None  # why, once it has
        self._preview_of: str | None = None  # the scan whose preview runs now
        self._lock = threading.Lock()  # so a cut meant for one job never reaches the next
        self._replies = ReplyArea()  # where the worker writes its results' arrays

    def run(self, job: ReconstructionJob) -> ReconstructionResult | None:
        with self._lock:
            self._cut_short.clear()
            self._preview_of = None if job.final else job.scan_uid
        try:
            self._connection.send((job, self._replies.block))
            while (message := self._connection.recv()) == FRAMES_TAKEN:
                job.frames.release()  # stored in the worker: the blocks go back to the pool for new frames
            ok, reply = self._replies.unpack(message)
        except (EOFError, OSError) as error:
            self._process.join(5)
            self.died = (
                f"the reconstruction worker process died (exit code {self._process.exitcode}, "
                f"{type(error).__name__}); the scan's earlier work is lost"
            )
            raise WorkerDiedError(self.died) from error
        finally:
            with self._lock:
                self._preview_of = None
        if not ok:
            raise reply
        return reply

    def cut_preview_of(self, scan_uid: str) -> None:
        """End the running job's iterations now if it is a preview of ``scan_uid``."""
        with self._lock:
            if self._preview_of == scan_uid:
                self._cut_short.set()

    def stop(self) -> None:
        try:
            self._connection.send(None)
        except OSError:
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        self._connection.close()
        self._replies.close()


@dataclass
class _LocalScan:
    uid: str
    worker: _Worker | None = None  # in a process: the worker that holds the scan's reconstructor
    final_queued: bool = False  # its previews from now on only add their frames


class LocalRunner(LaneRunner[_LocalScan]):
    """Runs jobs on this machine, one at a time by default.

    The scan's :class:`~bluesky_ptycho.solver.Reconstructor` stays in memory
    between jobs, so each preview continues from the previous estimate with
    only the new frames added. A final job releases it.

    Parameters
    ----------
    process
        False (default): in a thread of this process. True: in one worker
        process (started on first use), so the reconstruction does not
        compete with the RunEngine for the interpreter lock; inline frames
        travel to it in shared memory (:mod:`.shared_frames`), and its
        results' arrays come back the same way (:mod:`.shared_replies`).
        If the worker dies (killed, out of memory), the
        scans it held fail with :class:`WorkerDiedError` and a new worker
        takes the next scans. Frames in the detector's HDF5 files go by
        reference and are read (and decompressed) where the job runs, in
        the worker process or the lane's thread, off the document thread.
    niceness
        With ``process``, how much to lower the worker's scheduling priority
        (0-19), so that on a machine with few cores the RunEngine comes first.
    max_in_flight
        Scans reconstructed side by side (each on its own thread; with
        ``process``, they take turns in the one worker).
    """

    def __init__(self, process: bool = False, niceness: int = 10, max_in_flight: int = 1) -> None:
        super().__init__(max_in_flight)
        self._process = process
        self._niceness = niceness
        self._scans: dict[str, ScanWork] = {}  # in a thread: the scans' state, here
        self._worker: _Worker | None = None
        self._worker_lock = threading.Lock()  # one job at a time in the worker
        kind = "process" if process else "thread"
        self.reads_files = True  # the detector's files are on this machine: frames go by reference
        self.keeps_frames = True  # frames may come as they arrive, in frames-only jobs
        self.block_pool = BlockPool() if process else None  # inline frames go to the worker in shared memory
        self.location = f"local:{socket.gethostname()}:{kind}"

    def start_worker(self) -> LocalRunner:
        """With ``process``, start the worker now rather than with the first job (which then waits for its imports)."""
        if self._process:
            with self._worker_lock:
                if self._worker is None:
                    self._worker = _Worker(self._niceness)
        return self

    def new_scan(self, job: ReconstructionJob) -> _LocalScan:
        return _LocalScan(job.scan_uid)

    def final_queued(self, state: _LocalScan) -> None:
        state.final_queued = True
        if state.worker is not None:
            state.worker.cut_preview_of(state.uid)

    def run_job(self, state: _LocalScan, job: ReconstructionJob) -> ReconstructionResult | None:
        if state.final_queued and not job.final:
            job = replace(job, iterations=0)
        if not self._process:
            return continue_scan(self._scans, job, lambda: state.final_queued)
        with self._worker_lock:
            if state.worker is not None and state.worker.died:
                raise WorkerDiedError(state.worker.died)
            if self._worker is None or self._worker.died:
                if self._worker is not None:
                    logger.error("%s; starting a new worker", self._worker.died)
                self._worker = _Worker(self._niceness)
            state.worker = self._worker
            try:
                return self._worker.run(job)
            finally:
                if isinstance(job.frames, SharedFrames):
                    job.frames.release()  # taken into the worker's store, or lost with it

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        if not wait:  # a job may still be running in the worker; the worker, a daemon, ends with this process
            return
        with self._worker_lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
        if self.block_pool is not None:
            self.block_pool.close()
