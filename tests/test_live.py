"""Live reconstruction during real RunEngine scans of the simulated beamline."""

from __future__ import annotations

import logging
import math

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted
from event_model import pack_event_page
from helpers import Documents, after_event, assert_previews_then_final, result_of, scan_positions

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import from_polar, latest_final_reconstruction, reconstructions_of, summarize
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, ptycho_metadata, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, object_error

SETTINGS = ReconstructionSettings(iterations=60)


@pytest.fixture
def beamline():
    return simulated_beamline(seed=1)


@pytest.fixture
def RE():
    return RunEngine()


def test_scan_reconstructed_live_with_previews(RE, beamline):
    stage, det = beamline
    raw, recon = Documents(), Documents()
    callback = PtychoCallback(
        recon, settings=SETTINGS, preview_every=40, queue_previews=True, preview_seconds=math.inf
    )
    RE.subscribe(raw)
    RE.subscribe(callback)
    # time for the previews while the scan runs, however fast the simulated scan is: the first
    # builds the probe (its defocus measured) and may load the compiled kernels
    plan = after_event(fermat_spiral_ptycho_scan(det, stage, n_points=160), 40, lambda: bps.sleep(3))
    (uid,) = RE(after_event(after_event(plan, 80, lambda: bps.sleep(1.5)), 120, lambda: bps.sleep(1.5)))
    assert callback.wait(120)
    assert [name for name, _ in recon][:2] == ["start", "descriptor"] and recon[-1][0] == "stop"
    start, stop = recon.named("start")[0], recon.named("stop")[0]
    assert start["raw_uid"] == uid and start["raw_scan_id"] == raw.named("start")[0]["scan_id"]
    assert start["ptycho_solver"]["settings"]["iterations"] == 60 and start["ptycho_solver"]["location"]
    assert stop["exit_status"] == "success" and stop["reason"] == ""
    events = recon.named("event")
    frames, iterations = ([e["data"][key] for e in events] for key in ("n_frames", "iteration"))
    assert_previews_then_final(frames, iterations, [40, 80, 120, 160], 20, 60)
    assert [e["data"]["final"] for e in events] == [False] * (len(events) - 1) + [True]
    final = events[-1]["data"]
    assert not final["partial"]
    assert math.isnan(final["positions_moved_rms"]) and math.isnan(
        final["positions_moved_max"]
    )  # not refined
    costs = [e["data"]["cost"] for e in events]
    assert costs[-1] < costs[0]
    result = result_of(final, SETTINGS)
    truth = det.sample.truth(scan_positions(raw, stage))
    assert object_error(result, truth) <= 0.10


def test_refined_positions_are_recorded_with_how_far_they_moved(RE, beamline):
    stage, det = beamline
    raw, recon = Documents(), Documents()
    settings = ReconstructionSettings(iterations=30, position_correction=True, position_correction_start=5)
    callback = PtychoCallback(recon, settings=settings)
    RE.subscribe(raw)
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=100))
    assert callback.wait(120)
    final = recon.named("event")[-1]["data"]
    recorded = scan_positions(raw, stage)
    pixel = np.array([final["pixel_size_x"], final["pixel_size_y"]])
    moved = np.hypot(*((np.asarray(final["positions"]) - recorded) / pixel).T)
    assert final["positions_moved_max"] == pytest.approx(moved.max(), rel=1e-6) and moved.max() > 0
    assert final["positions_moved_rms"] == pytest.approx(np.sqrt(np.mean(moved**2)), rel=1e-6)
    assert recon.named("stop")[0]["exit_status"] == "success"


def test_event_pages_give_the_same_frames(RE, beamline):
    stage, det = beamline
    raw = Documents()
    RE.subscribe(raw)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=5), preview_every=None)
    events = raw.named("event")
    for name, doc in raw:
        if name == "event":
            continue
        if name == "stop":
            for chunk in (events[:25], events[25:]):
                callback("event_page", pack_event_page(*chunk))
        callback(name, doc)
    assert callback.wait(60)
    final = recon.named("event")[-1]["data"]
    assert final["n_frames"] == 60
    np.testing.assert_allclose(
        np.sort(final["positions"][:, 0]), np.sort(scan_positions(raw, stage)[:, 0]), atol=1e-12
    )


