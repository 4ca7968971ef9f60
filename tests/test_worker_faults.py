"""A reconstruction worker dies or its solver fails: that run is recorded as failed, the next scans are fine."""

from __future__ import annotations

import os
import signal

import bluesky.plan_stubs as bps
import psutil
import pytest
from bluesky import RunEngine
from helpers import Documents, after_event

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.service.testing import wait_until
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


def worker_processes() -> list[psutil.Process]:
    """The spawned multiprocessing workers of this process (not its resource tracker; not one already dead)."""
    workers = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # killed, not yet reaped
            continue
        if "spawn_main" in command and "resource_tracker" not in command:
            workers.append(child)
    return workers


def kill_worker():
    """A plan step that kills the reconstruction worker process (SIGKILL)."""
    (worker,) = worker_processes()
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    yield from bps.null()


def test_a_killed_worker_fails_its_scan_and_the_next_scan_is_reconstructed():
    stage, det = simulated_beamline(seed=1)
    runner = LocalRunner(process=True).start_worker()
    # started before the first job, as a service does (its command line is set once it has exec'd)
    wait_until(lambda: len(worker_processes()) == 1, 30, "the worker process started")
    recon = Documents()
    callback = PtychoCallback(
        recon,
        runner=runner,
        settings=ReconstructionSettings(iterations=20),
        preview_every=20,
        queue_previews=True,
    )
    RE = RunEngine()
    RE.subscribe(callback)
    RE(after_event(fermat_spiral_ptycho_scan(det, stage, n_points=60), 30, kill_worker))
    assert callback.wait(120)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert callback.wait(120)
    runner.shutdown()
    first, second = recon.named("stop")
    assert first["exit_status"] == "fail"
    assert "worker process died" in first["reason"], first["reason"]
    assert second["exit_status"] == "success", second["reason"]
    events_of_second = [e for e in recon.named("event") if e["data"]["final"]]
    assert events_of_second[-1]["data"]["n_frames"] == 60
    assert runner._lanes == {}  # both scans are over: the runner keeps nothing of them


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_solver_is_recorded_as_failed_and_the_runner_goes_on():
    stage, det = simulated_beamline(seed=1)
    recon = Documents()
    callback = PtychoCallback(
        recon, settings=ReconstructionSettings(iterations=30, object_step=1e30), preview_every=None
    )
    RE = RunEngine()
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=40))
    assert callback.wait(60)
    callback.settings = ReconstructionSettings(iterations=20)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=40))
    assert callback.wait(60)
    first, second = recon.named("stop")
    assert (
        first["exit_status"] == "fail"
        and "FloatingPointError: the reconstruction diverged" in first["reason"]
    )
    assert second["exit_status"] == "success"


@pytest.fixture(autouse=True)
def no_leftover_workers():
    yield
    for worker in worker_processes():
        worker.kill()
