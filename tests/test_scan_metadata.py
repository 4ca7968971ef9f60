"""Bluesky's own plans reconstruct, with keys from the profile and geometry from device configuration."""

from __future__ import annotations

import logging

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from click.testing import CliRunner
from tiled.client import from_uri

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import find_reconstruction, summarize
from bluesky_ptycho.cli import main
from bluesky_ptycho.scan_metadata import configuration_metadata
from bluesky_ptycho.sim import simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings
from bluesky_ptycho.solver.data import ELECTRON_VOLT

KEYS = {"data_key": "det_image", "x_key": "stage_x", "y_key": "stage_y", "position_unit": "um"}
SIGNALS = {
    "photon_energy_ev": "det_photon_energy",
    "detector_distance_m": "det_detector_distance",
    "detector_pixel_size_m": "det_pixel_size",
}


def spiral(stage, det):
    return bp.rel_spiral_fermat([det], stage.x, stage.y, 4, 4, 0.35, factor=1)


def run_plans(plans, **options):
    """Run ``plans`` (each a function of the stage and detector) with a callback that keeps its documents."""
    documents = []
    callback = PtychoCallback(
        lambda name, doc: documents.append((name, doc)),
        settings=ReconstructionSettings(iterations=5),
        preview_every=0,
        **options,
    )
    RE = RunEngine()
    RE.subscribe(callback)
    stage, det = simulated_beamline(seed=3)
    det.photon_energy.put(9100.0)
    for plan in plans:
        RE(plan(stage, det))
    assert callback.wait(120)
    return documents


def test_the_geometry_comes_from_the_detectors_configuration():
    documents = run_plans([spiral], **KEYS, configuration_signals=SIGNALS)
    starts = [doc for name, doc in documents if name == "start"]
    (stop,) = [doc for name, doc in documents if name == "stop"]
    assert stop["exit_status"] == "success", stop["reason"]
    geometry = starts[0]["ptycho_geometry"]
    assert geometry["wavelength"] == pytest.approx(6.62607015e-34 * 299792458 / (9100 * ELECTRON_VOLT))


def test_a_factor_converts_the_signals_unit():
    descriptor = {"configuration": {"mono": {"data": {"mono_energy": 9.1}}}}
    assert configuration_metadata(descriptor, {"photon_energy_ev": ("mono_energy", 1000.0)}) == {
        "photon_energy_ev": pytest.approx(9100.0)
    }
    with pytest.raises(ValueError, match="'data_key' is not read from device configuration"):
        configuration_metadata(descriptor, {"data_key": "mono_energy"})
    with pytest.raises(ValueError, match=r"'mono_energy' .* is 'high', not a number"):
        configuration_metadata(
            {"configuration": {"m": {"data": {"mono_energy": "high"}}}}, {"photon_energy_ev": "mono_energy"}
        )


def test_a_signal_the_devices_do_not_record_fails_the_scan_by_name(caplog):
    signals = {**SIGNALS, "photon_energy_ev": ("mono_energy", 1000.0)}
    with caplog.at_level(logging.ERROR):
        documents = run_plans([spiral], **KEYS, configuration_signals=signals)
    (stop,) = [doc for name, doc in documents if name == "stop"]
    assert stop["exit_status"] == "fail"
    assert "photon_energy_ev (configuration signal 'mono_energy' not recorded)" in stop["reason"]


def test_counts_and_alignment_scans_are_left_alone(caplog):
    def count(stage, det):
        return bp.count([det], 2)

    def alignment(stage, det):
        return bp.rel_scan([det], stage.x, -1, 1, 3)  # frames, but no y position

    with caplog.at_level(logging.WARNING):
        documents = run_plans([count, alignment], **KEYS, configuration_signals=SIGNALS)
    assert documents == [] and not caplog.records


def test_reconstruct_uid_takes_the_keys_as_options(tmp_path):
    from tiled.server import SimpleTiledServer

    server = SimpleTiledServer(tmp_path / "catalog")
    try:
        catalog = from_uri(server.uri)
        RE = RunEngine()
        RE.subscribe(TiledWriter(catalog, batch_size=1))
        stage, det = simulated_beamline(seed=3)
        (uid,) = RE(spiral(stage, det))
        base = [
            "reconstruct",
            "--uid",
            uid[:8],
            "--catalog",
            server.uri,
            "-n",
            "5",
            "--png",
            str(tmp_path / "r.png"),
        ]
        refused = CliRunner().invoke(main, base)
        assert refused.exit_code == 1 and "give --data-key, --x-key and --y-key" in refused.output
        options = [f"--{key.replace('_', '-')}={value}" for key, value in KEYS.items()]
        options += [f"--configuration-signal={key}={signal}" for key, signal in SIGNALS.items()]
        done = CliRunner().invoke(main, [*base, *options])
        assert done.exit_code == 0, done.output
        assert summarize(find_reconstruction(catalog, uid)).exit_status == "success"
        bad = CliRunner().invoke(main, [*base, "--configuration-signal", "energy"])
        assert bad.exit_code == 2 and "'energy' is not KEY=SIGNAL" in bad.output
    finally:
        server.close()
