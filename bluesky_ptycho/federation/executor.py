"""Reconstructions on any ``concurrent.futures.Executor``: a Dask cluster, a Globus Compute endpoint.

Remote workers keep nothing between jobs, so this side keeps each scan's
ledger: the frames sent so far and the latest result to continue from.

- With a ``staging_directory`` the workers can read (a shared file system),
  each job's new frames are written there once as a CXI chunk file, the
  worker writes its result file beside them, and a job carries only paths:
  the chunks and the previous result (:func:`~bluesky_ptycho.federation.remote.reconstruct_files`,
  the function the Globus Flow runs too). Frames cross once and nothing
  grows with the number of previews.
- Without one, every job carries the scan's frames and the previous result
  inline (:func:`~bluesky_ptycho.federation.remote.reconstruct_remote`),
  which is right for a cluster on this machine or next to it, and is refused
  with a clear error once it would exceed the executor's payload limit.
"""

from __future__ import annotations

import logging
import pickle
import shlex
import tempfile
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.cxi import read_result
from ..solver.data import ReconstructionResult
from .compute import is_compute_executor, remote_failure, revive
from .jobs import ReconstructionJob
from .lanes import LaneRunner, job_timings, with_retries
from .mpi import mpiexec_path, use_launcher
from .remote import FrameChunk, RemoteRequest, reconstruct_files, reconstruct_remote
from .staging import ScanStaging

logger = logging.getLogger(__name__)

#: Globus Compute's limit on one task's serialised arguments, and on one result (bytes).
GLOBUS_COMPUTE_PAYLOAD_LIMIT = 10 * 10**6


class PayloadTooLargeError(ValueError):
    """A job would exceed the executor's payload limit once serialised; the message says what to do."""


def _compute_serializer(executor: Executor):
    """The Globus Compute serializer of ``executor``, or None for other executors."""
    try:
        from globus_compute_sdk.serialize import ComputeSerializer
    except ImportError:
        return None
    serializer = getattr(executor, "serializer", None)
    return serializer if isinstance(serializer, ComputeSerializer) else None


