"""Only legacy Resource/Datum are normalised; events that refer to none reach the scan as they came."""

from __future__ import annotations

import numpy as np
from event_model import compose_resource, compose_run, pack_event_page
from helpers import Documents

from bluesky_ptycho.callbacks.normalizing import LegacyNormalizer

FRAME = {"source": "sim", "dtype": "array", "shape": [4, 4], "dtype_numpy": "<u2"}
POSITION = {"source": "sim", "dtype": "number", "shape": []}


def normalized(documents: list[tuple[str, dict]]) -> Documents:
    received = Documents()
    normalizer = LegacyNormalizer()
    normalizer.subscribe(received)
    for name, doc in documents:
        normalizer(name, doc)
    return received


def test_events_with_inline_frames_or_stream_data_pass_through_untouched():
    run = compose_run()
    inline = run.compose_descriptor(name="primary", data_keys={"det": FRAME, "x": POSITION})
    streamed = run.compose_descriptor(
        name="streamed", data_keys={"det": {**FRAME, "external": "STREAM:"}, "x": POSITION}
    )
    event = inline.compose_event(
        data={"det": np.ones((4, 4), np.uint16), "x": 1.0}, timestamps={"det": 0, "x": 0}
    )
    positions_only = streamed.compose_event(data={"x": 2.0}, timestamps={"x": 0})
    page = pack_event_page(
        inline.compose_event(data={"det": np.zeros((4, 4)), "x": 3.0}, timestamps={"det": 0, "x": 0})
    )
    received = normalized(
        [
            ("start", run.start_doc),
            ("descriptor", inline.descriptor_doc),
            ("descriptor", streamed.descriptor_doc),
            ("event", event),
            ("event", positions_only),
            ("event_page", page),
        ]
    )
    assert [name for name, _ in received] == [
        "start",
        "descriptor",
        "descriptor",
        "event",
        "event",
        "event_page",
    ]
    assert received[3][1] is event and received[4][1] is positions_only and received[5][1] is page


def test_legacy_datum_events_become_stream_datum():
    run = compose_run()
    descriptor = run.compose_descriptor(
        name="primary", data_keys={"det": {**FRAME, "external": "FILESTORE:"}}
    )
    resource = compose_resource(
        spec="AD_HDF5",
        root="/",
        resource_path="data/f.h5",
        resource_kwargs={"frame_per_point": 1},
        start=run.start_doc,
    )
    datum = resource.compose_datum(datum_kwargs={"point_number": 0})
    event = descriptor.compose_event(data={"det": datum["datum_id"]}, timestamps={"det": 0})
    received = normalized(
        [
            ("start", run.start_doc),
            ("descriptor", descriptor.descriptor_doc),
            ("resource", resource.resource_doc),
            ("datum", datum),
            ("event", event),
        ]
    )
    names = [name for name, _ in received]
    assert "stream_resource" in names and "stream_datum" in names
    (stream_datum,) = received.named("stream_datum")
    assert stream_datum["indices"] == {"start": 0, "stop": 1}
    assert received.named("event")[0]["data"] == {}  # the reference went into the StreamDatum
