"""Per-scan ordering, a limit on scans in flight, and bounded retries, for every runner.

Jobs of one scan must run one after another (each continues from the
previous result); jobs of different scans may run side by side, up to a
limit (the reference system kept up to 8 Globus flows in flight). Each scan
is a *lane*: a queue of its jobs, drained by one of ``max_in_flight``
dispatcher threads at a time, so a waiting job never holds a thread another
scan could use.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..solver.data import ReconstructionResult
from .jobs import ReconstructionJob

logger = logging.getLogger(__name__)

#: Errors of the data or the settings: the same job would fail again, so it is not retried.
NOT_RETRIED: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FloatingPointError)

ScanState = TypeVar("ScanState")
T = TypeVar("T")


class RemoteJobError(RuntimeError):
    """A remote job failed for good; the message names the cause and the remote id."""


def with_retries(
    attempt: Callable[[], T], *, retries: int, backoff: float, what: str, not_retried=NOT_RETRIED
) -> T:
    """Call ``attempt()`` up to ``1 + retries`` times, waiting ``backoff * 2**k`` seconds between tries.

    Errors in ``not_retried`` are raised at once; the last error of a job
    that kept failing is raised as :class:`RemoteJobError`.
    """
    for tries in range(retries + 1):
        try:
            return attempt()
        except not_retried:
            raise
        except Exception as error:
            if tries == retries:
                detail = "; ".join([str(error), *getattr(error, "__notes__", [])])
                raise RemoteJobError(
                    f"{what} failed after {tries + 1} attempts: {type(error).__name__}: {detail}"
                ) from error
            wait = backoff * 2**tries
            logger.warning("%s failed (%s: %s); retrying in %.1f s", what, type(error).__name__, error, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def job_timings(started: float, staged: float, done: float, compute_s: float | None) -> dict[str, float]:
    """Where a remote job's time went: staging frames here, moving data (and waiting), computing there."""
    remote = done - staged
    compute = remote if compute_s is None else min(float(compute_s), remote)
    return {"staging_s": staged - started, "transfer_s": remote - compute, "compute_s": compute}


@dataclass
class _Lane(Generic[ScanState]):
    state: ScanState
    jobs: deque[tuple[ReconstructionJob, Future]] = field(default_factory=deque)
    active: bool = False


class LaneRunner(ABC, Generic[ScanState]):
    """A runner that keeps per-scan state on this side and runs each job, here or remotely.

    Subclasses implement :meth:`new_scan` (the state of a new scan) and
    :meth:`run_job` (one job, blocking until its result is back).

    Parameters
    ----------
    max_in_flight
        Scans whose jobs may run at the same time.
    """

    location: str

    def __init__(self, max_in_flight: int = 8) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._dispatch = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="ptycho-lane")
        self._lanes: dict[str, _Lane[ScanState]] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def new_scan(self, job: ReconstructionJob) -> ScanState:
        """The state kept for a scan, made for its first job."""

    @abstractmethod
    def run_job(self, state: ScanState, job: ReconstructionJob) -> ReconstructionResult:
        """Run one job of a scan and return its result (blocking)."""

    def forget_scan(self, state: ScanState, succeeded: bool) -> None:
        """Called after a scan's final job; ``succeeded`` says whether it gave a result."""

    def final_queued(self, state: ScanState) -> None:
        """Called when a scan's final job is queued behind its earlier ones.

        A runner that can should cut those previews short (their frames still
        count): the final result continues from wherever they got to, and it
        is the one the scientist waits for.
        """

    def submit(self, job: ReconstructionJob) -> Future[ReconstructionResult]:
        """Queue ``job`` behind the earlier jobs of its scan."""
        future: Future[ReconstructionResult] = Future()
        with self._lock:
            lane = self._lanes.get(job.scan_uid)
            if lane is None:
                lane = self._lanes[job.scan_uid] = _Lane(self.new_scan(job))
            if job.final and lane.active:
                self.final_queued(lane.state)
            lane.jobs.append((job, future))
            if not lane.active:
                lane.active = True
                self._dispatch.submit(self._drain, job.scan_uid, lane)
        return future

    def _drain(self, scan_uid: str, lane: _Lane[ScanState]) -> None:
        while True:
            with self._lock:
                if not lane.jobs:
                    lane.active = False
                    return
                job, future = lane.jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result: Any = self.run_job(lane.state, job)
            except BaseException as error:
                future.set_exception(error)
                succeeded = False
            else:
                future.set_result(result)
                succeeded = True
            if job.final:
                with self._lock:
                    self._lanes.pop(scan_uid, None)
                self.forget_scan(lane.state, succeeded)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, finish the queued ones first."""
        self._dispatch.shutdown(wait=wait)
