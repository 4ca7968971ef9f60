"""CatalogWriter: bluesky-tiled-plugins' TiledWriter, writing an event page in one request."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import compose_run
from tiled.client import from_uri

from bluesky_ptycho.catalog import PLAN_NAME
from bluesky_ptycho.catalog.tiled_writer import CatalogWriter

KEYS = {
    "iteration": {"source": "test", "dtype": "integer", "shape": []},
    "cost": {"source": "test", "dtype": "number", "shape": []},
}


@pytest.fixture
def catalog(tiled_server_factory):
    return from_uri(tiled_server_factory().uri)


def table_writes(catalog) -> list[str]:
    """The URLs of the requests that write rows of a stream's table, from now on."""
    writes: list[str] = []

    def record(request) -> None:
        if request.method == "PATCH" and "/table/" in request.url.path:
            writes.append(str(request.url))

    catalog.context.http_client.event_hooks["request"].append(record)
    return writes


def page(descriptor, first: int, n: int) -> dict:
    rows = list(range(first, first + n))
    data = {"iteration": rows, "cost": [1.0 / row for row in rows]}
    return descriptor.compose_event_page(
        data=data, timestamps={key: [0.0] * n for key in data}, seq_num=rows, time=[0.0] * n
    )


def event(descriptor, row: int) -> dict:
    data = {"iteration": row, "cost": 1.0 / row}
    return descriptor.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=row)


def test_a_page_of_a_hundred_rows_is_one_request(catalog):
    writer = CatalogWriter(catalog, batch_size=1)  # live: each event visible at once
    run = compose_run()
    writer("start", run.start_doc)
    descriptor = run.compose_descriptor(name="convergence", data_keys=KEYS)
    writer("descriptor", descriptor.descriptor_doc)
    writes = table_writes(catalog)
    writer("event_page", page(descriptor, 1, 100))
    assert len(writes) == 1  # TiledWriter itself: 100
    writer("stop", run.compose_stop())
    stream = catalog[run.start_doc["uid"]]["convergence"]
    assert list(np.asarray(stream["iteration"].read())) == list(range(1, 101))
    np.testing.assert_allclose(np.asarray(stream["cost"].read()), 1.0 / np.arange(1, 101))


def test_events_batched_before_a_page_are_all_written_in_order(catalog):
    writer = CatalogWriter(catalog, batch_size=5)
    run = compose_run()
    writer("start", run.start_doc)
    descriptor = run.compose_descriptor(name="primary", data_keys=KEYS)
    writer("descriptor", descriptor.descriptor_doc)
    for row in (1, 2):
        writer("event", event(descriptor, row))
    writer("event_page", page(descriptor, 3, 7))
    writer("event", event(descriptor, 10))
    writer("stop", run.compose_stop())
    stream = catalog[run.start_doc["uid"]]["primary"]
    assert list(np.asarray(stream["iteration"].read())) == list(range(1, 11))


def test_the_plugin_options_it_does_not_offer_are_refused(catalog):
    with pytest.raises(TypeError, match="backup_directory"):
        CatalogWriter(catalog, backup_directory="/tmp")


def test_a_reconstruction_run_is_written_event_by_event_while_a_raw_scan_keeps_its_batches(catalog):
    writer = CatalogWriter(catalog, batch_size=10)
    rows = {}
    for plan in ("raw_scan", PLAN_NAME):
        run = compose_run(metadata={"plan_name": plan})
        writer("start", run.start_doc)
        descriptor = run.compose_descriptor(name="primary", data_keys=KEYS)
        writer("descriptor", descriptor.descriptor_doc)
        writer("event", event(descriptor, 1))  # a preview: awaited now, not when nine more have come
        rows[plan] = table_rows(catalog, run.start_doc["uid"])
        writer("stop", run.compose_stop())
    assert rows == {"raw_scan": 0, PLAN_NAME: 1}


def table_rows(catalog, uid: str) -> int:
    """Rows of the run's primary table in the catalog now (0 before any is written)."""
    try:
        table = catalog[uid]["primary"].base["internal"]
    except KeyError:
        return 0
    return len(table.read())