def test_aborted_scan_gives_a_partial_reconstruction(RE, beamline):
    stage, det = beamline
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=10), preview_every=None)
    RE.subscribe(callback)
    with pytest.raises(RunEngineInterrupted):
        RE(after_event(fermat_spiral_ptycho_scan(det, stage, n_points=100), 40, bps.pause))
    assert RE.state == "paused"
    RE.abort(reason="beam lost")
    assert callback.wait(60)
    final = recon.named("event")[-1]["data"]
    assert final["final"] and final["partial"] and final["n_frames"] == 40
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success" and "partial" in stop["reason"] and "abort" in stop["reason"]


def test_events_lost_on_the_way_give_a_partial_final_that_says_how_many(RE, beamline):
    """As a lossy bus (0MQ) delivers a scan: seven of its events never come; the stop document counts them."""
    stage, det = beamline
    raw, recon = Documents(), Documents()
    RE.subscribe(raw)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    (primary,) = [doc["uid"] for doc in raw.named("descriptor") if doc["name"] == "primary"]
    frames = [i for i, (name, doc) in enumerate(raw) if name == "event" and doc["descriptor"] == primary]
    lost = set(frames[20:27])
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=5), preview_every=None)
    for i, (name, doc) in enumerate(raw):
        if i not in lost:
            callback(name, doc)
    assert callback.wait(60)
    final = recon.named("event")[-1]["data"]
    assert final["final"] and final["partial"] and final["n_frames"] == 53
    (stop,) = recon.named("stop")
    assert stop["exit_status"] == "success"
    assert "partial: 7 of the scan's 60 events never came here (the document bus lost them)" in stop["reason"]


def test_two_scans_in_a_row_are_linked_to_their_raw_scans(RE, beamline):
    stage, det = beamline
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=5), preview_every=None)
    RE.subscribe(callback)
    uids = [RE(fermat_spiral_ptycho_scan(det, stage, n_points=40))[0] for _ in range(2)]
    assert callback.wait(60)
    starts = recon.named("start")
    assert [s["raw_uid"] for s in starts] == uids
    stops = {s["run_start"]: s for s in recon.named("stop")}
    assert all(stops[s["uid"]]["exit_status"] == "success" for s in starts)


def test_missing_geometry_fails_the_reconstruction_not_the_scan(RE, beamline, caplog, simple_tiled_server):
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    server = simple_tiled_server()
    catalog = from_uri(server.uri)
    writer = TiledWriter(catalog, batch_size=2)
    stage, det = beamline
    raw = Documents()
    callback = PtychoCallback(writer, preview_every=10)
    for subscriber in (raw, writer, callback):
        RE.subscribe(subscriber)
    ptycho = {"ptycho": {"data_key": "det_image"}}  # a ptychography scan whose plan forgot the geometry
    with caplog.at_level(logging.ERROR, logger="bluesky_ptycho"):
        (uid,) = RE(bp.list_scan([det], stage.x, [0, 0.2, 0.4], stage.y, [0, 0.1, 0.2], md=ptycho))
    assert callback.wait(30)
    assert raw.named("stop")[0]["exit_status"] == "success"
    frames = np.asarray(catalog[uid]["primary"]["det_image"].read())
    assert frames.shape == (3, 64, 64)
    np.testing.assert_array_equal(frames, [e["data"]["det_image"] for e in raw.named("event")])
    (run,) = reconstructions_of(catalog, uid)
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail"
    for key in ("x_key", "photon_energy_ev", "detector_distance_m"):
        assert key in stop["reason"]
    assert "lacks the ptycho keys" in caplog.text
    with pytest.raises(
        LookupError, match=f"its newest reconstruction, {run.metadata['start']['uid']}, is fail: .*x_key"
    ):
        latest_final_reconstruction(catalog, uid)
    server.close()


def test_ordinary_scans_are_ignored_quietly(RE, beamline, caplog):
    """Alignment scans and counts are no ptychography: nothing is reconstructed, recorded or logged above debug."""
    stage, det = beamline
    recon = Documents()
    callback = PtychoCallback(recon, preview_every=2)
    RE.subscribe(callback)
    with caplog.at_level(logging.DEBUG, logger="bluesky_ptycho"):
        (count,) = RE(bp.count([det], 3))
        (scan,) = RE(bp.scan([det], stage.x, 0, 0.4, 3))
    assert callback.wait(30)
    assert list(recon) == []
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text
    assert f"run {count} is not a ptychography scan" in caplog.text and scan in caplog.text


