"""Secrets (the Globus client secret, Tiled API keys) never reach documents, logs, output or error messages."""

from __future__ import annotations

import logging
import uuid

import responses
from click.testing import CliRunner
from globus_sdk.config import get_service_url
from helpers import Documents

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog.server import redact
from bluesky_ptycho.cli import main
from bluesky_ptycho.demo import run_live_demo
from bluesky_ptycho.solver import ReconstructionSettings

CLIENT_SECRET = "Zq9clientSECRETvalue42"
API_KEY = "tiledKEY0123456789abcdef"


def test_a_service_account_secret_is_never_printed_or_logged(tmp_path, monkeypatch, caplog):
    settings_file = tmp_path / "globus.toml"
    settings_file.write_text(f'client_id = "{uuid.uuid4()}"\nflow_id = "{uuid.uuid4()}"\n')
    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_SETTINGS", str(settings_file))
    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_CLIENT_SECRET", CLIENT_SECRET)
    caplog.set_level(logging.DEBUG)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        # the client-credentials login is refused (a revoked secret)
        http.add(
            "POST", f"{get_service_url('auth')}v2/oauth2/token", status=401, json={"error": "invalid_client"}
        )
        outputs = [
            CliRunner().invoke(main, ["globus", *command]).output
            for command in (["config"], ["status", str(uuid.uuid4())], ["whoami"])
        ]
        sent = [call.request for call in http.calls]
    assert sent, "the login was attempted"
    assert all(CLIENT_SECRET not in output for output in outputs), outputs
    assert CLIENT_SECRET not in caplog.text
    assert "Globus" in outputs[1]  # an error was reported, just not the secret


def test_a_tiled_api_key_is_masked_wherever_the_catalog_is_shown(tmp_path, caplog):
    uri = f"http://127.0.0.1:8000/api/v1?api_key={API_KEY}"
    assert redact(uri) == "http://127.0.0.1:8000/api/v1?api_key=****"
    caplog.set_level(logging.DEBUG)
    from io import StringIO

    from rich.console import Console
    from tiled.server import SimpleTiledServer

    server = SimpleTiledServer(tmp_path / "catalog", api_key=API_KEY)
    try:
        out = StringIO()
        uid = run_live_demo(
            ReconstructionSettings(iterations=5),
            n_points=40,
            preview_every=0,
            catalog=server.uri,
            output_dir=tmp_path,
            console=Console(file=out, width=200),
        )
    finally:
        server.close()
    assert uid in out.getvalue() and API_KEY not in out.getvalue()
    assert API_KEY not in caplog.text


def test_reconstruction_documents_carry_no_secret(monkeypatch):
    from bluesky import RunEngine

    from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline

    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TILED_API_KEY", API_KEY)
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=3), preview_every=None)
    RE = RunEngine()
    RE.subscribe(callback)
    stage, det = simulated_beamline(seed=0)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=30))
    assert callback.wait(60)
    text = repr(recon)
    assert CLIENT_SECRET not in text and API_KEY not in text
