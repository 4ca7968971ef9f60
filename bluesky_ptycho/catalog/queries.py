"""Find reconstructions in a Tiled catalog and read them as NumPy arrays."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from event_model import pack_event_page
from tiled.queries import Key, Like, NotEq
from tiled.structures.core import StructureFamily

from ..solver.data import Geometry, ReconstructionResult
from .documents import PLAN_NAME, VARIABLE_PROBE, from_polar


def reconstructions_of(catalog, raw_uid: str) -> list:
    """Reconstruction runs of the raw scan ``raw_uid``, oldest first."""
    found = catalog.search(Key("start.raw_uid") == raw_uid).search(Key("start.plan_name") == PLAN_NAME)
    runs = list(found.values())
    return sorted(runs, key=lambda run: run.metadata["start"]["time"])


class StreamParts:
    """A run's stream as bluesky-tiled-plugins stores it (tables of scalar columns beside one array per
    shaped key), listed once.

    Indexing the stream by key costs three requests a key (it lists its parts twice each time); this
    lists them once and reads the scalar columns a table at a time.
    """

    def __init__(self, stream) -> None:
        parts = dict(stream.base.items())
        # ragged arrays (the object of a run without a planned scan area) are awkward, not array, nodes
        self.arrays = {
            key: part for key, part in parts.items() if part.structure_family != StructureFamily.table
        }
        self._tables = [part for part in parts.values() if part.structure_family == StructureFamily.table]

    def columns(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The scalar columns ``keys``, every row of them, in one request per table that holds any."""
        found: dict[str, np.ndarray] = {}
        for table in self._tables:
            held = [key for key in keys if key in table.structure().columns]
            if held:
                frame = table.read(columns=held)
                found.update({key: frame[key].to_numpy() for key in held})
        missing = set(keys) - set(found)
        if missing:
            raise KeyError(f"the stream has no column {', '.join(sorted(missing))}")
        return found

    def row(self, key: str, index: int) -> np.ndarray:
        """Event ``index``'s array ``key``: only it leaves the server."""
        value = self.arrays[key][index]
        # a ragged array (object and positions of runs without a planned scan area) converts fast only via lists
        return np.asarray(value if isinstance(value, np.ndarray) else value.tolist())


def without_empty_modes(probe: np.ndarray) -> np.ndarray:
    """``probe`` without the all-zero modes a run stores to give every event the same shape."""
    return probe[np.any(probe != 0, axis=(-2, -1))] if len(probe) > 1 else probe


def result_from_run(run, index: int = -1, stream: StreamParts | None = None) -> ReconstructionResult:
    """Event ``index`` (default: the last) of a reconstruction run as a :class:`ReconstructionResult`.

    ``stream``: the run's primary stream, if it was listed already.
    """
    stream = stream or StreamParts(run["primary"])
    scalars = {
        key: column[index]
        for key, column in stream.columns(
            [
                "iteration",
                "pixel_size_y",
                "pixel_size_x",
                "object_origin_x",
                "object_origin_y",
                "wall_time",
                "final",
                "partial",
                "probe_defocus",
            ]
        ).items()
    }

    def row(key: str) -> np.ndarray:
        return stream.row(key, index)

    start = run.metadata["start"]
    positions = row("positions").astype(float)
    taken = ~np.isnan(positions).any(axis=1)  # rows of frames not yet taken are NaN
    # NaN where the intensity was not corrected; absent from runs recorded before it was
    scales = row("frame_scales").astype(float)[taken] if "frame_scales" in stream.arrays else None
    iterations = int(scalars["iteration"])
    streams = set(run)  # one request, where asking for each stream would take one each
    costs = (
        StreamParts(run["convergence"]).columns(["cost"])["cost"] if "convergence" in streams else np.empty(0)
    )
    eigen_probes, eigen_weights = (
        variable_probe_of(StreamParts(run[VARIABLE_PROBE]), iterations)
        if VARIABLE_PROBE in streams
        else (None, None)
    )
    return ReconstructionResult(
        object=from_polar(row("object_amplitude"), row("object_phase")),
        probe=without_empty_modes(from_polar(row("probe_amplitude"), row("probe_phase"))),
        positions=positions[taken],
        pixel_size=(float(scalars["pixel_size_y"]), float(scalars["pixel_size_x"])),
        object_origin=(float(scalars["object_origin_x"]), float(scalars["object_origin_y"])),
        cost_history=[float(cost) for cost in costs[:iterations]],
        iterations=iterations,
        settings=start["ptycho_solver"]["settings"],
        wall_time=float(scalars["wall_time"]),
        extra={
            "final": bool(scalars["final"]),
            "partial": bool(scalars["partial"]),
            "probe_defocus": float(scalars["probe_defocus"]),
            "run_uid": start["uid"],
        },
        geometry=Geometry.from_dict(start["ptycho_geometry"]) if "ptycho_geometry" in start else None,
        frame_scales=None if scales is None or np.isnan(scales).all() else scales,
        eigen_probes=eigen_probes,
        eigen_weights=None if eigen_weights is None else eigen_weights[taken].astype(np.float32),
    )