def test_constructor_overrides_supply_the_geometry(RE, beamline):
    stage, det = beamline
    recon = Documents()
    callback = PtychoCallback(
        recon,
        settings=ReconstructionSettings(iterations=3),
        preview_every=None,
        **ptycho_metadata(det, stage),
    )
    RE.subscribe(callback)
    RE(bp.list_scan([det], stage.x, [0, 0.2, 0.4, 0.6], stage.y, [0, 0.1, 0.2, 0.3]))
    assert callback.wait(60)
    assert recon.named("stop")[0]["exit_status"] == "success"
    assert recon.named("event")[-1]["data"]["n_frames"] == 4


def test_positions_outside_the_planned_scan_area_are_skipped_and_reported(RE, beamline):
    stage, det = beamline
    recon = Documents()
    metadata = {**ptycho_metadata(det, stage), "scan_area": [0, 0.6, 0, 0.3]}  # um
    callback = PtychoCallback(
        recon, settings=ReconstructionSettings(iterations=3), preview_every=None, **metadata
    )
    RE.subscribe(callback)
    RE(bp.list_scan([det], stage.x, [0, 0.2, 0.4, 0.6, 5.0], stage.y, [0, 0.1, 0.2, 0.3, 0.3]))
    assert callback.wait(60)
    (stop,) = recon.named("stop")
    assert stop["exit_status"] == "success"
    assert "outside the planned scan_area" in stop["reason"]
    assert recon.named("event")[-1]["data"]["n_frames"] == 4


def test_a_malformed_scan_area_fails_the_reconstruction_not_the_scan(RE, beamline):
    stage, det = beamline
    recon = Documents()
    callback = PtychoCallback(recon, preview_every=None, **ptycho_metadata(det, stage), scan_area=[0, 1])
    RE.subscribe(callback)
    RE(bp.list_scan([det], stage.x, [0, 0.2], stage.y, [0, 0.1]))
    (stop,) = recon.named("stop")
    assert (
        stop["exit_status"] == "fail"
        and "scan_area [0, 1] is not [x_min, x_max, y_min, y_max]" in stop["reason"]
    )


def scanned_into(catalog, RE, beamline, settings, n_points: int, preview_every: int) -> tuple[str, list]:
    """A live scan, raw and reconstruction written into ``catalog`` (every preview queued, unbounded): its uid and results."""
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(catalog, batch_size=10)
    stage, det = beamline
    results = []
    callback = PtychoCallback(
        writer,
        settings=settings,
        preview_every=preview_every,
        queue_previews=True,
        preview_seconds=math.inf,
        on_result=lambda raw_uid, result, final: results.append(result),
    )
    RE.subscribe(writer)
    RE.subscribe(callback)
    (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=n_points))
    assert callback.wait(120)
    return uid, results


