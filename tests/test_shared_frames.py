"""Inline frames reach a local worker process through shared memory: written once, read in place, freed after."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import pickle
import time

import numpy as np
import pytest
from bluesky import RunEngine
from helpers import Documents

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.federation.jobs import ReconstructionJob
from bluesky_ptycho.federation.shared_frames import BlockPool, SharedFrames
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, simulate

SHM = "/dev/shm"
pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="POSIX shared memory in /dev/shm (Linux)")


def frames(n: int, shape=(32, 24), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(n).poisson(40.0, size=(n, *shape)).astype(dtype)


def _sums(connection) -> None:
    shared = connection.recv()
    connection.send([block.astype(np.float64).sum(axis=(1, 2)) for block in shared.arrays()])
    shared.close()


def test_a_spawned_process_reads_the_frames_in_place_and_the_owner_frees_them():
    counts = frames(40)
    shared = SharedFrames(counts.shape[1:], block_bytes=16 * counts[0].nbytes)
    for frame in counts:
        shared.append(frame)
    shared.append(counts[0].astype(np.float32) + 0.5)  # of another type: a block of its own
    assert len(shared) == 41 and shared.in_shared_memory
    names = {block.name for block in shared._blocks}
    assert len(names) == 4 and all(os.path.exists(f"{SHM}/{name}") for name in names)
    assert len(pickle.dumps(shared)) < counts[0].nbytes  # names, not frames

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_sums, args=(theirs,))
    child.start()
    ours.send(shared)
    sums = np.concatenate(ours.recv())
    child.join(60)
    expected = [
        *counts.sum(axis=(1, 2), dtype=np.float64),
        counts[0].sum(dtype=np.float64) + 0.5 * counts[0].size,
    ]
    np.testing.assert_array_equal(sums, expected)
    shared.release()
    assert not any(os.path.exists(f"{SHM}/{name}") for name in names)


def test_frames_that_do_not_fit_in_shared_memory_travel_pickled(caplog):
    """A block larger than /dev/shm's free space is refused when it is made, not by SIGBUS on a later write."""
    free = os.statvfs(SHM).f_bavail * os.statvfs(SHM).f_frsize
    counts = frames(5)
    shared = SharedFrames(counts.shape[1:], block_bytes=free + 2**30)
    with caplog.at_level(logging.WARNING):
        for frame in counts:
            shared.append(frame)
    assert not shared.in_shared_memory
    assert "no shared memory" in caplog.text and "pickled" in caplog.text
    arrived = pickle.loads(pickle.dumps(shared))
    np.testing.assert_array_equal(np.concatenate(arrived.arrays()), counts)


def test_a_frame_of_another_shape_is_refused():
    shared = SharedFrames((4, 4))
    with pytest.raises(ValueError, match=r"shape \(4, 5\) among frames of \(4, 4\)"):
        shared.append(np.zeros((4, 5), np.uint16))
    shared.release()


def names_of(shared: SharedFrames) -> list[str]:
    return [block.name for block in shared._blocks]


def test_released_blocks_are_kept_mapped_for_the_next_frames_up_to_the_pools_limit():
    """Frames after a release go into the same (already faulted-in) blocks; beyond keep_bytes, blocks are freed."""
    counts = frames(12)
    block = 4 * counts[0].nbytes
    pool = BlockPool(keep_bytes=2 * block)
    first = SharedFrames(counts.shape[1:], block_bytes=block, pool=pool)
    for frame in counts:
        first.append(frame)
    names = names_of(first)
    assert len(names) == 3
    first.release()
    assert pool.kept_bytes == 2 * block
    kept = [name for name in names if os.path.exists(f"{SHM}/{name}")]
    assert len(kept) == 2  # the third was freed

    second = SharedFrames(counts.shape[1:], block_bytes=block, pool=pool)
    for frame in counts[::-1]:
        second.append(frame)
    assert set(kept) <= set(names_of(second)) and pool.kept_bytes == 0
    arrived = pickle.loads(pickle.dumps(second))
    np.testing.assert_array_equal(np.concatenate(arrived.arrays()), counts[::-1])  # nothing of the first left
    arrived.close()
    second.release()
    pool.close()
    assert not any(os.path.exists(f"{SHM}/{name}") for name in {*names, *names_of(second)})
    assert pool.kept_bytes == 0


def test_a_block_of_another_size_is_not_taken_from_the_pool():
    pool = BlockPool()
    small = SharedFrames((8, 8), block_bytes=8 * 8 * 2 * 4, pool=pool)
    small.append(np.ones((8, 8), np.uint16))
    small.release()
    other = SharedFrames((8, 8), block_bytes=8 * 8 * 2 * 5, pool=pool)
    other.append(np.ones((8, 8), np.uint16))
    assert names_of(other) != names_of(small) and pool.kept_bytes == 8 * 8 * 2 * 4
    other.release()
    pool.close()


class RecordingRunner(LocalRunner):
    """A worker-process runner that notes what each job's frames were (and still does the jobs)."""

    def __init__(self) -> None:
        super().__init__(process=True)
        self.kinds: list[tuple[str, int, bool]] = []
        self.names: set[str] = set()

    def submit(self, job):
        shared = isinstance(job.frames, SharedFrames)
        self.kinds.append(
            (type(job.frames).__name__, len(job.frames), shared and job.frames.in_shared_memory)
        )
        if shared:
            self.names |= {block.name for block in job.frames._blocks}
        return super().submit(job)


@pytest.fixture
def beamline():
    return simulated_beamline(seed=1)


@pytest.fixture
def RE():
    return RunEngine()


def test_a_live_scans_inline_frames_go_to_the_worker_in_shared_memory_and_are_freed(RE, beamline):
    stage, det = beamline
    recon = Documents()
    runner = RecordingRunner()
    callback = PtychoCallback(
        recon,
        runner=runner,
        settings=ReconstructionSettings(iterations=10),
        preview_every=30,
        queue_previews=True,
        preview_seconds=math.inf,
    )
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert callback.wait(120)
    runner.shutdown()
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    assert recon.named("event")[-1]["data"]["n_frames"] == 60
    # two previews of 30 frames each; the final adds none
    assert runner.kinds == [("SharedFrames", 30, True), ("SharedFrames", 30, True), ("ndarray", 0, False)]
    assert runner.names and not any(os.path.exists(f"{SHM}/{name}") for name in runner.names)


def test_a_jobs_blocks_go_back_to_the_pool_once_the_worker_has_stored_its_frames():
    """Not when the job ends: the next frames reuse them while the preview still iterates."""
    data = simulate(n_frames=40, frame_size=32, seed=3).data
    runner = LocalRunner(process=True).start_worker()
    shared = SharedFrames(data.frames.shape[1:], pool=runner.block_pool)
    for frame in data.frames[:20]:
        shared.append(frame)

    def job(frames, positions, iterations, final=False):
        settings = ReconstructionSettings(probe_defocus=None)
        return ReconstructionJob("a", data.geometry, settings, frames, positions, iterations, final)

    try:
        preview = runner.submit(job(shared, data.positions[:20], 200_000))
        deadline = time.monotonic() + 60
        while runner.block_pool.kept_bytes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.block_pool.kept_bytes > 0 and not preview.done()  # iterating on, its frames stored
        final = runner.submit(job(data.frames[20:], data.positions[20:], 2, final=True))  # cuts it short
        assert preview.result(120).n_frames == 20 and final.result(120).n_frames == 40
    finally:
        runner.shutdown()
