"""Previews keep to a time budget, newest frames first, and the record says what each covered."""

from __future__ import annotations

import itertools

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from helpers import Documents, after_event

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.callbacks import scan as scan_module
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor
from bluesky_ptycho.solver.simulate import simulate

NO_TIME = 1e-9  # one iteration, one batch
ALL_THE_TIME = 1e9


@pytest.fixture(scope="module")
def data():
    return simulate(n_frames=600, frame_size=32, seed=5).data


def coverage(reconstructor: Reconstructor) -> dict:
    return reconstructor.result().extra["preview"]


def test_a_preview_visits_the_new_frames_first_then_what_its_time_allows(data):
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(iterations=50))
    reconstructor.add_frames(data.frames[:400], data.positions[:400]).preview(ALL_THE_TIME, 3)
    first = coverage(reconstructor)
    assert (first["frames_new"], first["frames_visited"], first["iterations"]) == (400, 400, 3)
    assert first["seconds_allowed"] == ALL_THE_TIME and 0 < first["seconds"]

    reconstructor.add_frames(data.frames[400:430], data.positions[400:430]).preview(NO_TIME, 3)
    second = coverage(reconstructor)
    # no time left: one iteration of one batch (64 frames), the 30 new ones and 34 of the others
    assert (second["frames_new"], second["frames_visited"], second["iterations"]) == (30, 64, 1)

    reconstructor.add_frames(data.frames[430:], data.positions[430:]).preview(NO_TIME, 3)
    third = coverage(reconstructor)
    assert (third["frames_new"], third["frames_visited"], third["iterations"]) == (170, 64, 1)
    assert len(reconstructor.cost_history) == 5 and np.all(np.isfinite(reconstructor.cost_history))

    reconstructor.preview(ALL_THE_TIME, 2)  # time for everything: every frame, every iteration
    assert (coverage(reconstructor)["frames_visited"], coverage(reconstructor)["iterations"]) == (600, 2)
    reconstructor.iterate(2)  # an iteration as a final does it: no preview's coverage in its result
    assert "preview" not in reconstructor.result().extra


def test_time_spent_taking_a_previews_frames_in_counts_against_its_budget(data):
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(probe_defocus=None))
    reconstructor.add_frames(data.frames[:400], data.positions[:400]).prepare()
    first = coverage(reconstructor.preview(1e3, 3, spent=1e3 - NO_TIME))
    assert (first["frames_visited"], first["iterations"]) == (64, 1)  # as if it had no time at all
    assert first["intake_seconds"] == 1e3 - NO_TIME


def test_difference_map_previews_visit_every_frame(data):
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(algorithm="dm"))
    reconstructor.add_frames(data.frames[:300], data.positions[:300]).preview(ALL_THE_TIME, 2)
    reconstructor.add_frames(data.frames[300:], data.positions[300:]).preview(NO_TIME, 4)
    assert coverage(reconstructor) | {"seconds": 0} == {
        "frames_new": 300,
        "frames_visited": 600,
        "iterations": 1,
        "seconds": 0,
        "intake_seconds": 0.0,
        "seconds_allowed": NO_TIME,
    }


def test_live_previews_record_what_they_covered():
    """With no time to spare, each preview is one batch; the final visits every frame and continues from them."""
    RE = RunEngine()
    stage, det = simulated_beamline(seed=1)
    recon = Documents()
    callback = PtychoCallback(
        recon,
        settings=ReconstructionSettings(iterations=10),
        preview_every=40,
        queue_previews=True,
        preview_seconds=NO_TIME,
    )
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=160))
    assert callback.wait(120)
    assert recon.named("stop")[0]["exit_status"] == "success"
    events = [e["data"] for e in recon.named("event")]
    *previews, final = events
    assert previews, "at least the first preview finished before the scan's stop"
    assert previews[0]["frames_visited"] == 40  # the first: its new frames, all of them
    assert all(p["frames_visited"] == 64 for p in previews[1:])  # later: one batch, the 40 new ones first
    assert all(b["iteration"] - a["iteration"] == 1 for a, b in itertools.pairwise(previews))
    assert final["final"] and final["frames_visited"] == final["n_frames"] == 160
    assert final["iteration"] >= previews[-1]["iteration"] + 10


