"""The run router hands each run's callbacks events as events and event pages as pages."""

from __future__ import annotations

import pytest
from event_model import compose_run

from bluesky_ptycho.callbacks.routing import EventRouter


def test_events_reach_the_runs_callbacks_as_they_came_and_other_runs_see_nothing():
    received: dict[str, list[tuple[str, dict]]] = {}

    def factory(name, start):
        seen = received.setdefault(start["uid"], [])
        return [lambda name, doc: seen.append((name, doc))], []

    router = EventRouter([factory])
    runs = [compose_run(), compose_run()]
    for run in runs:
        router("start", run.start_doc)
    descriptor = runs[0].compose_descriptor(
        name="primary", data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}}
    )
    router("descriptor", descriptor.descriptor_doc)
    event = descriptor.compose_event(data={"x": 1.0}, timestamps={"x": 0.0})
    page = descriptor.compose_event_page(data={"x": [2.0, 3.0]}, timestamps={"x": [0.0, 0.0]}, seq_num=[2, 3])
    router("event", event)
    router("event_page", page)
    for run in runs:
        router("stop", run.compose_stop())

    names = [name for name, _ in received[runs[0].start_doc["uid"]]]
    assert names == ["start", "descriptor", "event", "event_page", "stop"]
    assert received[runs[0].start_doc["uid"]][2][1] is event  # not packed into a page and unpacked
    assert received[runs[0].start_doc["uid"]][3][1]["data"]["x"] == [2.0, 3.0]
    assert [name for name, _ in received[runs[1].start_doc["uid"]]] == ["start", "stop"]


def test_an_event_of_an_unknown_descriptor_is_refused_as_event_models_router_refuses_it():
    router = EventRouter([lambda name, start: ([lambda name, doc: None], [])])
    run = compose_run()
    router("start", run.start_doc)
    stray = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
    )
    event = stray.compose_event(data={"x": 1.0}, timestamps={"x": 0.0})  # its descriptor never came
    with pytest.raises(KeyError):
        router("event", event)
    assert event["descriptor"] not in router._factory_cbs_by_descriptor
