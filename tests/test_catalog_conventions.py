"""The embedded catalog follows databroker's conventions: the lookups and queries users type every day."""

from __future__ import annotations

import time

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky_tiled_plugins import CatalogOfBlueskyRuns
from bluesky_tiled_plugins.queries import PartialUID, ScanID, TimeRange
from helpers import reconstructing_run_engine
from ophyd.sim import det
from tiled.client import from_uri

from bluesky_ptycho.catalog import PLAN_NAME, latest_final_reconstruction
from bluesky_ptycho.catalog.embedded import RUNS
from bluesky_ptycho.catalog.server import close_embedded_servers, connect, embedded_server
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """An alignment count (scan 1), a ptychography scan (scan 2) and its final reconstruction."""
    directory = tmp_path_factory.mktemp("catalog")
    catalog = connect(directory=directory)
    RE, ptycho = reconstructing_run_engine(catalog, iterations=5)
    started = time.time()
    (count_uid,) = RE(bp.count([det], 3))
    stage, detector = simulated_beamline(seed=1)
    (ptycho_uid,) = RE(fermat_spiral_ptycho_scan(detector, stage, n_points=20))
    assert ptycho.wait(120)
    yield directory, catalog, count_uid, ptycho_uid, started
    close_embedded_servers()


def test_the_embedded_catalog_is_a_catalog_of_bluesky_runs(scans):
    directory, catalog, *_ = scans
    assert isinstance(catalog, CatalogOfBlueskyRuns) and catalog.is_sql
    # any Tiled client gets the same, from the spec the server reports
    assert isinstance(from_uri(embedded_server(directory).uri)[RUNS], CatalogOfBlueskyRuns)


def test_lookups_by_scan_id_partial_uid_and_recency(scans):
    _, catalog, count_uid, ptycho_uid, _ = scans
    assert catalog[1].start["uid"] == count_uid
    assert catalog[2].start["uid"] == ptycho_uid  # a reconstruction has raw_scan_id, not scan_id
    assert catalog[ptycho_uid[:8]].start["uid"] == ptycho_uid
    newest = catalog[-1].start  # the newest run: the scan's final reconstruction
    assert newest["plan_name"] == PLAN_NAME and newest["raw_uid"] == ptycho_uid
    assert latest_final_reconstruction(catalog, ptycho_uid).n_frames == 20


def test_bluesky_queries(scans):
    _, catalog, count_uid, ptycho_uid, started = scans
    assert list(catalog.search(ScanID(1))) == [count_uid]
    assert list(catalog.search(PartialUID(ptycho_uid[:10]))) == [ptycho_uid]
    assert len(catalog.search(TimeRange(since=started))) == 3
    assert len(catalog.search(TimeRange(until=started))) == 0


def test_v2_and_databroker_v1(scans):
    _, catalog, count_uid, _, _ = scans
    run = catalog.v2[1]
    assert run.metadata["start"]["uid"] == count_uid
    assert run.primary.read()["det"].shape == (3,)
    db = catalog.v1
    header = db[1]
    assert header.start["uid"] == count_uid
    assert list(header.table()["det"]) == list(run.primary.read()["det"].values)


def test_object_and_probe_display_as_images_through_tiled(scans):
    """Tiled's image endpoint renders the stored amplitude and phase as PNG, as its web interface does."""
    import io

    import httpx
    from PIL import Image

    directory, catalog, *_ = scans
    primary = catalog.v3[-1]["primary"]
    api_key = embedded_server(directory).uri.split("api_key=")[1]
    last = primary["object_phase"].shape[0] - 1
    for field, index in (
        ("object_phase", f"{last}"),
        ("object_amplitude", f"{last}"),
        ("probe_amplitude", f"{last},0"),
    ):
        array = primary[field]
        link = array.item["links"]["full"]
        reply = httpx.get(
            link,
            params={"slice": index, "format": "image/png"},
            headers={"Authorization": f"Apikey {api_key}"},
            trust_env=False,
        )
        assert reply.status_code == 200, reply.text
        image = Image.open(io.BytesIO(reply.content))
        assert image.format == "PNG" and image.size == tuple(reversed(array.shape[-2:]))
        assert len(np.unique(np.asarray(image))) > 10  # a picture, not a flat field
