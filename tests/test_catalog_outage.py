"""The Tiled server stops in the middle of a scan and comes back: nothing is lost, the RunEngine never notices."""

from __future__ import annotations

import time
import urllib.parse

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine
from click.testing import CliRunner
from helpers import after_event
from tiled.client import from_uri

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import latest_final_reconstruction, reconstructions_of
from bluesky_ptycho.catalog.spool import DocumentSpool, DurableCatalogWriter
from bluesky_ptycho.cli import main
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


@pytest.fixture(autouse=True)
def few_client_retries(monkeypatch):
    """Tiled's client retries a failed request for up to 45 s; keep the test short."""
    import tiled.client.utils

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 1)


@pytest.fixture
def server(tiled_server_factory):
    return tiled_server_factory()


def outage(server):
    """A plan step that shuts the catalog server down."""
    server.stop()
    yield from bps.null()


def scan_through_an_outage(server, tmp_path, retry_interval: float):
    catalog = from_uri(server.uri)
    writer = DurableCatalogWriter(catalog, tmp_path / "spool", retry_interval=retry_interval, batch_size=1)
    callback = PtychoCallback(writer, settings=ReconstructionSettings(iterations=20), preview_every=20)
    RE = RunEngine()
    RE.subscribe(writer)
    RE.subscribe(callback)
    stage, det = simulated_beamline(seed=1)
    started = time.perf_counter()
    (uid,) = RE(after_event(fermat_spiral_ptycho_scan(det, stage, n_points=60), 30, lambda: outage(server)))
    scan_seconds = time.perf_counter() - started
    assert callback.wait(120)
    assert writer.flush(120)
    return catalog, writer, uid, scan_seconds


def test_runs_written_during_an_outage_reach_the_catalog_when_it_returns(server, tmp_path):
    catalog, writer, uid, scan_seconds = scan_through_an_outage(server, tmp_path, retry_interval=0.5)
    assert scan_seconds < 30  # the RunEngine did not wait for the catalog
    assert len(writer.pending_runs) == 2  # the raw scan and its reconstruction, complete, on disk
    server.start()
    deadline = time.monotonic() + 60
    while writer.pending_runs and time.monotonic() < deadline:
        time.sleep(0.2)
    assert writer.pending_runs == []
    catalog = from_uri(server.uri)
    raw = catalog[uid]
    assert raw.metadata["stop"]["exit_status"] == "success"
    assert raw["primary"]["det_image"].read().shape[0] == 60  # every frame, also those after the outage
    (recon,) = reconstructions_of(catalog, uid)
    assert recon.metadata["stop"]["exit_status"] == "success"
    assert latest_final_reconstruction(catalog, uid).n_frames == 60
    writer.close()


def test_catalog_replay_writes_the_spooled_runs(server, tmp_path):
    catalog, writer, uid, _ = scan_through_an_outage(server, tmp_path, retry_interval=3600)
    writer.close()
    assert len(DocumentSpool(tmp_path / "spool").runs()) == 2
    server.start()
    result = CliRunner().invoke(
        main, ["catalog", "replay", "--catalog", server.uri, "--spool-dir", str(tmp_path / "spool")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("wrote ") == 2 and uid in result.output
    assert DocumentSpool(tmp_path / "spool").runs() == []
    catalog = from_uri(server.uri)
    assert catalog[uid]["primary"]["det_image"].read().shape[0] == 60
    assert latest_final_reconstruction(catalog, uid).n_frames == 60


def test_the_embedded_server_listens_on_loopback_only(tmp_path):
    import psutil

    from bluesky_ptycho.catalog import embedded_server

    server = embedded_server(tmp_path / "embedded")
    assert urllib.parse.urlparse(server.uri).hostname == "127.0.0.1"
    listening = [
        c.laddr.ip
        for c in psutil.Process(server.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
    ]
    assert listening == ["127.0.0.1"]


def test_replay_recovers_a_run_whose_session_ended_mid_scan(server, tmp_path):
    """A crashed session leaves a run without its stop document in the spool; --incomplete writes it, as failed."""
    spool = DocumentSpool(tmp_path / "spool")
    documents = []
    RE = RunEngine()
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    stage, det = simulated_beamline(seed=1)
    (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=12))
    for name, doc in documents:
        if name != "stop":  # the session died before the stop document
            spool.append(uid, name, doc)
    replay = ["catalog", "replay", "--catalog", server.uri, "--spool-dir", str(spool.directory)]
    result = CliRunner().invoke(main, replay)
    assert result.exit_code == 0, result.output
    assert "1 run(s) without a stop document" in result.output and "--incomplete" in result.output
    assert spool.runs() == [uid]
    result = CliRunner().invoke(main, [*replay, "--incomplete"])
    assert result.exit_code == 0, result.output
    assert f"wrote {uid}" in result.output and spool.runs() == []
    run = from_uri(server.uri)[uid]
    assert run.metadata["stop"]["exit_status"] == "fail"
    assert "session ended before the run's stop document" in run.metadata["stop"]["reason"]
    assert run.metadata["stop"]["num_events"] == {"primary": 12}
    assert run["primary"]["det_image"].read().shape[0] == 12
