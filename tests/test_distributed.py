"""One scan over MPI ranks: real ``mpiexec -n 2`` runs of every algorithm against one process."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import psutil
import pytest
from bluesky import RunEngine
from click.testing import CliRunner
from helpers import Documents, assert_previews_then_final, result_of, scan_positions

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.cli import main
from bluesky_ptycho.federation import ExecutorRunner
from bluesky_ptycho.federation.lanes import NOT_RETRIED
from bluesky_ptycho.federation.mpi import RankDataError, mpiexec_path, reconstruct_with_mpiexec, run_ranks
from bluesky_ptycho.federation.remote import reconstruct_files
from bluesky_ptycho.io import read_result, write_cxi
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import (
    ReconstructionSettings,
    Reconstructor,
    fourier_r_factor,
    object_error,
    simulate,
)
from bluesky_ptycho.solver.algorithms import REGISTRY
from bluesky_ptycho.solver.communicator import MPI_MISSING
from bluesky_ptycho.solver.decomposition import assign_frames
from bluesky_ptycho.solver.simulate import aperture_probe

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")
# no run here takes more than a few seconds: a hang fails instead of stalling the suite
TIMEOUT = 120


@pytest.fixture(scope="module")
def sim():
    """150 frames of 32², Poisson noise, with a given (wrong) initial probe that both sides start from."""
    sim = simulate(n_frames=150, frame_size=32, overlap=0.7, photons=1e6, seed=3)
    probe = aperture_probe((32, 32), 32 / 3 * 1.15, curvature=0.0)
    return replace(sim, data=replace(sim.data, probe=probe))


def on_ranks(tmp_path, data, settings, ranks=2, decomposition="stripes", echo=lambda line: None):
    """The result of ``mpiexec -n ranks`` on ``data`` written as a CXI file."""
    path = tmp_path / "scan.cxi"
    if not path.exists():
        write_cxi(path, data)
    return reconstruct_with_mpiexec(
        path, tmp_path / "result.cxi", settings, ranks, decomposition, timeout=TIMEOUT, echo=echo
    )


def in_one_process(data, settings):
    reconstructor = Reconstructor.from_data(data, settings).iterate()
    return reconstructor.result()


def test_frames_are_shared_out_in_stripes_across_the_longer_extent_or_in_turn():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 1, (101, 2)) * (3.0, 1.0)  # wider than high: stripes cut x
    stripes = assign_frames(positions, 3)
    assert sorted(np.concatenate(stripes).tolist()) == list(range(101))
    assert [len(part) for part in stripes] == [34, 34, 33]
    for left, right in itertools.pairwise(stripes):
        assert positions[left, 0].max() <= positions[right, 0].min()
    turns = assign_frames(positions, 3, "round-robin")
    assert turns[1].tolist() == list(range(1, 101, 3))
    with pytest.raises(ValueError, match=r"4 ranks for 7 frames.*at most 3 ranks"):
        assign_frames(positions[:7], 4)
    with pytest.raises(ValueError, match="decomposition must be one of"):
        assign_frames(positions, 2, "checkerboard")


@pytest.mark.parametrize(("ranks", "decomposition"), [(2, "stripes"), (3, "round-robin")])
def test_dm_on_ranks_is_dm_in_one_process_to_float32_rounding(tmp_path, sim, ranks, decomposition):
    """The ranks' sums add the frames in another order; so does one process given the frames reordered.

    DM carries those rounding differences on from iteration to iteration
    (to a few 1e-4 of the cost after 60 iterations, whichever way): the ranks
    must be no further from one process than it is from itself. Each rank
    holds its frames' part of the canvas; on stripes the parts overlap at
    their edges, round-robin every part overlaps every other (the ranks'
    sums meet three at a pixel).
    """
    settings = ReconstructionSettings(algorithm="dm", iterations=30, fft_workers=1)
    distributed = on_ranks(tmp_path, sim.data, settings, ranks, decomposition)
    single = in_one_process(sim.data, settings)
    order = np.random.default_rng(1).permutation(len(sim.data))
    reordered = in_one_process(
        replace(sim.data, frames=sim.data.frames[order], positions=sim.data.positions[order]), settings
    )

    def apart(result) -> np.ndarray:
        return np.abs(np.asarray(result.cost_history) / single.cost_history - 1)

    assert apart(distributed)[:5].max() < 1e-5
    assert apart(distributed).max() < max(3 * apart(reordered).max(), 1e-5)
    errors = [object_error(result, sim) for result in (distributed, single, reordered)]
    assert abs(errors[0] / errors[1] - 1) < max(3 * abs(errors[2] / errors[1] - 1), 1e-5)
    assert distributed.object.shape == single.object.shape
    assert distributed.object_origin == pytest.approx(single.object_origin)
    record = distributed.extra["distributed"]
    assert record["frames_per_rank"] == [len(sim.data) // ranks] * ranks
    assert record["r_factor"] == pytest.approx(fourier_r_factor(distributed, sim.data), rel=1e-4)
    # a whole canvas's sums are 12 bytes a pixel: stripes send their edges only (a frame and the margins
    # wide, most of these small canvases)
    canvas_sums = 1.5 * distributed.object.nbytes
    sent = np.array(record["bytes_sent_per_iteration"]) / canvas_sums
    if decomposition == "stripes":
        assert np.all(sent < 0.8), sent


@pytest.mark.parametrize("device", ["cpu", "strict"])
@pytest.mark.parametrize("algorithm", ["rpie", "epie", "dm", "lsqml"])
def test_every_algorithm_on_two_ranks_with_modes_and_position_refinement(tmp_path, sim, algorithm, device):
    settings = ReconstructionSettings(
        algorithm=algorithm,
        iterations=30,
        probe_modes=2,
        position_correction=True,
        position_correction_start=10,
        position_search_every=10,
        device=device,
        fft_workers=1,
    )
    distributed = on_ranks(tmp_path, sim.data, settings)
    single = in_one_process(sim.data, settings)
    # every frame's refined position comes back in the file's order
    moved = np.abs(distributed.positions - sim.data.positions).max(axis=0) / distributed.pixel_size[::-1]
    assert distributed.positions.shape == sim.data.positions.shape
    assert np.all(moved < 20 * settings.max_position_step)
    assert distributed.cost_history[-1] < 0.5 * distributed.cost_history[0]
    r_distributed, r_single = fourier_r_factor(distributed, sim.data), fourier_r_factor(single, sim.data)
    assert r_distributed < 1.25 * r_single, (r_distributed, r_single)
    assert distributed.extra["distributed"]["ranks"] == 2
    assert [search["iteration"] for search in distributed.extra["position_searches"]] == [20]


@pytest.mark.parametrize(("algorithm", "per_batch"), [("rpie", 1), ("lsqml", 2)])
def test_a_batchs_sums_cross_the_ranks_in_one_collective_each_time_they_are_needed(
    tmp_path, sim, algorithm, per_batch
):
    """Over many ranks a small all-reduce costs its latency, whatever its bytes, and these come after every batch.

    rPIE sums its probe's numerator and weights (one collective); LSQ-ML
    those, then its step's sum and count (two): what each engine says it
    makes (``collectives_per_batch``, the weak-scaling model's input).
    """
    assert REGISTRY[algorithm].engine.collectives_per_batch == per_batch
    collectives = {}
    for batch_size in (16, 32):
        settings = ReconstructionSettings(
            algorithm=algorithm,
            iterations=3,
            probe_update_start=0,
            fft_workers=1,
            options={"batch_size": batch_size},
        )
        record = on_ranks(tmp_path, sim.data, settings).extra["distributed"]
        assert record["frames_per_rank"] == [75, 75]
        first, second = record["collectives_per_iteration"]
        assert first == second  # the ranks' collectives pair up, or they would wait for ever
        collectives[batch_size] = first
    # a rank's batch is half the batch size, of its 75 frames: 10 batches an iteration against 5
    assert collectives[16] - collectives[32] == per_batch * (10 - 5)


# each rank sums arrays of its own values: rank r's are (r + 1) times the base ones
RANK_SUMS = """
import json, numpy as np
from bluesky_ptycho.solver import strict
from bluesky_ptycho.solver.backend import to_numpy
from bluesky_ptycho.solver.communicator import MPICommunicator
comm = MPICommunicator()
scale = comm.rank + 1
complex_wide = (np.arange(6).reshape(2, 3) + 1 / 7) * (1 + 2j) * scale  # a seventh: no float32 holds it
real_narrow = np.arange(4, dtype=np.float32)[::2] * scale  # not contiguous
on_device = strict.xp.asarray(np.full((2, 2), 1.5 + 0.5j, np.complex64) * scale)
sums = comm.sum_together(complex_wide, real_narrow, on_device)
totals = comm.totals(0.25 * scale, 3 * scale)
most = comm.most(7 * scale)
low, high = comm.extent(np.array([-1.0, 2.0]) * scale, np.array([4.0, 5.0]) * scale)
if comm.rank == 0:
    print(json.dumps({
        "same": [sums[0] is complex_wide, sums[1] is real_narrow, sums[2] is on_device],
        "complex_wide": [complex_wide.real.tolist(), complex_wide.imag.tolist(), str(complex_wide.dtype)],
        "real_narrow": [real_narrow.tolist(), str(real_narrow.dtype)],
        "on_device": [to_numpy(on_device).real.tolist(), to_numpy(on_device).imag.tolist()],
        "totals": totals,
        "most": most,
        "extent": [low.tolist(), high.tolist()],
        "collectives": comm.collectives,
    }))
"""


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_arrays_of_any_type_and_module_are_summed_over_the_ranks_in_one_collective(n_ranks):
    done = subprocess.run(
        [mpiexec_path(), "-n", str(n_ranks), sys.executable, "-c", RANK_SUMS],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    ranks = sum(range(1, n_ranks + 1))  # the ranks' scales added
    base = np.arange(6).reshape(2, 3) + 1 / 7
    assert got["same"] == [True, True, True]  # summed in place
    real, imag, dtype = got["complex_wide"]
    assert dtype == "complex128"
    np.testing.assert_allclose(real, base * ranks, rtol=1e-14)  # summed in double precision
    np.testing.assert_allclose(imag, 2 * base * ranks, rtol=1e-14)
    assert got["real_narrow"] == [[0.0, 2.0 * ranks], "float32"]
    assert got["on_device"] == [[[1.5 * ranks] * 2] * 2, [[0.5 * ranks] * 2] * 2]
    assert got["totals"] == [0.25 * ranks, 3.0 * ranks]
    assert got["most"] == 7 * n_ranks
    assert got["extent"] == [[-n_ranks, 2.0], [4.0 * n_ranks, 5.0 * n_ranks]]
    assert got["collectives"] == (4 if n_ranks > 1 else 0), "one rank makes no reductions"


def test_a_live_scan_is_reconstructed_over_ranks_previews_and_final(tmp_path):
    """The callback stays in the RunEngine's process; every job, previews and final, runs on two ranks."""
    stage, det = simulated_beamline(seed=1)
    staging = tmp_path / "staging"
    runner = ExecutorRunner.on_ranks(2, staging_directory=staging)
    raw, recon = Documents(), Documents()
    settings = ReconstructionSettings(iterations=40, fft_workers=1)
    ranks = []

    def record_ranks(uid, result, final):
        ranks.append(result.extra["distributed"]["frames_per_rank"])

    callback = PtychoCallback(
        recon, runner=runner, settings=settings, preview_every=60, queue_previews=True, on_result=record_ranks
    )
    RE = RunEngine()
    RE.subscribe(raw)
    RE.subscribe(callback)
    try:
        RE(fermat_spiral_ptycho_scan(det, stage, n_points=120))
        assert callback.wait(TIMEOUT)
    finally:
        runner.shutdown()
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    assert recon.named("start")[0]["ptycho_solver"]["location"] == "2 MPI ranks"
    events = recon.named("event")
    frames, iterations = ([e["data"][key] for e in events] for key in ("n_frames", "iteration"))
    assert_previews_then_final(frames, iterations, [60, 120], 20, 40)
    assert iterations[-1] == 2 * 20 + 40  # the previews ran to their end on the ranks, recorded or not
    assert ranks[-1] == [60, 60]
    result = result_of(events[-1]["data"], settings)
    assert object_error(result, det.sample.truth(scan_positions(raw, stage))) <= 0.10
    assert not (staging / raw.named("start")[0]["uid"]).exists()  # staged chunks removed after success
    assert runner.executor._processes is None or not any(
        p.is_alive() for p in runner.executor._processes.values()
    )


def test_a_rank_whose_frames_lie_beyond_the_previous_result_starts_there_from_its_mean(tmp_path):
    """A raster scan's early preview covers its first rows; a later job's last stripe lies wholly beyond them."""
    sim = simulate(n_frames=400, frame_size=32, overlap=0.6, photons=1e6, seed=3)
    axis = int(np.argmax(np.ptp(sim.data.positions, axis=0)))  # the axis the stripes cut
    order = np.argsort(sim.data.positions[:, axis], kind="stable")
    data = replace(sim.data, frames=sim.data.frames[order], positions=sim.data.positions[order])
    chunks = [tmp_path / "chunk_0.cxi", tmp_path / "chunk_1.cxi"]
    for path, part in zip(chunks, (slice(0, 10), slice(10, None)), strict=True):
        write_cxi(path, replace(data, frames=data.frames[part], positions=data.positions[part]))
    settings = ReconstructionSettings(algorithm="rpie", fft_workers=1)
    launcher = [mpiexec_path(), "-n", "2"]
    first = run_ranks(launcher, chunks[:1], tmp_path / "result_0.cxi", settings, iterations=5, echo=print)
    pixels = (data.positions - first.object_origin)[:, ::-1] / first.pixel_size
    assert pixels[len(data) // 2 :, 1 - axis].min() > first.object.shape[1 - axis]  # beyond it
    result = run_ranks(
        launcher,
        chunks,
        tmp_path / "result_1.cxi",
        settings,
        iterations=20,
        previous_file=tmp_path / "result_0.cxi",
        timeout=TIMEOUT,
        echo=print,
    )
    assert np.isfinite(result.object).all()
    single = in_one_process(data, replace(settings, iterations=25))
    assert fourier_r_factor(result, data) < 1.25 * fourier_r_factor(single, data)


def test_reconstruct_ranks_from_the_cli(tmp_path, sim):
    path = tmp_path / "scan.cxi"
    write_cxi(path, sim.data)
    output, png = tmp_path / "out.cxi", tmp_path / "out.png"
    result = CliRunner().invoke(
        main,
        [
            "reconstruct",
            str(path),
            "--ranks",
            "2",
            "-a",
            "lsqml",
            "-n",
            "5",
            "-o",
            str(output),
            "--png",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "iteration 5/5" in result.output and "frames per rank [75, 75]" in result.output
    assert read_result(output).iterations == 5 and png.stat().st_size > 0


def test_more_ranks_than_frames_is_one_clear_error(tmp_path, sim):
    few = replace(sim.data, frames=sim.data.frames[:5], positions=sim.data.positions[:5])
    path = tmp_path / "few.cxi"
    write_cxi(path, few)
    result = CliRunner().invoke(main, ["reconstruct", str(path), "--ranks", "3", "-n", "2"])
    assert result.exit_code != 0
    assert "3 ranks for 5 frames" in result.output and "use at most 2 ranks" in result.output
    assert not (tmp_path / "few_recon.cxi").exists()
    # a data error: the lanes do not try such a job again (a live scan's first preview on too many ranks)
    with pytest.raises(RankDataError, match="3 ranks for 5 frames") as raised:
        reconstruct_with_mpiexec(path, tmp_path / "out.cxi", ReconstructionSettings(), 3, timeout=TIMEOUT)
    assert isinstance(raised.value, NOT_RETRIED)


def test_a_ranks_error_comes_back_when_the_launcher_loses_its_stderr(tmp_path, sim):
    """The abort may end mpiexec before it passes the ranks' last lines on: each rank's is kept in a file too."""
    few = replace(sim.data, frames=sim.data.frames[:5], positions=sim.data.positions[:5])
    path = tmp_path / "few.cxi"
    write_cxi(path, few)
    silenced = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:], stderr=subprocess.DEVNULL))"
    launcher = [sys.executable, "-c", silenced, mpiexec_path(), "-n", "3"]
    # every rank stops on it, and the first to abort ends the others, maybe before they wrote theirs
    with pytest.raises(RankDataError, match=r"error on rank \d of 3: ValueError: 3 ranks for 5 frames"):
        run_ranks(launcher, [path], tmp_path / "out.cxi", ReconstructionSettings(), timeout=TIMEOUT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.cxi"], "the ranks' files are taken"


def test_without_mpi4py_the_rank_program_says_what_to_install(tmp_path):
    blocker = tmp_path / "mpi4py"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    process = subprocess.run(
        [sys.executable, "-m", "bluesky_ptycho.distributed", "in.cxi", "-o", "out.cxi"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert process.returncode == 2
    assert MPI_MISSING in process.stderr


def test_a_rank_that_dies_ends_the_run_with_an_error_not_a_hang(tmp_path, sim):
    started = threading.Event()
    settings = ReconstructionSettings(algorithm="rpie", iterations=100_000, fft_workers=1)

    def kill_one_rank() -> None:
        started.wait(TIMEOUT)
        ranks = [
            process
            for process in psutil.process_iter(["cmdline"])
            if "bluesky_ptycho.distributed" in (process.info["cmdline"] or [])
            and str(tmp_path) in " ".join(process.info["cmdline"])
            and "mpiexec" not in process.info["cmdline"][0]
        ]
        assert len(ranks) == 2
        ranks[-1].kill()

    killer = threading.Thread(target=kill_one_rank)
    killer.start()
    with pytest.raises(RuntimeError, match="mpiexec -n 2 failed"):
        on_ranks(tmp_path, sim.data, settings, echo=lambda line: started.set())
    killer.join()


def test_a_globus_mpi_engine_task_reconstructs_the_staged_scan_on_the_ranks_its_resources_ask_for(
    tmp_path, sim, monkeypatch
):
    """The flow's compute step as a ``GlobusMPIEngine`` worker runs it: Parsl's own launcher prefix, chunk files, a previous result.

    The first job, a live scan's first preview, has too few frames for two ranks: it runs on one, the other idles.
    """
    from parsl.executors.high_throughput.mpi_prefix_composer import compose_all, validate_resource_spec

    resources = {"num_nodes": 1, "ranks_per_node": 2}  # what the flow input's resource_specification says
    validate_resource_spec(resources)
    monkeypatch.setenv(
        "PARSL_MPI_PREFIX", compose_all("mpiexec", resources, ["localhost"])["PARSL_MPI_PREFIX"]
    )
    early = 3
    chunks = [tmp_path / "chunk_0.cxi", tmp_path / "chunk_1.cxi"]
    for path, part in zip(chunks, (slice(0, early), slice(early, None)), strict=True):
        write_cxi(path, replace(sim.data, frames=sim.data.frames[part], positions=sim.data.positions[part]))
    settings = ReconstructionSettings(algorithm="lsqml", probe_modes=2, fft_workers=1).to_dict()
    first = reconstruct_files([str(chunks[0])], str(tmp_path / "result_0.cxi"), 5, settings)
    assert first["n_frames"] == early and first["iterations"] == 5
    record = read_result(first["result_file"]).extra["distributed"]
    assert (record["ranks"], record["ranks_idle"], record["frames_per_rank"]) == (1, 1, [early])
    summary = reconstruct_files(
        [str(path) for path in chunks],
        str(tmp_path / "result_1.cxi"),
        10,
        settings,
        previous_file=first["result_file"],
        final=True,
    )
    result = read_result(summary["result_file"])
    assert (summary["n_frames"], summary["iterations"]) == (len(sim.data), 15)
    record = result.extra["distributed"]
    assert (record["ranks"], record["ranks_idle"], sum(record["frames_per_rank"])) == (2, 0, 150)
    assert result.cost_history[-1] < result.cost_history[4]  # went on from the previous result's cost
    # the final job leaves only its result where it ran
    assert sorted(path.name for path in tmp_path.glob("*.cxi")) == ["result_1.cxi"]


def test_each_frames_share_of_a_drifting_beam_comes_back_in_the_files_order(tmp_path, drifting):
    settings = ReconstructionSettings(
        algorithm="lsqml",
        iterations=40,
        intensity_correction=True,
        intensity_correction_start=10,
        fft_workers=1,
    )
    distributed = on_ranks(tmp_path, drifting.data, settings)
    single = in_one_process(drifting.data, settings)
    assert distributed.frame_scales.shape == (len(drifting.data),)
    assert np.mean(distributed.frame_scales**2) == pytest.approx(1.0)  # over both ranks' frames
    assert np.corrcoef(distributed.frame_scales, single.frame_scales)[0, 1] > 0.95


def test_a_probe_varying_through_the_scan_is_fitted_over_ranks(tmp_path, drifting):
    """The eigen-probes are every rank's (their sums all-reduced); each frame's weights come back in the files' order."""
    settings = ReconstructionSettings(
        algorithm="lsqml", iterations=40, variable_probe_modes=1, variable_probe_start=10, fft_workers=1
    )
    distributed = on_ranks(tmp_path, drifting.data, settings)
    single = in_one_process(drifting.data, settings)
    assert distributed.eigen_weights.shape == (len(drifting.data), 1)
    assert np.corrcoef(distributed.eigen_weights[:, 0], single.eigen_weights[:, 0])[0, 1] > 0.95
    assert distributed.extra["distributed"]["r_factor"] < 1.05 * fourier_r_factor(single, drifting.data)