def test_results_land_in_a_real_tiled_catalog(RE, beamline, tiled_server_factory):
    from tiled.client import from_uri

    server = tiled_server_factory()
    catalog = from_uri(server.uri)
    settings = ReconstructionSettings(iterations=30, intensity_correction=True, intensity_correction_start=10)
    uid, results = scanned_into(catalog, RE, beamline, settings, n_points=80, preview_every=40)
    assert catalog[uid]["primary"]["det_image"].read().shape == (80, 64, 64)
    (run,) = reconstructions_of(catalog, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    frames, iterations = (list(np.asarray(run["primary"][key].read())) for key in ("n_frames", "iteration"))
    assert_previews_then_final(frames, iterations, [40, 80], 20, 30)
    # the plan records its scan area and its number of points, so every object sits on one canvas
    # and the positions have one shape: regular arrays (images the web interface shows), not ragged ones
    objects = run["primary"]["object_phase"]
    assert type(objects).__name__ == "ArrayClient" and objects.shape[0] == len(frames)
    positions = run["primary"]["positions"]
    assert type(positions).__name__ == "ArrayClient" and positions.shape == (len(frames), 80, 2)
    assert np.isnan(positions[0]).any(axis=1).sum() == 40  # the first preview saw 40 frames
    scales = run["primary"]["frame_scales"]
    assert scales.shape == (len(frames), 80) and np.isnan(scales[0]).sum() == 40
    result = latest_final_reconstruction(catalog, uid)
    np.testing.assert_allclose(result.frame_scales, results[-1].frame_scales)
    assert result.object.dtype == np.complex64 and result.n_frames == 80
    assert result.object.shape == objects.shape[1:]
    py, px = result.pixel_size
    column, row = np.rint((np.asarray(results[-1].object_origin) - result.object_origin) / (px, py)).astype(
        int
    )
    rows, cols = results[-1].object.shape
    np.testing.assert_allclose(
        result.object[row : row + rows, column : column + cols], results[-1].object, rtol=1e-5, atol=1e-6
    )
    assert result.extra["final"] and result.iterations == iterations[-1]
    assert result.cost_history == pytest.approx(results[-1].cost_history)  # the convergence stream
    assert len(result.cost_history) == result.iterations  # every iteration's cost, previews' included
    # the final's own, not counting the previews recorded before it
    assert summarize(run).iterations == iterations[-1] - (iterations[-2] if len(iterations) > 1 else 0)
    with pytest.raises(LookupError):
        latest_final_reconstruction(catalog, "no-such-scan")


def test_a_probe_varying_through_the_scan_is_kept_in_the_catalog(RE, beamline, simple_tiled_server):
    """The final's eigen-probes and weights go into a stream of their own; previews (rPIE) have none."""
    from tiled.client import from_uri

    from bluesky_ptycho.catalog import result_from_run

    catalog = from_uri(simple_tiled_server().uri)
    settings = ReconstructionSettings.final(iterations=20, variable_probe_modes=2, variable_probe_start=5)
    uid, results = scanned_into(catalog, RE, beamline, settings, n_points=60, preview_every=30)
    final = latest_final_reconstruction(catalog, uid)
    assert final.eigen_probes.shape == (2, 64, 64) and final.eigen_weights.shape == (60, 2)
    np.testing.assert_allclose(final.eigen_probes, results[-1].eigen_probes, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(final.eigen_weights, results[-1].eigen_weights)
    assert np.abs(final.eigen_weights).max() > 0
    (run,) = reconstructions_of(catalog, uid)
    first = result_from_run(run, 0)
    assert not first.extra["final"] and first.eigen_probes is None and first.eigen_weights is None


@pytest.mark.parametrize("asset_docs", ["stream", "resource"])
def test_frames_from_hdf5_files_as_they_are_written(RE, tmp_path, asset_docs, simple_tiled_server):
    """The detector writes HDF5 files and emits StreamResource/StreamDatum or Resource/Datum."""
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    server = simple_tiled_server(readable_storage=[tmp_path / "frames"])
    catalog = from_uri(server.uri)
    writer = TiledWriter(catalog, batch_size=10)
    stage, det = simulated_beamline(seed=1, hdf5_directory=tmp_path / "frames", asset_docs=asset_docs)
    raw = Documents()
    callback = PtychoCallback(writer, settings=ReconstructionSettings(iterations=40), preview_every=40)
    for subscriber in (raw, writer, callback):
        RE.subscribe(subscriber)
    (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=80))
    assert callback.wait(120)
    names = {name for name, _ in raw}
    assert ({"stream_resource", "stream_datum"} if asset_docs == "stream" else {"resource", "datum"}) <= names
    (path,) = (tmp_path / "frames").glob("*.h5")
    stored = np.asarray(catalog[uid]["primary"]["det_image"].read()).reshape(80, 64, 64)
    import h5py

    with h5py.File(path, "r") as file:
        np.testing.assert_array_equal(stored, file["/entry/data/data"][()])
    (run,) = reconstructions_of(catalog, uid)
    assert run.metadata["stop"]["exit_status"] == "success" and run.metadata["stop"]["reason"] == ""
    result = latest_final_reconstruction(catalog, uid)
    assert result.n_frames == 80
    positions = np.array([[e["data"]["stage_x"], e["data"]["stage_y"]] for e in raw.named("event")]) * 1e-6
    assert object_error(result, det.sample.truth(positions)) <= 0.10
    server.close()


def test_a_truncated_external_file_is_reported_not_raised(RE, tmp_path):
    import h5py

    stage, det = simulated_beamline(seed=1, hdf5_directory=tmp_path / "frames", asset_docs="stream")
    raw = Documents()
    RE.subscribe(raw)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=30))
    (written,) = (tmp_path / "frames").glob("*.h5")
    truncated = tmp_path / "truncated.h5"
    with h5py.File(written, "r") as source, h5py.File(truncated, "w") as copy:
        copy["/entry/data/data"] = source["/entry/data/data"][:20]
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=3), preview_every=None)
    for name, doc in raw:
        if name == "stream_resource":
            doc = {**doc, "uri": truncated.as_uri()}
        callback(name, doc)
    assert callback.wait(60)
    final = recon.named("event")[-1]["data"]
    stop = recon.named("stop")[0]
    assert final["n_frames"] == 20 and stop["exit_status"] == "success"
    assert "holds 20 frames" in stop["reason"] and "10 positions without frames" in stop["reason"]
    assert "(and 9 more like it)" in stop["reason"] and stop["reason"].count("holds 20 frames") == 1


