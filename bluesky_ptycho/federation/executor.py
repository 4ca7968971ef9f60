"""Reconstructions on any ``concurrent.futures.Executor``: a Dask cluster, a Globus Compute endpoint.

Remote workers keep nothing between jobs, so this side keeps each scan's
frames (in memory, or staged as CXI chunk files once they pass a size
threshold) and its latest result, and every job ships the scan so far plus
that result to continue from (:func:`~bluesky_ptycho.federation.remote.reconstruct_remote`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from ..solver.data import ReconstructionResult
from .jobs import ReconstructionJob
from .lanes import LaneRunner, job_timings, with_retries
from .remote import FrameChunk, RemoteRequest, reconstruct_remote
from .staging import ScanStaging

logger = logging.getLogger(__name__)


@dataclass
class _Scan:
    chunks: list[FrameChunk | str] = field(default_factory=list)
    inline_bytes: int = 0
    previous: ReconstructionResult | None = None
    staging: ScanStaging | None = None


def _remote_id(future) -> str:
    """The executor's id of a remote task (Dask key, Globus Compute task id), when it has one."""
    for name in ("key", "task_id"):
        value = getattr(future, name, None)
        if value:
            return str(value)
    return "?"


class ExecutorRunner(LaneRunner[_Scan]):
    """Runs each job as :func:`reconstruct_remote` on ``executor``.

    Parameters
    ----------
    executor
        Any ``concurrent.futures.Executor``: ``distributed.Client(...).get_executor()``,
        ``globus_compute_sdk.Executor(endpoint_id=...)``, a ``ProcessPoolExecutor``.
    max_in_flight
        Scans reconstructed at the same time (jobs of one scan run in order).
    staging_directory
        A directory the workers can read at the same path (a shared file
        system). Once a scan's inline frames pass ``inline_limit`` bytes, new
        frames are written there as CXI chunk files and sent as paths. None:
        frames always go inline.
    inline_limit
        Bytes of frames per scan sent inline before staging starts.
    timeout
        Seconds to wait for one remote job (None: no limit).
    retries, backoff
        A job that fails for a reason other than its data (worker lost,
        timeout, connection error) is tried again up to ``retries`` times,
        ``backoff * 2**k`` seconds apart.
    location
        Where the work runs, recorded with each reconstruction (default: the
        executor's type).
    """

    def __init__(
        self,
        executor: Executor,
        *,
        max_in_flight: int = 8,
        staging_directory: str | Path | None = None,
        inline_limit: int = 256 * 2**20,
        timeout: float | None = None,
        retries: int = 2,
        backoff: float = 2.0,
        location: str | None = None,
    ) -> None:
        super().__init__(max_in_flight)
        self.executor = executor
        self.staging_directory = None if staging_directory is None else Path(staging_directory)
        self.inline_limit = inline_limit
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        kind = type(executor)
        self.location = location or f"executor:{kind.__module__}.{kind.__qualname__}"

    def new_scan(self, job: ReconstructionJob) -> _Scan:
        staging = (
            None if self.staging_directory is None else ScanStaging(self.staging_directory, job.scan_uid)
        )
        return _Scan(staging=staging)

    def _add_frames(self, scan: _Scan, job: ReconstructionJob) -> None:
        if not len(job.frames):
            return
        if scan.staging is not None and scan.inline_bytes + job.frames.nbytes > self.inline_limit:
            path = scan.staging.add_chunk(job.frames, job.positions, job.geometry, job.mask, job.probe)
            scan.chunks.append(str(path))
        else:
            scan.chunks.append(FrameChunk(job.frames, job.positions))
            scan.inline_bytes += job.frames.nbytes

    def run_job(self, scan: _Scan, job: ReconstructionJob) -> ReconstructionResult:
        started = time.perf_counter()
        self._add_frames(scan, job)
        staged = time.perf_counter()
        request = RemoteRequest(
            scan_uid=job.scan_uid,
            geometry=job.geometry,
            settings=job.settings,
            iterations=job.iterations,
            chunks=list(scan.chunks),
            mask=job.mask,
            previous=scan.previous,
            probe=job.probe,
        )

        def attempt() -> ReconstructionResult:
            future = self.executor.submit(reconstruct_remote, request)
            try:
                return future.result(timeout=self.timeout)
            except TimeoutError:
                future.cancel()
                raise TimeoutError(
                    f"remote task {_remote_id(future)} gave no result within {self.timeout} s"
                ) from None
            except Exception as error:
                error.add_note(f"remote task: {_remote_id(future)}")
                raise

        result = with_retries(
            attempt, retries=self.retries, backoff=self.backoff, what=f"scan {job.scan_uid}: remote job"
        )
        scan.previous = result
        result.extra["timings"] = job_timings(
            started, staged, time.perf_counter(), result.extra.get("compute_s")
        )
        return result

    def forget_scan(self, scan: _Scan, succeeded: bool) -> None:
        if scan.staging is not None and succeeded:
            scan.staging.remove()
