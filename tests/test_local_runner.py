"""LocalRunner: once a scan's final job is queued, its previews stop iterating (their frames still count);
frames-only jobs store a scan's frames ahead of its preview, which counts their time in its budget."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.federation.jobs import ReconstructionJob
from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, simulate
from bluesky_ptycho.solver.pages import HUGE_PAGES_VARIABLE

ENDLESS = 200_000  # iterations (a minute) no test waits for
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


@pytest.fixture(scope="module")
def scan():
    return simulate(n_frames=40, frame_size=32, seed=3).data


def job(data, uid: str, part: slice, iterations: int, final: bool = False, **more) -> ReconstructionJob:
    return ReconstructionJob(
        scan_uid=uid,
        geometry=data.geometry,
        settings=ReconstructionSettings(probe_defocus=None),
        frames=data.frames[part],
        positions=data.positions[part],
        iterations=iterations,
        final=final,
        **more,
    )


def wait_until_iterating(future, seconds: float = 0.5) -> None:
    """Give a job time to start iterating (its process to take it, its reconstructor to be made)."""
    deadline = time.monotonic() + 60
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(seconds)


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_queued_final_cuts_the_running_and_the_waiting_previews_short(scan, process):
    runner = LocalRunner(process=process)
    try:
        running = runner.submit(job(scan, "a", slice(0, 20), ENDLESS))
        wait_until_iterating(running, 2.0 if process else 0.5)
        waiting = runner.submit(job(scan, "a", slice(20, 30), ENDLESS))
        final = runner.submit(job(scan, "a", slice(30, 40), 5, final=True))
        first, second, last = running.result(120), waiting.result(120), final.result(120)
    finally:
        runner.shutdown()
    assert first.iterations < ENDLESS
    assert second.iterations == first.iterations and second.n_frames == 30  # frames only
    assert last.iterations == first.iterations + 5 and last.n_frames == 40
    assert len(last.cost_history) == last.iterations


def test_another_scans_final_does_not_cut_a_preview(scan):
    """One worker, scans take turns: b's final is queued while a's preview runs there; a's runs in full."""
    runner = LocalRunner(process=True)
    try:
        runner.submit(job(scan, "b", slice(0, 10), 2)).result(120)  # b's reconstruction is in the worker
        preview_a = runner.submit(job(scan, "a", slice(0, 40), 3000))
        wait_until_iterating(preview_a, 0.0)
        preview_b = runner.submit(job(scan, "b", slice(10, 20), 300))
        final_b = runner.submit(job(scan, "b", slice(20, 40), 3, final=True))
        assert preview_a.result(120).iterations == 3000
        assert preview_b.result(120).iterations == 2  # queued behind b's own final: frames only
        assert final_b.result(120).iterations == 2 + 3
    finally:
        runner.shutdown()


def test_iterations_stop_early_when_asked(scan):
    reconstructor = Reconstructor(scan.geometry, ReconstructionSettings(probe_defocus=None))
    reconstructor.add_frames(scan.frames, scan.positions)
    asked = iter([False, False, False, True])
    reconstructor.iterate(50, stop_early=lambda: next(asked))
    assert reconstructor.iteration == 3 and len(reconstructor.cost_history) == 3
    assert np.isfinite(reconstructor.cost_history).all()


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_frames_sent_ahead_are_stored_and_the_preview_after_them_counts_their_time(scan, process):
    runner = LocalRunner(process=process)
    try:
        ahead = [runner.submit(job(scan, "a", slice(i, i + 10), 5, frames_only=True)) for i in (0, 10)]
        preview = runner.submit(job(scan, "a", slice(20, 30), 50, seconds=1e9)).result(120)
        final = runner.submit(job(scan, "a", slice(30, 40), 2, final=True)).result(120)
    finally:
        runner.shutdown()
    assert [future.result(120) for future in ahead] == [None, None]  # nothing to record
    covered = preview.extra["preview"]
    assert preview.n_frames == covered["frames_new"] == 30 and preview.iterations == 50  # none before it
    assert covered["intake_seconds"] > 0  # the first frames-only job built the probe and the canvas
    assert final.n_frames == 40 and final.iterations == 52