@pytest.mark.parametrize("preview_every", [80, None], ids=["previews", "final only"])
def test_live_frames_go_to_the_runner_as_they_arrive_and_only_results_are_recorded(
    monkeypatch, preview_every
):
    """Frames-only jobs between previews store the frames as they come; they record nothing themselves."""
    monkeypatch.setattr(scan_module, "INTAKE_FRAMES", 20)
    RE = RunEngine()
    stage, det = simulated_beamline(seed=1)
    recon, results = Documents(), []
    callback = PtychoCallback(
        recon,
        runner=LocalRunner(process=True),
        settings=ReconstructionSettings(iterations=3),
        preview_every=preview_every,
        on_result=lambda uid, result, final: results.append(result),
    )
    RE.subscribe(callback)
    # a pause after the 100th frame: time for the worker to start and the first preview to end
    RE(after_event(fermat_spiral_ptycho_scan(det, stage, n_points=160), 100, lambda: bps.sleep(8)))
    assert callback.wait(120)
    callback.runner.shutdown()
    *previews, final = results
    assert len(recon.named("event")) == len(results) and recon.named("stop")[0]["exit_status"] == "success"
    assert final.n_frames == 160 and "preview" not in final.extra
    if preview_every is None:
        assert not previews and final.iterations == 3  # the frames sent ahead were only stored
        return
    assert previews, "at least the first preview finished before the scan's stop"
    first = previews[0].extra["preview"]
    assert first["frames_new"] >= 80 and first["intake_seconds"] > 0  # its first frames were stored ahead


def test_preview_seconds_must_be_positive():
    with pytest.raises(ValueError, match="preview_seconds"):
        PtychoCallback(preview_seconds=0)


def test_the_first_preview_is_a_quick_look_and_later_ones_keep_to_their_share():
    """By default the scan's first preview gets PREVIEW_MIN_SECONDS (taking its frames in counts); none gets less."""
    from bluesky_ptycho.callbacks.scan import PREVIEW_MIN_SECONDS

    RE = RunEngine()
    stage, det = simulated_beamline(seed=1)
    results = []
    callback = PtychoCallback(
        settings=ReconstructionSettings(iterations=2),
        preview_every=40,
        queue_previews=True,
        on_result=lambda uid, result, final: results.append(result),
    )
    RE.subscribe(callback)
    # the scan pauses after its 50th and 80th frames: the second preview's frames take 4 s to arrive
    plan = after_event(fermat_spiral_ptycho_scan(det, stage, n_points=120), 50, lambda: bps.sleep(4))
    RE(after_event(plan, 80, lambda: bps.sleep(4)))
    assert callback.wait(120)
    *previews, final = results
    allowed = [p.extra["preview"]["seconds_allowed"] for p in previews]
    assert len(allowed) == 2, "the third preview ends after the stop: superseded by the final"
    assert allowed[0] == PREVIEW_MIN_SECONDS
    assert allowed[1] > 1.2 * PREVIEW_MIN_SECONDS  # 0.6 of 4 s, less the first one's overrun
    assert "preview" not in final.extra


def test_a_canvas_grown_job_by_job_is_copied_a_few_times_and_its_results_show_what_the_scan_covers(data):
    """Frames sent ahead a few at a time grow the canvas with room to spare (each growth copies all of it);
    the result shows the scanned area, as a reconstruction given every frame at once does."""
    at_once = Reconstructor(data.geometry, ReconstructionSettings(probe_defocus=None))
    at_once.add_frames(data.frames, data.positions)
    grown = Reconstructor(data.geometry, ReconstructionSettings(probe_defocus=None))
    canvases = set()
    for first in range(0, 600, 10):
        grown.add_frames(data.frames[first : first + 10], data.positions[first : first + 10]).prepare()
        canvases.add(grown.state.object.shape)
    assert len(canvases) <= 16  # of 60 jobs (25 canvases when each grew by what it needed)
    whole, result = at_once.result(), grown.result()
    assert grown.state.object.size > result.object.size  # the room to spare is not shown
    # the same area, on a pixel grid anchored at the first frames' corner instead of all frames'
    assert np.abs(np.subtract(result.object.shape, whole.object.shape)).max() <= 2
    assert np.abs(np.subtract(result.object_origin, whole.object_origin)).max() <= max(result.pixel_size)