def variable_probe_of(stream: StreamParts, iteration: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The eigen-probes and weights (every point's row) of the result at ``iteration``; None, None if none.

    ``stream``: the run's :data:`~.documents.VARIABLE_PROBE` stream.
    """
    matches = np.flatnonzero(stream.columns(["iteration"])["iteration"] == iteration)
    if not len(matches):
        return None, None
    index = int(matches[-1])
    eigen_probes = from_polar(
        stream.row("eigen_probe_amplitude", index), stream.row("eigen_probe_phase", index)
    )
    return eigen_probes, stream.row("eigen_weights", index)


def final_stream(run) -> StreamParts | None:
    """The reconstruction run's primary stream if its last event is a final result; None if a preview or none."""
    try:
        stream = StreamParts(run["primary"])
    except KeyError:  # asking first would cost a request more
        return None
    return stream if stream.columns(["final"])["final"][-1] else None


def latest_final_reconstruction(catalog, raw_uid: str) -> ReconstructionResult:
    """The final result of the newest successful reconstruction of ``raw_uid``.

    Raises
    ------
    LookupError
        If the scan has no successful reconstruction with a final result;
        the message gives the newest reconstruction's status and reason.
    """
    runs = reconstructions_of(catalog, raw_uid)
    for run in reversed(runs):
        stop = run.metadata.get("stop") or {}
        if stop.get("exit_status") == "success" and (stream := final_stream(run)) is not None:
            return result_from_run(run, stream=stream)
    detail = ""
    if runs:
        newest = runs[-1].metadata
        stop = newest.get("stop") or {}
        status = stop.get("exit_status", "still running")
        reason = f": {stop['reason']}" if stop.get("reason") else ""
        detail = f"; its newest reconstruction, {newest['start']['uid']}, is {status}{reason}"
    raise LookupError(f"no successful final reconstruction of scan {raw_uid} in the catalog{detail}")


def latest_probe_for(catalog, geometry: Geometry, limit: int = 50) -> ReconstructionResult:
    """The final result of the newest successful reconstruction recorded with ``geometry`` (its probe to reuse).

    The last ``limit`` reconstructions are looked at, newest first; those of
    another frame shape, energy, detector distance or pixel size are passed.

    Raises
    ------
    LookupError
        Saying why none fits (the newest candidate's mismatch).
    """
    found = catalog.search(Key("start.plan_name") == PLAN_NAME).sort(("start.time", -1))
    passed = []
    for run in found.values().head(limit):
        start, stop = run.metadata["start"], run.metadata.get("stop") or {}
        if stop.get("exit_status") != "success":
            continue
        if "ptycho_geometry" not in start:
            passed.append(f"{start['uid'][:8]} records no geometry")
            continue
        mismatches = Geometry.from_dict(start["ptycho_geometry"]).mismatches(geometry)
        if mismatches:  # found from the metadata alone: a remote catalog's requests are slow
            passed.append(f"{start['uid'][:8]} has {', '.join(mismatches)}")
        elif (stream := final_stream(run)) is not None:
            return result_from_run(run, stream=stream)
    detail = f"; the newest: {passed[0]}" if passed else ""
    raise LookupError(
        f"no successful final reconstruction in the catalog was recorded with this scan's geometry{detail}"
    )


@dataclass
class ReconstructionSummary:
    """One line about a reconstruction run (``bluesky-ptycho catalog ls``)."""

    uid: str
    raw_uid: str
    raw_scan_id: int | None
    time: float
    algorithm: str
    location: str
    n_frames: int | None
    iterations: int | None
    cost: float | None
    exit_status: str
    reason: str


def summarize(run) -> ReconstructionSummary:
    """The :class:`ReconstructionSummary` of a reconstruction run."""
    start, stop = run.metadata["start"], run.metadata.get("stop") or {}
    solver = start.get("ptycho_solver", {})
    last: dict = {"n_frames": None, "iteration": None, "cost": None}
    if "primary" in run:
        columns = StreamParts(run["primary"]).columns(list(last))
        last = {key: column[-1].item() for key, column in columns.items()}
        # the final's own iterations (and those of previews done after the scan's stop, never recorded);
        # the count so far includes the previews it continued from
        counts = columns["iteration"]
        last["iteration"] = int(counts[-1] - (counts[-2] if len(counts) > 1 else 0))
    return ReconstructionSummary(
        uid=start["uid"],
        raw_uid=start.get("raw_uid", ""),
        raw_scan_id=start.get("raw_scan_id"),
        time=start["time"],
        algorithm=solver.get("settings", {}).get("algorithm", "?"),
        location=solver.get("location", "?"),
        n_frames=last["n_frames"],
        iterations=last["iteration"],
        cost=last["cost"],
        exit_status=stop.get("exit_status", "running"),
        reason=stop.get("reason", ""),
    )


def recent_reconstructions(catalog, limit: int = 20) -> list[ReconstructionSummary]:
    """The newest ``limit`` reconstruction runs, newest first."""
    found = catalog.search(Key("start.plan_name") == PLAN_NAME).sort(("start.time", -1))
    return [summarize(run) for run in found.values().head(limit)]


def recent_raw_scans(catalog, limit: int = 20) -> list[dict]:
    """The start documents of the newest ``limit`` raw scans (every run that is not a reconstruction), newest first."""
    found = catalog.search(NotEq("start.plan_name", PLAN_NAME)).sort(("start.time", -1))
    return [run.metadata["start"] for run in found.values().head(limit)]


def find_reconstruction(catalog, uid: str):
    """The reconstruction run with uid ``uid``, or the newest one of the raw scan ``uid``.

    ``uid`` may be the beginning of either uid, as long as only one run begins with it.

    Raises
    ------
    LookupError
        If neither exists.
    """
    uid = full_uid(catalog, uid)
    if uid in catalog and catalog[uid].metadata["start"].get("plan_name") == PLAN_NAME:
        return catalog[uid]
    runs = reconstructions_of(catalog, uid)
    if not runs:
        raise LookupError(
            f"{uid} is neither a reconstruction run nor a reconstructed raw scan in the catalog"
        )
    return runs[-1]


def full_uid(catalog, uid: str) -> str:
    """The run uid that ``uid`` begins (``catalog ls`` shows 8 characters), or ``uid`` itself.

    Raises
    ------
    LookupError
        If several runs begin with ``uid``, naming them.
    """
    if uid in catalog or len(uid) >= 36 or not uid.replace("-", "").isalnum():
        return uid
    matches = list(catalog.search(Like("start.uid", f"{uid}%")).keys().head(5))
    if len(matches) > 1:
        raise LookupError(f"{uid} begins several runs ({', '.join(matches)}): give more of it")
    return matches[0] if matches else uid


def raw_scan_documents(run, stream: str = "primary", page_size: int = 100) -> Iterator[tuple[str, dict]]:
    """The documents of an archived raw scan, with external data read in, as a callback receives them.

    Yields the start document, the stream's descriptor (its external data
    keys now marked as inline), event pages of ``page_size`` events, and
    the stop document (if the scan has one).
    """
    start = run.metadata["start"]
    yield "start", start
    events = run[stream]
    metadata = events.metadata
    parts = StreamParts(events)
    data_keys = {
        key: {name: value for name, value in described.items() if name != "external"}
        for key, described in metadata["data_keys"].items()
    }
    descriptor = {
        "uid": metadata["uid"],
        "run_start": start["uid"],
        "time": metadata["time"],
        "name": stream,
        "data_keys": data_keys,
        "configuration": metadata.get("configuration", {}),
        "hints": metadata.get("hints", {}),
        "object_keys": {},
    }
    yield "descriptor", descriptor
    # bluesky-tiled-plugins retries a row append the server failed after storing it (and says so in
    # the run's notes), so a row can be there twice: each event is the first row of its seq_num
    scalar_keys = [key for key, described in data_keys.items() if not described["shape"]]
    columns = parts.columns(["seq_num", "time", *scalar_keys])
    seq_nums, rows = np.unique(columns["seq_num"], return_index=True)
    scalars = {key: columns[key][rows] for key in scalar_keys}
    times = columns["time"][rows]
    for first in range(0, len(times), page_size):
        last = min(first + page_size, len(times))
        page_events = []
        arrays = {
            key: np.asarray(parts.arrays[key][first:last]).reshape(last - first, *d["shape"])
            for key, d in data_keys.items()
            if d["shape"]
        }
        for i in range(first, last):
            data = {key: values[i] for key, values in scalars.items()}
            data.update({key: values[i - first] for key, values in arrays.items()})
            page_events.append(
                {
                    "uid": f"{metadata['uid']}-{seq_nums[i]}",
                    "descriptor": metadata["uid"],
                    "seq_num": int(seq_nums[i]),
                    "time": float(times[i]),
                    "data": data,
                    "timestamps": dict.fromkeys(data, float(times[i])),
                    "filled": {},
                }
            )
        yield "event_page", pack_event_page(*page_events)
    if run.metadata.get("stop"):
        yield "stop", run.metadata["stop"]