def test_a_result_serialised_at_once_is_not_copied_first(scan):
    """The worker process packs its reply into shared memory at once: its result's object needs no copy of its own."""
    reconstructor = Reconstructor(scan.geometry, ReconstructionSettings(probe_defocus=None))
    reconstructor.add_frames(scan.frames, scan.positions).iterate(1)
    assert np.shares_memory(reconstructor.result(copy=False).object, reconstructor.state.object)
    snapshot = reconstructor.result()
    assert not np.shares_memory(snapshot.object, reconstructor.state.object)
    reconstructor.iterate(1)
    assert not np.array_equal(snapshot.object, reconstructor.result().object)  # the snapshot stays as it was


def anonymous_huge_pages_kib(pid: int) -> int:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"^AnonHugePages:\s+(\d+) kB", rollup, re.M).group(1))


ONLY_WHERE_ASKED = pytest.mark.skipif(
    "[madvise]" not in Path(THP_ENABLED).read_text() if Path(THP_ENABLED).exists() else True,
    reason="huge pages only where NumPy asks for them (transparent huge pages in madvise mode)",
)


@ONLY_WHERE_ASKED
def test_the_worker_stores_frames_in_ordinary_pages():
    """NumPy asks for huge pages for arrays of 4 MiB or more, whose first touch costs 10-20x more; the worker does not."""
    data = simulate(n_frames=40, frame_size=128, seed=3).data
    many = 16  # 640 frames of 128², in pages of 8 MiB
    runner = LocalRunner(process=True).start_worker()
    try:
        stored = replace(
            job(data, "a", slice(None), 0, frames_only=True),
            frames=np.tile(data.frames, (many, 1, 1)),
            positions=np.tile(data.positions, (many, 1)),
        )
        assert runner.submit(stored).result(120) is None
        (worker,) = [
            child for child in psutil.Process().children() if "spawn_main" in " ".join(child.cmdline())
        ]
        assert anonymous_huge_pages_kib(worker.pid) == 0
    finally:
        runner.shutdown()


@pytest.mark.parametrize(("variable", "huge"), [(None, "False"), ("1", "True")])
def test_numpys_own_variable_still_decides_the_pages(variable, huge):
    environment = {key: value for key, value in os.environ.items() if key != HUGE_PAGES_VARIABLE}
    if variable is not None:
        environment[HUGE_PAGES_VARIABLE] = variable
    asked = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bluesky_ptycho.solver.pages import prefer_ordinary_pages; import numpy;"
            "prefer_ordinary_pages(); print(numpy._core.multiarray._get_madvise_hugepage())",
        ],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert asked.stdout.strip() == huge


@ONLY_WHERE_ASKED
def test_arrays_for_a_result_in_the_runengines_process_are_in_ordinary_pages():
    """The user's process keeps NumPy's huge pages; the arrays each result brings there are made without them."""
    touched = (
        "import re, numpy as np; from bluesky_ptycho.solver.pages import ordinary_empty\n"
        "def huge(): return int(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read())[1])\n"
        "before = huge(); a = ordinary_empty((4096, 4096), np.float32); a.fill(1); ours = huge() - before\n"
        "b = np.empty((4096, 4096), np.float32); b.fill(1); print(ours, huge() - before - ours)"
    )
    environment = {key: value for key, value in os.environ.items() if key != HUGE_PAGES_VARIABLE}
    run = subprocess.run(
        [sys.executable, "-c", touched], env=environment, capture_output=True, text=True, check=True
    )
    ours, numpys = map(int, run.stdout.split())
    assert ours == 0 and numpys > 0  # 64 MiB each: NumPy's got huge pages here, ours none
