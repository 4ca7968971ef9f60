"""Reconstructions on executors: a real Dask LocalCluster, and plain concurrent.futures executors."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import pytest
from bluesky import RunEngine
from helpers import Documents, assert_previews_then_final, result_of, scan_positions

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import ExecutorRunner, ReconstructionJob, RemoteJobError
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, object_error, simulate

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def dask_executor(dask_client):
    return dask_client.get_executor()


def test_a_live_scan_is_reconstructed_on_a_dask_cluster(dask_executor, tmp_path):
    stage, det = simulated_beamline(seed=1)
    staging = tmp_path / "staging"
    runner = ExecutorRunner(dask_executor, staging_directory=staging)
    raw, recon = Documents(), Documents()
    settings = ReconstructionSettings(iterations=60)
    staged = []  # chunk files present when each result came back

    def count_staged(uid, result, final):
        staged.append(len(list(staging.glob("*/frames/chunk_*.cxi"))))

    callback = PtychoCallback(
        recon, runner=runner, settings=settings, preview_every=40, queue_previews=True, on_result=count_staged
    )
    RE = RunEngine()
    RE.subscribe(raw)
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=160))
    assert callback.wait(180)
    runner.shutdown()
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    assert recon.named("start")[0]["ptycho_solver"]["location"].startswith("executor:distributed")
    events = recon.named("event")
    # each job continued the previous result although the workers keep nothing
    frames, iterations = ([e["data"][key] for e in events] for key in ("n_frames", "iteration"))
    assert_previews_then_final(frames, iterations, [40, 80, 120, 160], 20, 60)
    assert iterations[-1] == 4 * 20 + 60  # a remote preview runs to its end, recorded or not
    result = result_of(events[-1]["data"], settings)
    assert object_error(result, det.sample.truth(scan_positions(raw, stage))) <= 0.10
    # each job's new frames were staged once, as one chunk file
    assert staged == [*range(1, len(events)), 4]
    assert not (staging / raw.named("start")[0]["uid"]).exists()  # staged chunks removed after success


def test_four_scans_are_reconstructed_concurrently_each_linked_to_its_raw_scan(dask_executor):
    stage, det = simulated_beamline(seed=2)
    runner = ExecutorRunner(dask_executor, max_in_flight=4)
    recon = Documents()
    callback = PtychoCallback(
        recon,
        runner=runner,
        settings=ReconstructionSettings(iterations=30),
        preview_every=20,
        queue_previews=True,
    )
    RE = RunEngine()
    RE.subscribe(callback)
    sizes = (40, 50, 60, 70)
    raw_uids = [RE(fermat_spiral_ptycho_scan(det, stage, n_points=n))[0] for n in sizes]
    assert callback.wait(300)
    runner.shutdown()
    starts = {doc["uid"]: doc["raw_uid"] for doc in recon.named("start")}
    finals = {starts[e["descriptor_run"]]: e["data"] for e in _final_events(recon)}
    assert {doc["exit_status"] for doc in recon.named("stop")} == {"success"}
    assert [finals[uid]["n_frames"] for uid in raw_uids] == list(sizes)  # each result is its own scan's


def _final_events(recon: Documents):
    """Final events, each tagged with the uid of the reconstruction run it belongs to."""
    run_of_descriptor = {doc["uid"]: doc["run_start"] for doc in recon.named("descriptor")}
    return [
        {**event, "descriptor_run": run_of_descriptor[event["descriptor"]]}
        for event in recon.named("event")
        if event["data"]["final"]
    ]


class CountingExecutor(Executor):
    """A thread pool that records how many tasks run at once and which fail on purpose."""

    def __init__(self, fail_first: int = 0) -> None:
        self._pool = ThreadPoolExecutor(max_workers=8)
        self._lock = threading.Lock()
        self.running = self.most_running = self.submitted = 0
        self.fail_first = fail_first

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            self.submitted += 1
            fail = self.submitted <= self.fail_first

        def task():
            with self._lock:
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            try:
                if fail:
                    raise ConnectionError("worker lost")
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return self._pool.submit(task)

    def shutdown(self, wait=True, **kwargs):
        self._pool.shutdown(wait=wait)


@pytest.fixture(scope="module")
def small_scan():
    return simulate(n_frames=60, frame_size=32, overlap=0.7, photons=None, seed=3)


def _jobs(sim, scan_uid, iterations=3):
    settings = ReconstructionSettings(iterations=iterations)
    halves = np.array_split(np.arange(len(sim.data)), 2)
    return [
        ReconstructionJob(
            scan_uid=scan_uid,
            geometry=sim.data.geometry,
            settings=settings,
            frames=sim.data.frames[part],
            positions=sim.data.positions[part],
            iterations=iterations,
            final=final,
        )
        for part, final in zip(halves, (False, True), strict=True)
    ]


def test_scans_run_side_by_side_up_to_the_limit_and_in_order_within_a_scan(small_scan):
    executor = CountingExecutor()
    runner = ExecutorRunner(executor, max_in_flight=2)
    futures = {uid: [runner.submit(job) for job in _jobs(small_scan, uid)] for uid in ("a", "b", "c", "d")}
    results = {uid: [f.result(60) for f in fs] for uid, fs in futures.items()}
    runner.shutdown()
    assert executor.most_running == 2
    for preview, final in results.values():
        assert (preview.n_frames, preview.iterations) == (30, 3)
        assert (final.n_frames, final.iterations) == (60, 6)


def test_a_lost_worker_is_retried_and_a_bad_job_is_not(small_scan):
    executor = CountingExecutor(fail_first=2)
    runner = ExecutorRunner(executor, retries=2, backoff=0.01)
    result = runner.submit(_jobs(small_scan, "flaky")[1]).result(60)
    assert result.n_frames == 30 and executor.submitted == 3

    executor = CountingExecutor(fail_first=5)
    runner = ExecutorRunner(executor, retries=1, backoff=0.01)
    with pytest.raises(RemoteJobError, match="after 2 attempts: ConnectionError: worker lost"):
        runner.submit(_jobs(small_scan, "down")[1]).result(60)

    executor = CountingExecutor()
    bad = _jobs(small_scan, "bad")[0]
    bad.positions = bad.positions * 1e6  # micrometres given as metres: the patches never overlap
    with pytest.raises(ValueError, match="do not overlap"):
        ExecutorRunner(executor, retries=3, backoff=0.01).submit(bad).result(60)
    assert executor.submitted == 1


def test_a_dask_worker_killed_mid_job_does_not_lose_the_reconstruction(dask_client):
    sim = simulate(n_frames=150, frame_size=64, overlap=0.7, photons=None, seed=6)
    runner = ExecutorRunner(dask_client.get_executor(), backoff=0.1)
    job = ReconstructionJob(
        "killed-worker",
        sim.data.geometry,
        ReconstructionSettings(),
        sim.data.frames,
        sim.data.positions,
        150,
        True,
    )
    future = runner.submit(job)
    deadline = time.monotonic() + 60
    while not any(dask_client.processing().values()):  # wait until a worker runs it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (busy,) = [address for address, tasks in dask_client.processing().items() if tasks]
    pid = dask_client.run(os.getpid, workers=[busy])[busy]
    os.kill(pid, signal.SIGKILL)
    result = future.result(300)
    runner.shutdown()
    assert (result.n_frames, result.iterations) == (150, 150)
    assert object_error(result, sim) <= 0.10
    assert pid not in dask_client.run(os.getpid).values()  # the worker really died (and was replaced)