def payload_size(executor: Executor, *args: Any, **kwargs: Any) -> int:
    """Bytes that submitting ``args`` and ``kwargs`` to ``executor`` puts on the wire, as it serialises them.

    Globus Compute's serializer (base64 text inside its own framing) makes
    8 MiB of frames into about 11.3 MB; other executors pickle.
    """
    serializer = _compute_serializer(executor)
    if serializer is None:
        return len(pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
    return len(serializer.pack_buffers([serializer.serialize(args), serializer.serialize(kwargs)]))


def default_payload_limit(executor: Executor) -> int | None:
    """The payload limit of ``executor``'s service: 10 MB for Globus Compute, none for others."""
    return GLOBUS_COMPUTE_PAYLOAD_LIMIT if _compute_serializer(executor) is not None else None


@dataclass
class _Scan:
    """A scan's ledger: its frames so far (inline or staged) and the result to continue from."""

    chunks: list[FrameChunk] = field(default_factory=list)
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
    """Runs each job of a scan on ``executor``, continuing from the scan's previous result.

    Parameters
    ----------
    executor
        Any ``concurrent.futures.Executor``: ``distributed.Client(...).get_executor()``,
        ``globus_compute_sdk.Executor(endpoint_id=...)``, a ``ProcessPoolExecutor``.
    max_in_flight
        Scans reconstructed at the same time (jobs of one scan run in order).
    staging_directory
        A directory the workers can read and write at the same path (a
        shared file system). Given, frames and results travel as files and
        each frame is written once; None: frames and the previous result
        travel inline with every job.
    payload_limit
        Largest serialised job, in bytes; a bigger inline job fails with
        :class:`PayloadTooLargeError` before it is sent. Default: the
        executor's service limit (10 MB for Globus Compute; none otherwise).
    timeout
        Seconds to wait for one remote job (None: no limit).
    retries, backoff
        A job that fails for a reason other than its data (worker lost,
        timeout, connection error) is tried again up to ``retries`` times,
        ``backoff * 2**k`` seconds apart.
    location
        Where the work runs, recorded with each reconstruction (default: the
        executor's type).
    function_ids
        For a Globus Compute Executor: the ids ``globus deploy`` registered,
        by function name (``reconstruct_files``, ``reconstruct_remote``;
        :func:`~.compute.deployed_function_ids`), so that an endpoint's
        ``allowed_functions`` admits them. Without them the Executor
        registers each function once (a new id for every runner).

    A Globus Compute Executor that shut itself down after a failed
    submission is replaced by a new one with the same settings and function
    ids, so one network fault fails (or retries) one job, not every later
    scan. With frames inline it sends one task per request (``batch_size``
    1): the service's 10 MB limit applies to a request, and the jobs of
    several scans coalesced into one could exceed it together.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        max_in_flight: int = 8,
        staging_directory: str | Path | None = None,
        payload_limit: int | None = None,
        timeout: float | None = None,
        retries: int = 2,
        backoff: float = 2.0,
        location: str | None = None,
        function_ids: dict[str, str] | None = None,
    ) -> None:
        super().__init__(max_in_flight)
        self.executor = executor
        self._own_executor = False  # made by on_ranks: shut down with the runner
        self.deployed_ids = dict(function_ids or {})
        self._function_ids: dict[Any, str] = {}  # a Globus Compute Executor's functions, as registered
        self._executor_lock = threading.Lock()
        if staging_directory is None and is_compute_executor(executor):
            executor.batch_size = 1
        self.staging_directory = None if staging_directory is None else Path(staging_directory)
        self.payload_limit = default_payload_limit(executor) if payload_limit is None else payload_limit
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        kind = type(executor)
        self.location = location or f"executor:{kind.__module__}.{kind.__qualname__}"

    @classmethod
    def on_ranks(
        cls, ranks: int, staging_directory: str | Path | None = None, **options: Any
    ) -> ExecutorRunner:
        """A runner that reconstructs every job, previews and finals, over ``ranks`` MPI ranks of this machine.

        Each job is :func:`~.remote.reconstruct_files` on the scan's staged
        chunk files, as a Globus ``GlobusMPIEngine`` endpoint runs it: a
        worker process (one; jobs run one at a time) starts ``mpiexec -n
        ranks`` for it (:func:`~.mpi.parsl_launcher`), each rank reads its
        own frames and rank 0 writes the result. The callback stays in its
        process. ``staging_directory``: where the chunk files go (default: a
        new temporary directory); ``options`` as for the constructor. The
        runner's :meth:`shutdown` ends the worker process.

        Raises
        ------
        RuntimeError
            Where there is no ``mpiexec`` (saying what to install).
        ValueError
            For fewer than one rank.
        """
        if ranks < 1:
            raise ValueError(f"ranks must be at least 1, got {ranks}")
        launcher = shlex.join([mpiexec_path(), "-n", str(ranks)])
        # spawned, not forked: the RunEngine's process has threads
        worker = ProcessPoolExecutor(
            1, mp_context=get_context("spawn"), initializer=use_launcher, initargs=(launcher,)
        )
        staging = staging_directory or tempfile.mkdtemp(prefix="bluesky-ptycho-ranks-")
        runner = cls(worker, staging_directory=staging, location=f"{ranks} MPI ranks", **options)
        runner._own_executor = True
        return runner

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        if self._own_executor:
            self.executor.shutdown(wait=wait, cancel_futures=not wait)

    def new_scan(self, job: ReconstructionJob) -> _Scan:
        staging = (
            None if self.staging_directory is None else ScanStaging(self.staging_directory, job.scan_uid)
        )
        return _Scan(staging=staging)

    def _staged_call(self, scan: _Scan, job: ReconstructionJob) -> tuple[tuple, dict, Path, int]:
        """The arguments of :func:`reconstruct_files` for this job, its new frames written once, and their bytes."""
        staged = scan.staging.stage_job(job)
        kwargs = {
            "frame_files": [str(path) for path in scan.staging.chunks],
            "result_file": str(staged.result),
            "iterations": job.iterations,
            "settings": job.settings.to_dict(),
            "previous_file": None if staged.previous is None else str(staged.previous),
            "client_version": __version__,
        }
        return (), kwargs, staged.result, staged.bytes_written + payload_size(self.executor, **kwargs)

    def _inline_call(self, scan: _Scan, job: ReconstructionJob) -> tuple[tuple, dict, None, int]:
        """The argument of :func:`reconstruct_remote` for this job (the scan so far, inline), and its bytes."""
        if len(job.frames):
            scan.chunks.append(FrameChunk(job.frames, job.positions))
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
        size = payload_size(self.executor, request)
        if self.payload_limit is not None and size > self.payload_limit:
            raise PayloadTooLargeError(
                f"scan {job.scan_uid}: this job serialises to {size / 1e6:.1f} MB (its frames so far "
                f"and the previous result), over the executor's limit of {self.payload_limit / 1e6:.1f} "
                "MB; give ExecutorRunner a staging_directory the workers can read, so frames and "
                "results travel as files"
            )
        return (request,), {}, None, size

    def run_job(self, scan: _Scan, job: ReconstructionJob) -> ReconstructionResult:
        started = time.perf_counter()
        staged_mode = scan.staging is not None
        function = reconstruct_files if staged_mode else reconstruct_remote
        args, kwargs, result_file, sent = (self._staged_call if staged_mode else self._inline_call)(scan, job)
        staged = time.perf_counter()

        def attempt() -> Any:
            future = self._submit(function, *args, **kwargs)
            try:
                return future.result(timeout=self.timeout)
            except TimeoutError:
                future.cancel()
                raise TimeoutError(
                    f"remote task {_remote_id(future)} gave no result within {self.timeout} s"
                ) from None
            except Exception as error:
                cause = remote_failure(error)
                cause.add_note(f"remote task: {_remote_id(future)}")
                if cause is error:
                    raise
                raise cause from error

        output = with_retries(
            attempt, retries=self.retries, backoff=self.backoff, what=f"scan {job.scan_uid}: remote job"
        )
        if staged_mode:
            result = read_result(result_file)
            scan.staging.results.append(result_file)
            received = result_file.stat().st_size
        else:
            result = scan.previous = output
            received = payload_size(self.executor, result)
        result.extra["timings"] = job_timings(
            started, staged, time.perf_counter(), result.extra.get("compute_s")
        )
        result.extra["bytes_moved"] = {"sent": sent, "received": received}
        return result

    def _submit(self, function, *args: Any, **kwargs: Any):
        """Submit to the executor; a Globus Compute Executor found shut down is replaced first."""
        if not is_compute_executor(self.executor):
            return self.executor.submit(function, *args, **kwargs)
        with self._executor_lock:
            try:
                return self._submit_to_compute(function, args, kwargs)
            except RuntimeError as error:  # it shut itself down after a failed submission
                logger.warning("the Globus Compute Executor had shut down (%s); using a new one", error)
                self.executor = revive(self.executor, self._function_ids)
                return self._submit_to_compute(function, args, kwargs)

    def _submit_to_compute(self, function, args: tuple, kwargs: dict):
        if function not in self._function_ids:
            known = self.deployed_ids.get(function.__name__)
            self._function_ids[function] = self.executor.register_function(function, function_id=known)
        return self.executor.submit(function, *args, **kwargs)

    def forget_scan(self, scan: _Scan, succeeded: bool) -> None:
        if scan.staging is not None and succeeded:
            scan.staging.remove()
