"""Probe reuse as beamlines work: from a result file, a catalog uid, or the newest matching reconstruction."""

from __future__ import annotations

import socket
import time

import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from click.testing import CliRunner
from tiled.client import from_uri

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import latest_probe_for, reconstructions_of
from bluesky_ptycho.cli import main
from bluesky_ptycho.io import read_result, write_cxi
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings
from bluesky_ptycho.solver.data import ELECTRON_VOLT, Geometry
from bluesky_ptycho.solver.simulate import realistic


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two scans of one beamline setting, and one at another energy, as CXI files."""
    directory = tmp_path_factory.mktemp("scans")
    first = realistic(1e-3, photons=1e5, n_frames=120, frame_size=64, seed=1)
    second = realistic(1e-3, photons=1e5, n_frames=120, frame_size=64, seed=2)
    other = realistic(1e-3, photons=1e5, n_frames=120, frame_size=64, seed=2, energy=11.5e3 * ELECTRON_VOLT)
    return {
        name: write_cxi(directory / f"{name}.cxi", sim.data)
        for name, sim in [("first", first), ("second", second), ("other", other)]
    }


def test_reconstruct_prints_the_measured_defocus_and_records_the_geometry(scans):
    result = CliRunner().invoke(main, ["reconstruct", str(scans["first"]), "-n", "10"])
    assert result.exit_code == 0, result.output
    assert "initial probe: defocus +" in result.output and "(measured from the data)" in result.output
    recon = read_result(scans["first"].with_name("first_recon.cxi"))
    assert recon.extra["probe_source"] == "defocus estimate"
    assert recon.geometry is not None and recon.geometry.frame_shape == (64, 64)


def test_the_next_scan_starts_from_the_previous_probe(scans):
    previous = scans["first"].with_name("first_recon.cxi")
    if not previous.exists():
        CliRunner().invoke(main, ["reconstruct", str(scans["first"]), "-n", "10"])
    result = CliRunner().invoke(
        main, ["reconstruct", str(scans["second"]), "-n", "10", "--probe", str(previous)]
    )
    assert result.exit_code == 0, result.output
    assert f"initial probe: file {previous}" in result.output
    assert (
        read_result(scans["second"].with_name("second_recon.cxi")).extra["probe_source"] == f"file {previous}"
    )


def test_a_probe_of_another_energy_is_refused_naming_the_mismatch(scans):
    previous = scans["first"].with_name("first_recon.cxi")
    if not previous.exists():
        CliRunner().invoke(main, ["reconstruct", str(scans["first"]), "-n", "10"])
    result = CliRunner().invoke(main, ["reconstruct", str(scans["other"]), "--probe", str(previous)])
    assert result.exit_code == 1
    assert "does not fit this scan: photon energy 8000 eV against 11500 eV" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--iterations", "0", "0 is not in the range x>=1"),
        ("--iterations", "-5", "-5 is not in the range x>=1"),
        ("--modes", "0", "0 is not in the range 1<=x<=12"),
        ("--probe-defocus", "far", "'far' is not 'auto', 'none' or a distance"),
        ("--probe-defocus", "3", "within +-1 m, got 3.0"),
        ("--batch-size", "0", "batch_size must be >= 1, got 0"),
        ("--relaxation", "0.5", "--relaxation is not an option of lsqml (it is one of dm)"),
    ],
)
def test_bad_options_give_one_line(scans, option, value, message):
    result = CliRunner().invoke(main, ["reconstruct", str(scans["first"]), option, value])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1.2mm", "defocus +1.200 mm (given)"),
        ("800um", "defocus +0.800 mm (given)"),
        ("2e-3", "defocus +2.000 mm (given)"),
        ("-1.1mm", "defocus +1.100 mm (the given sign was corrected"),
    ],
)
def test_defocus_with_units(scans, given, expected):
    result = CliRunner().invoke(
        main, ["reconstruct", str(scans["first"]), "-n", "2", "--probe-defocus", given]
    )
    assert result.exit_code == 0, result.output
    assert f"initial probe: {expected}" in " ".join(result.output.split())


def test_live_scans_start_from_the_latest_matching_probe(tmp_path, tiled_server_factory):
    server = tiled_server_factory()
    catalog = from_uri(server.uri)
    RE = RunEngine()
    RE.subscribe(TiledWriter(catalog, batch_size=10))
    stage, det = simulated_beamline(seed=1)
    settings = ReconstructionSettings(iterations=10)

    def scan_with(callback):
        token = RE.subscribe(callback)
        (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=40))
        assert callback.wait(120)
        RE.unsubscribe(token)
        (run,) = reconstructions_of(catalog, uid)
        return run

    def latest():
        writer = TiledWriter(catalog, batch_size=1)
        return PtychoCallback(
            writer, settings=settings, preview_every=None, initial_probe="latest", catalog=catalog
        )

    first = scan_with(latest())  # an empty catalog: refused, built from the frames
    start, stop = first.metadata["start"], first.metadata["stop"]
    assert stop["exit_status"] == "success" and "initial probe refused" in stop["reason"]
    assert start["ptycho_probe_source"] == "defocus estimate" and start["ptycho_geometry"]["frame_shape"] == [
        64,
        64,
    ]

    second = scan_with(latest())
    assert second.metadata["start"]["ptycho_probe_source"] == f"reconstruction {start['uid']}"
    assert second.metadata["stop"]["reason"] == ""

    other_energy = PtychoCallback(
        TiledWriter(catalog, batch_size=1),
        settings=settings,
        preview_every=None,
        initial_probe="latest",
        catalog=catalog,
        photon_energy_ev=9000.0,
    )
    third = scan_with(other_energy)
    reason = third.metadata["stop"]["reason"]
    assert "initial probe refused" in reason and "photon energy 8000 eV against 9000 eV" in reason
    assert third.metadata["start"]["ptycho_probe_source"] == "defocus estimate"

    # the lookup must answer within PROBE_LOOKUP_WAIT from a remote catalog: a run of another geometry is
    # passed on its metadata alone, the one found is read a part at a time (key by key took 71 requests)
    hooks = catalog.context.http_client.event_hooks["request"]
    sent: list = []
    hooks.append(sent.append)
    found = latest_probe_for(catalog, Geometry.from_dict(second.metadata["start"]["ptycho_geometry"]))
    hooks.remove(sent.append)
    assert found.extra["run_uid"] == second.metadata["start"]["uid"]
    assert len(sent) <= 16 and not [r for r in sent if third.metadata["start"]["uid"] in str(r.url)]

    cli = CliRunner().invoke(
        main,
        [
            "reconstruct",
            "--uid",
            second.metadata["start"]["raw_uid"],
            "--catalog",
            server.uri,
            "-n",
            "5",
            "--probe-from",
            start["uid"],
            "--png",
            str(tmp_path / "r.png"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    newest = reconstructions_of(catalog, second.metadata["start"]["raw_uid"])[-1]
    assert newest.metadata["start"]["ptycho_probe_source"] == f"reconstruction {start['uid']}"
    server.stop()


def test_latest_needs_a_catalog():
    with pytest.raises(ValueError, match="needs the catalog"):
        PtychoCallback(initial_probe="latest")


def test_a_catalog_that_does_not_answer_never_holds_up_the_runengine(
    tmp_path, tiled_server_factory, monkeypatch
):
    """The probe lookup hangs (the catalog's port accepts and never answers): the scan goes on, the final waits."""
    import tiled.client.utils
    from helpers import Documents

    from bluesky_ptycho.callbacks import scan as scan_module

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 1)
    server = tiled_server_factory()
    catalog = from_uri(server.uri)
    server.stop()
    silent = socket.socket()  # where the catalog was: connections are taken, requests never answered
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", server.port))
    silent.listen(16)
    recon = Documents()
    callback = PtychoCallback(
        recon,
        settings=ReconstructionSettings(iterations=5),
        preview_every=10,
        initial_probe="latest",
        catalog=catalog,
    )
    RE = RunEngine()
    RE.subscribe(callback)
    stage, det = simulated_beamline(seed=1)
    try:
        start = time.monotonic()
        RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
        scanning = time.monotonic() - start
        assert callback.wait(120)
    finally:
        silent.close()  # the lookup's request fails now
    assert scanning < scan_module.PROBE_LOOKUP_WAIT  # no document waited for the lookup
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success"
    assert (
        "initial probe refused, built from the frames instead: the catalog did not answer" in stop["reason"]
    )
    assert recon.named("event")[-1]["data"]["n_frames"] == 60
