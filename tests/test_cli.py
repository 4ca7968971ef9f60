"""The ``bluesky-ptycho`` command: simulate, reconstruct, demo."""

from __future__ import annotations

from click.testing import CliRunner

from bluesky_ptycho.cli import main
from bluesky_ptycho.io import read_cxi, read_result


def test_simulate_then_reconstruct(tmp_path):
    runner = CliRunner()
    scan = tmp_path / "scan.cxi"
    result = runner.invoke(main, ["simulate", str(scan), "--frames", "40", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert len(read_cxi(scan)) == 40
    result = runner.invoke(main, ["reconstruct", str(scan), "-a", "lsqml", "-n", "5"])
    assert result.exit_code == 0, result.output
    assert "R-factor" in result.output
    recon = read_result(tmp_path / "scan_recon.cxi")
    assert recon.iterations == 5 and recon.settings["algorithm"] == "lsqml"
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
    raw_uid = result.output.split("connect(")[-1].split("'")[-2]
    client = connect(directory=catalog_dir)
    assert len(reconstructions_of(client, raw_uid)) == 1
    close_embedded_servers()
