"""Tiled's web interface shows a reconstruction of the embedded catalog: a picture in headless Chromium.

Debian's chromium (``.ci/run`` installs it) is driven by playwright, whose own
browser download does not work here.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import reconstructing_run_engine

from bluesky_ptycho.catalog import connect, reconstructions_of
from bluesky_ptycho.catalog.server import close_embedded_servers, embedded_server
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


@pytest.fixture
def reconstruction(tmp_path):
    directory = tmp_path / "catalog"
    catalog = connect(directory=directory)
    RE, ptycho = reconstructing_run_engine(catalog, iterations=20)
    stage, det = simulated_beamline(seed=2)
    (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=40))
    assert ptycho.wait(120)
    (run,) = reconstructions_of(catalog, uid)
    yield embedded_server(directory), run.metadata["start"]["uid"]
    close_embedded_servers()


@pytest.mark.parametrize("field", ["object_phase", "object_amplitude"])
def test_the_web_interface_draws_the_object(reconstruction, field, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from PIL import Image

    address, uid = reconstruction
    base = address.web_ui_link.split("?")[0]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(address.web_ui_link)  # the link the server prints: it logs the browser in
            page.goto(f"{base}/ui/browse/runs/{uid}/primary/{field}")
            canvas = page.locator("canvas").first
            canvas.wait_for(timeout=30_000)
            page.wait_for_timeout(500)  # the image is drawn once its data arrived
            page.screenshot(path=tmp_path / f"{field}.png")
            picture = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
        finally:
            browser.close()
    assert field in page.url
    levels = picture.getcolors(maxcolors=256 * 256)
    assert levels is not None and len(levels) > 20, "the canvas is blank: no image was drawn"
