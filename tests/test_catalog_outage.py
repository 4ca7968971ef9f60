"""The Tiled server stops in the middle of a scan and comes back: nothing is lost, the RunEngine never notices."""

from __future__ import annotations

import time
import urllib.parse

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import pytest
from bluesky import RunEngine
from bluesky.utils import single_gen
from click.testing import CliRunner
from tiled.client import from_uri
from tiled.server import SimpleTiledServer

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import latest_final_reconstruction, reconstructions_of
from bluesky_ptycho.catalog.spool import DocumentSpool, DurableCatalogWriter
from bluesky_ptycho.cli import main
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings

API_KEY = "outagetestkey"


@pytest.fixture(autouse=True)
def few_client_retries(monkeypatch):
    """Tiled's client retries a failed request for up to 45 s; keep the test short."""
    import tiled.client.utils

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 1)


class Server:
    """A real Tiled server that can be stopped and started again on the same port and directory."""

    def __init__(self, directory):
        self.directory = directory
        self.port = 0
        self.start()

    def start(self):
        self.server = SimpleTiledServer(self.directory, api_key=API_KEY, port=self.port)
        self.port = self.server.port
        self.uri = self.server.uri

    def stop(self):
        self.server.close()


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "catalog")
    yield server
    server.stop()


def stop_server_after(plan, n_events: int, server: Server):
    """``plan``, with the catalog server shut down right after its ``n_events``-th event."""
    saved = 0

    def insert_outage(msg):
        nonlocal saved
        if msg.command == "save":
            saved += 1
            if saved == n_events:
                return single_gen(msg), outage()
        return None, None

    def outage():
        server.stop()
        yield from bps.null()

    return bpp.plan_mutator(plan, insert_outage)


def scan_through_an_outage(server: Server, tmp_path, retry_interval: float):
    catalog = from_uri(server.uri)
    writer = DurableCatalogWriter(catalog, tmp_path / "spool", retry_interval=retry_interval, batch_size=1)
    callback = PtychoCallback(writer, settings=ReconstructionSettings(iterations=20), preview_every=20)
    RE = RunEngine()
    RE.subscribe(writer)
    RE.subscribe(callback)
    stage, det = simulated_beamline(seed=1)
    started = time.perf_counter()
    (uid,) = RE(stop_server_after(fermat_spiral_ptycho_scan(det, stage, n_points=60), 30, server))
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


def test_the_embedded_server_listens_on_loopback_only(server):
    assert urllib.parse.urlparse(server.uri).hostname == "127.0.0.1"
