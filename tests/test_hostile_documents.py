"""Property-based: malformed and hostile document streams never raise, and every run is recorded honestly.

The streams start from a real scan (RunEngine + simulated ophyd beamline) and
hypothesis mutates them: documents dropped, duplicated or reordered, frames
made NaN/inf/negative/mis-shaped, positions made NaN, seq_nums repeated,
ragged event pages, a stop without a start, and a second run interleaved.
"""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pytest
from bluesky import RunEngine
from event_model import pack_event_page
from helpers import Documents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings

N_POINTS = 24
CORRUPTIONS = ("nan", "inf", "negative", "shape", "text", "bad position")


@pytest.fixture(scope="module")
def scan() -> list[tuple[str, dict]]:
    stage, det = simulated_beamline(frame_size=32, seed=2)
    raw = Documents()
    RE = RunEngine()
    RE.subscribe(raw)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=N_POINTS))
    return list(raw)


@pytest.fixture(scope="module")
def runner():
    runner = LocalRunner()
    yield runner
    runner.shutdown()


def event_indices(stream):
    return [i for i, (name, _) in enumerate(stream) if name == "event"]


def corrupt(doc: dict, kind: str) -> None:
    data = doc["data"]
    frame = np.array(data["det_image"], dtype=float)
    if kind == "nan":
        frame[0, 0] = np.nan
    elif kind == "inf":
        frame[-1, -1] = np.inf
    elif kind == "negative":
        frame[0, :] = -3.0
    elif kind == "shape":
        frame = frame[:-1]
    elif kind == "text":
        frame = "not a frame"
    elif kind == "bad position":
        data["stage_x"] = float("nan")
    data["det_image"] = frame


def renamed(stream):
    """The same run under new uids (a second scan)."""
    mapping = {}

    def new(uid):
        if isinstance(uid, list):  # an event page's columns
            return [new(u) for u in uid]
        return mapping.setdefault(uid, str(uuid.uuid4()))

    out = []
    for name, doc in copy.deepcopy(stream):
        doc["uid"] = new(doc["uid"]) if "uid" in doc else None
        for key in ("run_start", "descriptor"):
            if key in doc:
                doc[key] = new(doc[key])
        out.append((name, {k: v for k, v in doc.items() if v is not None}))
    return out


mutation = st.one_of(
    st.tuples(st.just("corrupt"), st.integers(0, N_POINTS - 1), st.sampled_from(CORRUPTIONS)),
    st.tuples(st.just("drop"), st.integers(0, N_POINTS + 3)),
    st.tuples(st.just("duplicate"), st.integers(0, N_POINTS + 3)),
    st.tuples(st.just("event before descriptor"), st.integers(0, N_POINTS - 1)),
    st.tuples(st.just("repeat seq_num"), st.integers(0, N_POINTS - 1)),
    st.tuples(st.just("page"), st.integers(0, N_POINTS - 1), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("stray stop")),
    st.tuples(st.just("interleave")),
)


def mutate(stream, mutations):
    stream = copy.deepcopy(stream)
    extra_runs = []
    corrupted = set()
    for m in mutations:
        events = event_indices(stream)
        kind = m[0]
        if kind == "corrupt" and m[1] < len(events) and m[1] not in corrupted:
            corrupted.add(m[1])
            corrupt(stream[events[m[1]]][1], m[2])
        elif kind == "drop" and m[1] < len(stream):
            del stream[m[1]]
        elif kind == "duplicate" and m[1] < len(stream):
            stream.insert(m[1] + 1, copy.deepcopy(stream[m[1]]))
        elif kind == "event before descriptor" and m[1] < len(events):
            descriptor = next((i for i, (n, _) in enumerate(stream) if n == "descriptor"), 0)
            stream.insert(descriptor, stream.pop(events[m[1]]))
        elif kind == "repeat seq_num" and 0 < m[1] < len(events):
            stream[events[m[1]]][1]["seq_num"] = stream[events[m[1] - 1]][1]["seq_num"]
        elif kind == "page" and m[1] < len(events):
            chosen = events[m[1] : m[1] + m[2]]
            docs = [stream[i][1] for i in chosen]
            if len({d["descriptor"] for d in docs}) == 1:
                page = pack_event_page(*docs)
                if m[3]:  # ragged: one column shorter than the others
                    page["data"]["stage_x"] = page["data"]["stage_x"][:-1]
                for i in reversed(chosen):
                    del stream[i]
                stream.insert(chosen[0], ("event_page", page))
        elif kind == "stray stop":
            stream.append(("stop", {"uid": str(uuid.uuid4()), "run_start": str(uuid.uuid4()), "time": 0.0}))
        elif kind == "interleave":
            other = renamed(stream)
            extra_runs.append(other)
            merged = []
            for a, b in zip(stream, other, strict=True):
                merged += [a, b]
            stream = merged
    return stream


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, max_size=4))
def test_hostile_streams_never_raise_and_every_run_is_recorded_honestly(scan, runner, mutations):
    stream = mutate(scan, mutations)
    recon = Documents()
    callback = PtychoCallback(
        recon, runner=runner, settings=ReconstructionSettings(iterations=2), preview_every=None
    )
    for name, doc in stream:
        callback(name, doc)  # must not raise
    assert callback.wait(60)

    starts = {doc["uid"]: i for i, (name, doc) in enumerate(stream) if name == "start"}
    stops = {doc["run_start"]: i for i, (name, doc) in enumerate(stream) if name == "stop"}
    recorded = {doc["raw_uid"]: doc["uid"] for doc in recon.named("start")}
    outcome = {doc["run_start"]: doc for doc in recon.named("stop")}
    for raw_uid, start_index in starts.items():
        if raw_uid in stops and stops[raw_uid] > start_index:
            assert raw_uid in recorded, "a complete run got no reconstruction record"
            stop = outcome[recorded[raw_uid]]
            assert stop["exit_status"] in ("success", "fail")
            if stop["exit_status"] == "fail":
                assert stop["reason"]
    for raw_uid in set(recorded) - set(starts):  # its start was lost: recorded as not reconstructed, and why
        stop = outcome[recorded[raw_uid]]
        assert stop["exit_status"] == "fail" and "start document never came" in stop["reason"], stop
        assert not [doc for doc in recon.named("descriptor") if doc["run_start"] == recorded[raw_uid]]
    assert len(recon.named("stop")) == len(recorded), "each reconstruction run is closed exactly once"

    only_corruptions = all(m[0] == "corrupt" for m in mutations)
    if only_corruptions and mutations:
        (raw_uid,) = starts
        first = {}  # each event is corrupted once, by the first mutation naming it
        for m in mutations:
            first.setdefault(m[1], m[2])
        bad = {event for event, kind in first.items() if kind != "negative"}
        final = [e["data"] for e in recon.named("event") if e["data"]["final"]]
        stop = outcome[recorded[raw_uid]]
        assert stop["exit_status"] == "success", stop["reason"]
        assert final[-1]["n_frames"] == N_POINTS - len(bad)  # every good frame was used
        if bad:
            assert "(skipped)" in stop["reason"]
        if "negative" in first.values():
            assert "negative counts" in stop["reason"]
