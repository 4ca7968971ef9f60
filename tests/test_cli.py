"""The ``bluesky-ptycho`` command: simulate, reconstruct, demo."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from bluesky_ptycho.cli import main
from bluesky_ptycho.io import read_cxi, read_result


def test_simulate_then_reconstruct(tmp_path):
    runner = CliRunner()
    scan = tmp_path / "scan.cxi"
    result = runner.invoke(main, ["simulate", str(scan), "--frames", "40", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert len(read_cxi(scan)) == 40
    result = runner.invoke(
        main, ["reconstruct", str(scan), "-a", "lsqml", "-n", "5", "--position-search-every", "7"]
    )
    assert result.exit_code == 0, result.output
    assert "R-factor" in result.output
    recon = read_result(tmp_path / "scan_recon.cxi")
    assert recon.iterations == 5 and recon.settings["algorithm"] == "lsqml"
    assert recon.settings["position_search_every"] == 7
    # refinement is on by default, with a quarter step (docs/imperfect-scans.md: decided on the grid)
    assert recon.settings["position_correction"] and recon.settings["position_step"] == 0.25
    assert (tmp_path / "scan_recon.png").read_bytes()[:4] == b"\x89PNG"


def test_reconstruct_reports_a_malformed_file(tmp_path):
    bad = tmp_path / "bad.cxi"
    bad.write_text("nothing")
    result = CliRunner().invoke(main, ["reconstruct", str(bad)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "not an HDF5" in result.output


def test_demo_runs_the_live_loop_into_the_catalog(tmp_path):
    from bluesky_ptycho.catalog import connect, reconstructions_of
    from bluesky_ptycho.catalog.server import close_embedded_servers

    catalog_dir = tmp_path / "catalog"
    args = ["demo", "--points", "60", "--preview-every", "30", "-n", "10"]
    result = CliRunner().invoke(
        main, [*args, "--catalog-dir", str(catalog_dir), "--output-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "preview" in result.output and "object error" in result.output
    assert (tmp_path / "demo_reconstruction.png").exists()
    raw_uid = re.search(r"latest_final_reconstruction\(connect\(.*\), '([-0-9a-f]{36})'\)", result.output)[1]
    client = connect(directory=catalog_dir)
    (run,) = reconstructions_of(client, raw_uid)
    assert f"catalog serve --catalog-dir {catalog_dir}" in result.output
    assert f"/ui/browse/runs/{run.metadata['start']['uid']}/primary" in result.output
    close_embedded_servers()


def test_reconstruct_an_archived_scan_then_list_and_show_it(tmp_path, tiled_server_factory):
    """`reconstruct --uid` replays a raw scan (frames in HDF5 files) from a real Tiled server."""
    import bluesky.plans as bp
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from bluesky_ptycho.catalog import latest_final_reconstruction, reconstructions_of
    from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline

    server = tiled_server_factory(readable_storage=[tmp_path / "frames"])
    catalog = from_uri(server.uri)
    RE = RunEngine()
    RE.subscribe(TiledWriter(catalog, batch_size=10))
    stage, det = simulated_beamline(hdf5_directory=tmp_path / "frames", asset_docs="resource")
    (raw_uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=50))
    runner = CliRunner()
    where = ["--catalog", server.uri]
    png = tmp_path / "recon.png"
    result = runner.invoke(main, ["reconstruct", "--uid", raw_uid[:8], *where, "-n", "15", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "success" in result.output and "50 frames" in result.output and png.exists()
    recon = latest_final_reconstruction(catalog, raw_uid)
    assert recon.n_frames == 50 and recon.iterations == 15

    listing = runner.invoke(main, ["catalog", "ls", *where])
    assert listing.exit_code == 0, listing.output
    assert raw_uid[:8] in listing.output and "success" in listing.output and "lsqml" in listing.output

    raw = runner.invoke(main, ["catalog", "ls", "--raw", *where])
    assert raw.exit_code == 0, raw.output
    assert (
        raw_uid[:8] in raw.output
        and "fermat_spiral" in raw.output
        and recon.extra["run_uid"][:8] not in raw.output
    )

    shown = tmp_path / "shown.png"
    result = runner.invoke(main, ["catalog", "show", raw_uid, *where, "--png", str(shown)])
    assert result.exit_code == 0, result.output
    assert recon.extra["run_uid"] in result.output and shown.read_bytes()[:4] == b"\x89PNG"

    short = runner.invoke(main, ["catalog", "show", recon.extra["run_uid"][:8], *where])
    assert short.exit_code == 0 and recon.extra["run_uid"] in short.output, "the 8 characters ls prints"
    short = runner.invoke(main, ["catalog", "show", raw_uid[:8], *where])
    assert short.exit_code == 0 and recon.extra["run_uid"] in short.output, "a raw scan's uid, shortened"

    result = runner.invoke(main, ["catalog", "show", "no-such-uid", *where])
    assert result.exit_code == 1 and "neither a reconstruction run" in result.output
    (count_uid,) = RE(bp.count([det], 2))  # an ordinary scan: nothing to reconstruct, said in one line
    result = runner.invoke(main, ["reconstruct", "--uid", count_uid, *where])
    assert result.exit_code == 1 and "is not a ptychography scan" in result.output
    assert "Traceback" not in result.output and reconstructions_of(catalog, count_uid) == []

    result = runner.invoke(main, ["reconstruct", "--uid", "no-such-uid", *where])
    assert result.exit_code == 1 and "no run 'no-such-uid'" in result.output
    server.stop()


def test_the_cli_runs_as_a_module():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bluesky_ptycho.cli", "globus", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m bluesky_ptycho.cli globus" in done.stdout


@pytest.mark.parametrize("tiled_server_factory", ["sqlite"], indirect=True)
def test_reconstruct_a_scan_whose_rows_were_written_twice(tmp_path, tiled_server_factory):
    """A row append that failed after the server stored it is retried by bluesky-tiled-plugins: its rows come twice."""
    import numpy as np
    import pyarrow
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from bluesky_ptycho.catalog import raw_scan_documents
    from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline

    server = tiled_server_factory()
    catalog = from_uri(server.uri)
    RE = RunEngine()
    RE.subscribe(TiledWriter(catalog, batch_size=10))
    stage, det = simulated_beamline(seed=1)
    (raw_uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=30))
    stream = catalog[raw_uid]["primary"]
    rows = stream.base["internal"]
    rows.append_partition(0, pyarrow.Table.from_pandas(rows.read().iloc[10:20], preserve_index=False))
    assert len(stream["time"].read()) == 40

    events = [doc for name, doc in raw_scan_documents(catalog[raw_uid]) if name == "event_page"]
    assert [n for page in events for n in page["seq_num"]] == list(range(1, 31))
    x = np.concatenate([page["data"]["stage_x"] for page in events])
    np.testing.assert_array_equal(x, np.asarray(stream["stage_x"].read())[:30])
    result = CliRunner().invoke(main, ["reconstruct", "--uid", raw_uid, "--catalog", server.uri, "-n", "3"])
    assert result.exit_code == 0 and "30 frames" in result.output, result.output


@pytest.mark.parametrize("tiled_server_factory", ["sqlite"], indirect=True)
def test_reconstruct_a_raw_detector_scan_cut_around_its_beam(tmp_path, tiled_server_factory):
    """`reconstruct --uid --frame-size --pixel-mask`: the archived frames of a gapped detector, cut as the profile would."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from bluesky_ptycho.catalog import find_reconstruction
    from bluesky_ptycho.sim import DetectorLayout, fermat_spiral_ptycho_scan, simulated_beamline

    server = tiled_server_factory(readable_storage=[tmp_path / "frames"])
    catalog = from_uri(server.uri)
    RE = RunEngine()
    RE.subscribe(TiledWriter(catalog, batch_size=10))
    layout = DetectorLayout(shape=(150, 140), module_shape=(70, 140), gap=(6, 0), beam_centre=(60, 75))
    stage, det = simulated_beamline(seed=1, hdf5_directory=tmp_path / "frames", layout=layout)
    (raw_uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=30))
    (master,) = (tmp_path / "frames").glob("*.h5")
    where = ["reconstruct", "--uid", raw_uid, "--catalog", server.uri, "-n", "3", "--frame-size", "64"]
    result = CliRunner().invoke(main, [*where, "--pixel-mask", str(master)])
    assert result.exit_code == 0 and "success" in result.output, result.output
    start = find_reconstruction(catalog, raw_uid).metadata["start"]
    assert start["ptycho_geometry"]["frame_shape"] == [64, 64]
    region = start["ptycho_detector_region"]
    assert region["rows"] == [28, 92] and region["masked_pixels"] >= 6 * 64, "the module gap at rows 70-75"
    missing = CliRunner().invoke(main, [*where, "--pixel-mask", f"{master}:/no/such/dataset"])
    assert missing.exit_code == 2 and "has no dataset /no/such/dataset" in missing.output