def test_live_view_shows_each_preview_and_is_silent_under_agg(RE, beamline):
    import matplotlib.pyplot as plt

    from bluesky_ptycho.callbacks import LiveReconstructionView

    stage, det = beamline
    silent, view = LiveReconstructionView(), LiveReconstructionView(enabled=True)
    recon = Documents()
    callback = PtychoCallback(
        [recon, silent, view], settings=ReconstructionSettings(iterations=10), preview_every=30
    )
    RE.subscribe(callback)
    before = set(plt.get_fignums())
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert callback.wait(60)
    assert not silent.enabled and silent.figure is None
    assert set(plt.get_fignums()) - before == {view.figure.number}
    final = recon.named("event")[-1]["data"]
    phase = view.images["phase"].get_array()
    np.testing.assert_array_equal(phase, final["object_phase"])
    # one point per iteration, from the run's convergence stream
    np.testing.assert_array_equal(view.cost_line.get_xdata(), np.arange(1, final["iteration"] + 1))
    plt.close(view.figure)


def test_a_worker_process_runner_continues_each_scan_from_its_previews(RE, beamline):
    from bluesky_ptycho.federation import LocalRunner

    stage, det = beamline
    recon = Documents()
    runner = LocalRunner(process=True)
    callback = PtychoCallback(
        recon,
        runner=runner,
        settings=ReconstructionSettings(iterations=20),
        preview_every=30,
        queue_previews=True,
        preview_seconds=math.inf,
    )
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert callback.wait(120)
    runner.shutdown()
    assert recon.named("stop")[0]["exit_status"] == "success", recon.named("stop")[0]["reason"]
    events = recon.named("event")
    frames, iterations = ([e["data"][key] for e in events] for key in ("n_frames", "iteration"))
    assert_previews_then_final(frames, iterations, [30, 60], 20, 20)
    assert recon.named("start")[0]["ptycho_solver"]["location"].endswith(":process")


def test_previews_are_fast_and_the_final_uses_the_final_defaults(RE, beamline):
    """Previews: rPIE, one mode; the final continues with LSQ-ML and three modes; one probe shape in the run."""
    stage, det = beamline
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings.final(iterations=20), preview_every=30)
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert callback.wait(120)
    assert recon.named("stop")[0]["exit_status"] == "success", recon.named("stop")[0]["reason"]
    assert recon.named("start")[0]["ptycho_solver"]["settings"]["algorithm"] == "lsqml"
    probes = [
        from_polar(e["data"]["probe_amplitude"], e["data"]["probe_phase"]) for e in recon.named("event")
    ]
    assert {p.shape for p in probes} == {(3, 64, 64)}
    *previews, final = probes
    assert all(np.all(p[1:] == 0) and np.any(p[0] != 0) for p in previews), "previews: one mode"
    assert np.all(np.sum(np.abs(final) ** 2, axis=(1, 2)) > 0), "the final has three modes"
