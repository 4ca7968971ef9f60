"""Raw detector frames: a gapped, off-centre Eiger-like detector in compressed files, cut to the region around the beam."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from helpers import Documents, result_of, scan_positions

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import ExecutorRunner, LocalRunner
from bluesky_ptycho.io.frame_files import FileFrames
from bluesky_ptycho.sim import DetectorLayout, fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.sim.devices import GAP, HOT
from bluesky_ptycho.solver import DetectorSettings, ReconstructionSettings, object_error
from bluesky_ptycho.solver.detector import (
    CENTRE_FRAMES,
    EIGER_PIXEL_MASK,
    EIGER_SATURATION,
    DetectorError,
    FramePreparation,
    bright_field_centre,
)

# a 64-pixel frame on a 200 x 180 detector of two modules, the gap between them crossing the region
LAYOUT = DetectorLayout(shape=(200, 180), module_shape=(96, 180), gap=(8, 0), beam_centre=(70, 100))


@pytest.fixture
def RE():
    return RunEngine()


def recorded_scan(RE, directory, layout=LAYOUT, n_points=60, **beamline):
    stage, det = simulated_beamline(
        seed=1, hdf5_directory=directory, compression="bitshuffle-lz4", layout=layout, **beamline
    )
    raw = Documents()
    RE.subscribe(raw)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=n_points))
    (path,) = directory.glob("*.h5")
    return stage, det, raw, path


def replayed(raw, detector, iterations=30, runner=None, preview_every=None):
    recon = Documents()
    callback = PtychoCallback(
        recon,
        runner=runner,
        settings=ReconstructionSettings(iterations=iterations),
        preview_every=preview_every,
        preview_seconds=math.inf,
        detector_settings=detector,
    )
    for name, doc in raw:
        callback(name, doc)
    assert callback.wait(120)
    return recon


def test_the_bright_field_centre_is_found_among_hot_pixels():
    rows, columns = np.indices((300, 280))
    disc = (np.hypot(rows - 121.3, columns - 170.6) < 20) * 500.0
    total = np.random.default_rng(0).poisson(disc + 2.0).astype(float)
    total[np.random.default_rng(1).random(total.shape) < 1e-3] = 1e5  # hot pixels nobody masked
    row, column = bright_field_centre(total, np.ones(total.shape, bool))
    assert abs(row - 121.3) < 0.3 and abs(column - 170.6) < 0.3
    with pytest.raises(DetectorError, match="no bright field found"):
        bright_field_centre(np.random.default_rng(2).poisson(3.0, total.shape).astype(float), total > -1)


def test_binning_sums_counts_and_keeps_the_beam_on_the_zero_frequency_pixel():
    frame = np.zeros((40, 50), np.uint16)
    frame[21:23, 30:32] = 60000  # the beam: the 2 x 2 detector pixels centred on (21.5, 30.5)
    bad = np.zeros(frame.shape, np.uint8)
    bad[13, 22] = HOT  # the region starts there
    preparation = FramePreparation(DetectorSettings(frame_size=8, beam_centre=(21.5, 30.5), binning=2), bad)
    preparation.fix(frame[None])
    binned = preparation.prepare(frame)
    assert binned.shape == (8, 8) and binned.dtype == np.uint32
    assert binned[4, 4] == 4 * 60000 and binned.sum() == frame.astype(np.int64).sum()
    assert preparation.mask.sum() == 63 and not preparation.mask[0, 0], "the binned pixel of the hot one"


def test_a_gapped_off_centre_detector_is_cut_around_the_measured_beam(RE, tmp_path):
    stage, det, raw, path = recorded_scan(RE, tmp_path / "frames")
    with h5py.File(path, "r") as file:
        assert file["/entry/data/data"].shape == (60, *LAYOUT.shape)
        assert (file[EIGER_PIXEL_MASK][()] & GAP).any()
    settings = ReconstructionSettings(iterations=30)
    recon = replayed(raw, DetectorSettings(frame_size=64))
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    region = recon.named("start")[0]["ptycho_detector_region"]
    assert np.allclose(region["beam_centre"], LAYOUT.centre, atol=1.0) and region["beam_centre_measured"]
    assert region["rows"] == [38, 102] and region["masked_pixels"] >= 6 * 64, "the gap's rows 96-101"
    final = recon.named("event")[-1]["data"]
    assert final["n_frames"] == 60
    truth = det.sample.truth(scan_positions(raw, stage))
    assert object_error(result_of(final, settings), truth) <= 0.2
    uncut = replayed(raw, DetectorSettings())  # the whole detector: nothing cut, reconstructed as recorded
    assert "ptycho_detector_region" not in uncut.named("start")[0]
    assert uncut.named("start")[0]["ptycho_geometry"]["frame_shape"] == list(LAYOUT.shape)


def test_binned_frames_are_reconstructed_with_the_binned_pixel(RE, tmp_path):
    _, det, raw, _ = recorded_scan(RE, tmp_path / "frames", n_points=30)
    recon = replayed(raw, DetectorSettings(frame_size=32, binning=2), iterations=5)
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    geometry = recon.named("start")[0]["ptycho_geometry"]
    assert geometry["frame_shape"] == [32, 32]
    assert geometry["detector_pixel_size"] == pytest.approx(2 * det.sample.geometry.detector_pixel_size)


def test_saturated_pixels_are_masked_then_counted(RE, tmp_path):
    saturating = DetectorLayout(**{**LAYOUT.__dict__, "saturation": 2500})
    _, _, raw, _ = recorded_scan(RE, tmp_path / "frames", layout=saturating)
    # the same region either way: masking the saturated pixels moves a measured beam centre
    centre = saturating.beam_centre
    plain = replayed(raw, DetectorSettings(frame_size=64, beam_centre=centre, saturation=1e9), iterations=3)
    # the file's own cutoff
    recon = replayed(raw, DetectorSettings(frame_size=64, beam_centre=centre), iterations=3)
    masked = recon.named("start")[0]["ptycho_detector_region"]["masked_pixels"]
    assert masked > plain.named("start")[0]["ptycho_detector_region"]["masked_pixels"]
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success" and "at or above the saturation count 2500" in stop["reason"]


@pytest.mark.parametrize(
    ("detector", "photons", "reason"),
    [
        (
            DetectorSettings(frame_size=64, beam_centre=(20, 100)),
            1e6,
            "rows -12 to 51 and columns 68 to 131, outside the 200 x 180 detector",
        ),
        (DetectorSettings(frame_size=64), 20.0, "no bright field found"),
    ],
)
def test_frames_that_cannot_be_cut_fail_the_record_and_the_run_engine_runs_on(
    RE, tmp_path, detector, photons, reason
):
    recon = Documents()
    callback = PtychoCallback(
        recon, settings=ReconstructionSettings(iterations=3), detector_settings=detector
    )
    RE.subscribe(callback)
    _, _, raw, path = recorded_scan(RE, tmp_path / "frames", n_points=20, photons=photons)
    assert callback.wait(60)
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "fail" and reason in stop["reason"]
    assert "the detector frames cannot be used" in stop["reason"]
    assert raw.named("stop")[0]["exit_status"] == "success", "the raw scan ran to its end"
    with h5py.File(path, "r") as file:
        assert file["/entry/data/data"].shape[0] == 20
    stage, det = simulated_beamline(seed=2)
    assert len(RE(fermat_spiral_ptycho_scan(det, stage, n_points=5))) == 1 and RE.state == "idle"
    assert callback.wait(60)


def recording(runner_class):
    """``runner_class`` keeping the jobs it is given, to show what travels to where they run."""

    class Recording(runner_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.jobs = []

        def submit(self, job):
            self.jobs.append(job)
            return super().submit(job)

    return Recording


def test_a_local_worker_reads_the_detector_files_itself(RE, tmp_path):
    _, _, raw, path = recorded_scan(RE, tmp_path / "frames")
    detector = DetectorSettings(frame_size=32, binning=2)
    runner = recording(LocalRunner)(process=True)
    try:
        recon = replayed(raw, detector, iterations=3, runner=runner, preview_every=20)
    finally:
        runner.shutdown()
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    assert recon.named("event")[-1]["data"]["n_frames"] == 60
    assert all(isinstance(job.frames, FileFrames) for job in runner.jobs), "no frame travels as an array"
    spans = [span for job in runner.jobs for span in job.frames.spans]
    assert sum(stop - start for _, start, stop in spans) == 60 and all(s.path == path for s, _, _ in spans)

    # what the worker reads is what the callback would have cut from the frames it read
    with h5py.File(path, "r") as file:
        recorded = file["/entry/data/data"][()]
        preparation = FramePreparation(
            detector, file[EIGER_PIXEL_MASK][()], float(file[EIGER_SATURATION][()])
        )
    preparation.fix(recorded[:CENTRE_FRAMES])
    read, _ = runner.jobs[0].frames.read()
    np.testing.assert_array_equal(read, [preparation.prepare(frame) for frame in recorded[: len(read)]])
    np.testing.assert_array_equal(runner.jobs[0].mask, preparation.mask)


def test_an_executor_gets_the_frames_themselves(RE, tmp_path):
    """A runner elsewhere may not see the detector's files: the callback reads them and sends counts."""
    _, _, raw, _ = recorded_scan(RE, tmp_path / "frames", n_points=20)
    with ThreadPoolExecutor(1) as executor:
        runner = recording(ExecutorRunner)(executor)
        recon = replayed(raw, DetectorSettings(frame_size=64), iterations=3, runner=runner)
        runner.shutdown()
    assert recon.named("stop")[0]["exit_status"] == "success"
    assert runner.jobs and all(isinstance(job.frames, np.ndarray) for job in runner.jobs)
    assert runner.jobs[-1].frames.shape[1:] == (64, 64)
