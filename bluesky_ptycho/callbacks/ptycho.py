"""The RunEngine side: collect frames and positions, trigger reconstructions.

:class:`PtychoCallback` is subscribed to the RunEngine. It reads the geometry
from ``start["ptycho"]`` (or from constructor overrides), collects frames and
positions from events and event pages (frames inline, or in HDF5 files that
StreamResource/StreamDatum or Resource/Datum documents point to), hands reconstruction jobs to a runner
(previews every ``preview_every`` frames, a final one after the stop
document) and passes every result or failure to a
:class:`~bluesky_ptycho.catalog.ReconstructionRunWriter`.

It never blocks the RunEngine (the work runs on the runner) and never raises
into it: ``RE.ignore_callback_exceptions`` is False by default, so an
exception escaping a callback would abort the user's scan. Problems are
logged with the run uid and recorded in the reconstruction run instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from event_model import DocumentRouter, unpack_event_page

from ..catalog.documents import DocumentCallback, ReconstructionRunWriter
from ..catalog.queries import latest_probe_for
from ..federation.jobs import ReconstructionJob, Runner
from ..federation.local import LocalRunner
from ..io import read_result
from ..scan_metadata import ConfigurationSignals, ScanGeometry, configuration_metadata, start_metadata
from ..solver.data import Geometry, ReconstructionResult
from ..solver.probe import reusable_probe
from ..solver.settings import ReconstructionSettings
from .external import ExternalFrames

logger = logging.getLogger(__name__)


class _Problems:
    """A scan's problems: each kind is logged once (with the scan uid) and counted."""

    def __init__(self, scan_uid: str) -> None:
        self.scan_uid = scan_uid
        self._by_kind: dict[str, list] = {}  # kind -> [first message, count]

    def add(self, kind: str, message: str, exc_info: BaseException | None = None) -> None:
        """Record one occurrence; the first of its ``kind`` is logged (with ``exc_info``'s traceback)."""
        if kind not in self._by_kind:
            logger.error("scan %s: %s", self.scan_uid, message, exc_info=exc_info)
            self._by_kind[kind] = [message, 0]
        self._by_kind[kind][1] += 1

    def __bool__(self) -> bool:
        return bool(self._by_kind)

    def summary(self) -> list[str]:
        """One line per kind: its first message, and how many more there were."""
        return [
            message if count == 1 else f"{message} (and {count - 1} more like it)"
            for message, count in self._by_kind.values()
        ]


def _as_image(frame) -> np.ndarray:
    """A frame as a 2-D array (leading axes of length 1, as area detectors give, dropped)."""
    frame = np.asarray(frame)
    while frame.ndim > 2 and frame.shape[0] == 1:
        frame = frame[0]
    return frame


def _frame_problem(
    frame: np.ndarray, position: tuple[float, float], frame_shape: tuple[int, int] | None
) -> tuple[str, str] | None:
    """(kind, message) of what makes a frame unusable, or None."""
    if frame.ndim != 2 or frame.size == 0:
        return "frame shape", f"a frame of shape {frame.shape} is not an image"
    if frame_shape is not None and frame.shape != frame_shape:
        return "frame shape", f"frame shape {frame.shape} != {frame_shape}"
    if not np.issubdtype(frame.dtype, np.number) or np.issubdtype(frame.dtype, np.complexfloating):
        return "frame type", f"frame of type {frame.dtype} is not photon counts"
    if not np.all(np.isfinite(frame)):
        return "non-finite frame", "frame holds NaN or infinite counts"
    if not all(np.isfinite(position)):
        return "non-finite position", f"position {position} is not finite"
    return None


def earlier_result(source: str | Path | ReconstructionResult) -> tuple[ReconstructionResult, str]:
    """An earlier reconstruction whose probe a new one starts from, and where it came from in words.

    ``source`` is a result file's path ("file PATH") or a result read from
    the catalog ("reconstruction UID").
    """
    if isinstance(source, ReconstructionResult):
        return source, f"reconstruction {source.extra.get('run_uid', '(not in a catalog)')}"
    return read_result(source), f"file {source}"


# how long a scan's first job waits for its initial probe's lookup (begun at its first descriptor)
PROBE_LOOKUP_WAIT = 5.0


@dataclass
class _Run:
    """What the callback holds for one raw scan."""

    start: dict
    writer: ReconstructionRunWriter
    metadata: dict  # from the start document and the overrides; completed by a descriptor's configuration
    scan: ScanGeometry | None = None  # None until the metadata are complete
    error: str | None = None
    descriptors: set[str] = field(default_factory=set)
    frames: list[np.ndarray] = field(default_factory=list)  # not yet handed to the runner
    positions: list[tuple[float, float]] = field(default_factory=list)
    frame_shape: tuple[int, int] | None = None
    external: ExternalFrames = field(default_factory=ExternalFrames)
    frames_by_seq_num: dict[int, np.ndarray] = field(default_factory=dict)  # waiting for their positions
    positions_by_seq_num: dict[int, tuple[float, float]] = field(default_factory=dict)  # and the reverse
    collected: int = 0
    seq_nums: set[int] = field(default_factory=set)  # of the frames taken
    in_flight: Future | None = None
    is_ptycho: bool = False  # start["ptycho"], or a descriptor with the configured frame key
    jobs: int = 0
    probe_lookup: Future | None = None  # of (probe, where it came from)
    probe_source: str | None = None  # where the initial probe came from, when the callback gave one
    problems: _Problems = field(init=False)

    def __post_init__(self) -> None:
        self.problems = _Problems(self.start["uid"])


class PtychoCallback(DocumentRouter):
    """Live ptychographic reconstruction of Bluesky scans.

    Parameters
    ----------
    emit_reconstruction
        Receives the documents of each reconstruction run (e.g. a
        ``TiledWriter``), or a list of such callbacks (e.g. the writer and a
        :class:`~bluesky_ptycho.callbacks.LiveReconstructionView`); by
        default they are only logged.
    runner
        Where reconstructions run; default :class:`LocalRunner`.
    settings
        Solver settings of the final reconstruction; ``settings.iterations``
        is its iteration count. Default: :meth:`ReconstructionSettings.final`
        (LSQ-ML, Poisson, three probe modes: the best measured on realistic data).
    preview_settings
        Solver settings of the previews; default: ``settings.for_preview()``
        (rPIE with one mode, fast). The final continues from the last preview.
    preview_every
        Frames between previews (0 or None: no previews).
    preview_iterations
        Iterations of each preview.
    queue_previews
        False (default): while the runner is still busy with a preview, new
        frames wait and join the next one, so a slow runner never falls
        behind the scan. True: queue a preview every ``preview_every`` frames
        regardless.
    on_result
        Optional ``f(raw_uid, result, final)`` called with every result (e.g.
        a live plot).
    initial_probe
        Where each scan's initial probe comes from. None (default): built
        from the scan's own frames (the measured defocus). "latest": the probe
        of the newest successful final reconstruction in ``catalog`` recorded
        with the scan's energy, detector distance, pixel size and frame shape,
        as beamlines reuse a slowly changing probe from scan to scan. A
        :class:`ReconstructionResult` or the path of a result file: its probe.
        A probe that does not fit a scan is refused with the reason (logged
        and recorded with the reconstruction), and the scan's probe is built
        from its frames instead.
    catalog
        The Tiled catalog to look in for ``initial_probe="latest"``.
    configuration_signals
        Geometry keys read from the devices' configuration recorded in the
        frames' descriptor, where the start document and the overrides do
        not give them: ``{"photon_energy_ev": "mono_energy", ...}``, or a
        (signal name, factor) pair whose factor converts the signal's unit
        to the key's (``("mono_energy", 1000.0)`` for keV).
    **geometry
        Overrides of ``start["ptycho"]`` keys (``data_key``, ``x_key``,
        ``y_key``, ``position_unit``, ``photon_energy_ev``,
        ``detector_distance_m``, ``detector_pixel_size_m`` and the optional
        ``scan_area``) for plans that do not record them. See
        :mod:`bluesky_ptycho.scan_metadata`.
    """

    def __init__(
        self,
        emit_reconstruction: DocumentCallback | list[DocumentCallback] | None = None,
        *,
        runner: Runner | None = None,
        settings: ReconstructionSettings | None = None,
        preview_settings: ReconstructionSettings | None = None,
        preview_every: int | None = 50,
        preview_iterations: int = 20,
        queue_previews: bool = False,
        on_result: Callable[[str, ReconstructionResult, bool], Any] | None = None,
        initial_probe: str | Path | ReconstructionResult | None = None,
        catalog: Any = None,
        configuration_signals: ConfigurationSignals | None = None,
        **geometry: Any,
    ) -> None:
        if initial_probe == "latest" and catalog is None:
            raise ValueError("initial_probe='latest' needs the catalog to look in: pass catalog=")
        super().__init__()
        if emit_reconstruction is None:
            emit_reconstruction = _log_document
        elif isinstance(emit_reconstruction, list | tuple) and not callable(emit_reconstruction):
            emit_reconstruction = _Broadcast(list(emit_reconstruction))
        self.emit_reconstruction = emit_reconstruction
        self.runner = LocalRunner() if runner is None else runner
        self.settings = settings or ReconstructionSettings.final()
        self.preview_settings = preview_settings or self.settings.for_preview()
        self.preview_every = preview_every or 0
        self.preview_iterations = preview_iterations
        self.queue_previews = queue_previews
        self.on_result = on_result
        self.initial_probe = initial_probe
        # a given probe, read once: (result, where it came from)
        self._given_probe = None if initial_probe in (None, "latest") else earlier_result(initial_probe)
        self.catalog = catalog
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycho-probe-lookup")
        self.geometry_overrides = geometry
        self.configuration_signals = dict(configuration_signals or {})
        configuration_metadata({}, self.configuration_signals)  # a key that cannot be configured fails here
        self._runs: dict[str, _Run] = {}
        self._run_of_descriptor: dict[str, str] = {}  # descriptors of the frames' streams
        self._other_descriptors: dict[str, str] = {}  # of the runs' other streams (ignored)
        self._unattributed = _Problems("(unknown run)")  # documents of no open run
        self._run_of_resource: dict[str, str] = {}
        self._pending: list[threading.Event] = []

    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            return super().__call__(name, doc, validate)
        except Exception as error:  # never let an exception reach the RunEngine
            run = self._run_for(doc)
            if run is None:
                logger.exception("PtychoCallback could not process a %s document", name)
            else:
                run.problems.add(f"{name}:{type(error).__name__}", f"{name}: {error}", exc_info=error)
            return name, doc

    # --- documents ---------------------------------------------------------

    def start(self, doc: dict) -> None:
        """Open a run; only ptychography scans (``start["ptycho"]``, or the frame key in a descriptor) are reconstructed."""
        writer = ReconstructionRunWriter(
            self.emit_reconstruction,
            doc,
            self.settings.to_dict(),
            getattr(self.runner, "location", "?"),
            probe_modes=max(self.settings.probe_modes, self.preview_settings.probe_modes),
        )
        run = _Run(start=doc, writer=writer, metadata=start_metadata(doc, self.geometry_overrides))
        run.is_ptycho = "ptycho" in doc
        self._runs[doc["uid"]] = run
        if not set(self.configuration_signals) - set(run.metadata):  # complete without a descriptor
            self._describe_scan(run, run.metadata)

    def _describe_scan(self, run: _Run, metadata: dict) -> None:
        """Set the run's scan geometry from its complete ``metadata``, or record why it cannot be."""
        try:
            run.scan = ScanGeometry.from_metadata(metadata, self.configuration_signals)
        except ValueError as invalid:
            run.error = str(invalid)
            if run.is_ptycho:
                logger.error("scan %s: %s", run.start["uid"], run.error)
            return
        run.writer.scan_area = run.scan.scan_area

    def descriptor(self, doc: dict) -> None:
        run = self._runs.get(doc["run_start"])
        if run is None:
            self._unattributed.add(
                "descriptor", f"descriptor {doc['uid']} of run {doc['run_start']}, not open"
            )
            return
        run.descriptors.add(doc["uid"])
        # a ptychography scan's frames come with positions: a count of the detector is no such scan
        keys = [run.metadata.get(key) for key in ("data_key", "x_key", "y_key")]
        run.is_ptycho = run.is_ptycho or all(key in doc["data_keys"] for key in keys)
        if not run.is_ptycho or keys[0] not in doc["data_keys"]:
            self._other_descriptors[doc["uid"]] = doc["run_start"]
            return
        if run.scan is None and run.error is None:  # the geometry waited for the configuration
            try:
                self._describe_scan(
                    run, {**configuration_metadata(doc, self.configuration_signals), **run.metadata}
                )
            except ValueError as invalid:
                run.error = str(invalid)
        if run.scan is None:
            self._other_descriptors[doc["uid"]] = doc["run_start"]
            return
        self._run_of_descriptor[doc["uid"]] = doc["run_start"]
        shape = [n for n in doc["data_keys"][run.scan.data_key].get("shape") or [] if n != 1]
        if run.frame_shape is None and len(shape) == 2 and min(shape) > 1:
            run.frame_shape = (int(shape[0]), int(shape[1]))  # as the detector declares it
            self._look_up_probe(run)

    def event(self, doc: dict) -> None:
        run_uid = self._run_of_descriptor.get(doc["descriptor"])
        if run_uid is None:
            if doc["descriptor"] not in self._other_descriptors:
                self._unknown_descriptor(doc)
            return
        run = self._runs[run_uid]
        data = doc["data"]
        scale = run.scan.metres_per_position_unit
        position = (float(data[run.scan.x_key]) * scale, float(data[run.scan.y_key]) * scale)
        key = run.scan.data_key
        if key not in data:  # the frame comes (or came) in a StreamDatum
            self._pair(run, doc["seq_num"], position=position)
        elif doc.get("filled", {}).get(key, True) is False:
            self._accept(run, doc["seq_num"], run.external.read_datum(data[key]), position)
        else:
            self._accept(run, doc["seq_num"], np.asarray(data[key]), position)

    def _unknown_descriptor(self, doc: dict) -> None:
        """An event before (or without) its descriptor: counted against the open run, if only one is."""
        message = (
            f"event {doc.get('seq_num')} of descriptor {doc['descriptor']}, which was never seen (ignored)"
        )
        (self._runs[next(iter(self._runs))].problems if len(self._runs) == 1 else self._unattributed).add(
            "unknown descriptor", message
        )

    def event_page(self, doc: dict) -> None:
        for event in unpack_event_page(doc):
            self.event(event)

    def stream_resource(self, doc: dict) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None or run.scan is None or doc.get("data_key") != run.scan.data_key:
            return
        run.external.add_stream_resource(doc)
        self._run_of_resource[doc["uid"]] = doc["run_start"]

    def stream_datum(self, doc: dict) -> None:
        run = self._runs.get(self._run_of_resource.get(doc["stream_resource"], ""))
        if run is None:
            return
        frames = run.external.read_stream_datum(doc)
        for seq_num, frame in zip(
            range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]), frames, strict=True
        ):
            self._pair(run, seq_num, frame=frame)

    def resource(self, doc: dict) -> None:
        run = self._runs.get(doc.get("run_start", ""))
        if run is None or run.scan is None:
            return
        run.external.add_resource(doc)
        self._run_of_resource[doc["uid"]] = doc["run_start"]

    def datum(self, doc: dict) -> None:
        run = self._runs.get(self._run_of_resource.get(doc["resource"], ""))
        if run is not None:
            run.external.add_datum(doc)

    def _pair(self, run: _Run, seq_num: int, frame=None, position=None) -> None:
        """Join a frame and a position that arrive in different documents (StreamDatum, event)."""
        if frame is not None:
            run.frames_by_seq_num[seq_num] = frame
        if position is not None:
            run.positions_by_seq_num[seq_num] = position
        if seq_num in run.frames_by_seq_num and seq_num in run.positions_by_seq_num:
            self._accept(
                run, seq_num, run.frames_by_seq_num.pop(seq_num), run.positions_by_seq_num.pop(seq_num)
            )

    def _accept(self, run: _Run, seq_num: int, frame: np.ndarray, position: tuple[float, float]) -> None:
        frame = _as_image(frame)
        problem = _frame_problem(frame, position, run.frame_shape)
        if problem is None and seq_num in run.seq_nums:
            problem = ("duplicate seq_num", "a second frame with this seq_num")
        area = run.scan.scan_area
        if problem is None and area is not None and not area.admits(position, run.scan.field_of_view_m):
            problem = ("outside scan area", f"position {position} m is outside the planned scan_area")
        if problem is not None:
            kind, message = problem
            run.problems.add(kind, f"event {seq_num}: {message} (skipped)")
            return
        if frame.min() < 0:
            run.problems.add("negative counts", f"event {seq_num}: negative counts, set to 0")
            frame = np.clip(frame, 0, None)
        if run.frame_shape != frame.shape:
            run.frame_shape = frame.shape
            self._look_up_probe(run)
        run.seq_nums.add(seq_num)
        run.frames.append(frame)
        run.positions.append(position)
        run.collected += 1
        if self.preview_every and len(run.frames) >= self.preview_every:
            self._preview(run)

    def stop(self, doc: dict) -> None:
        run = self._runs.pop(doc["run_start"], None)
        if run is None:
            self._unattributed.add(
                "stop", f"stop document of run {doc['run_start']}, which was never started"
            )
            return
        for uid in run.descriptors:
            self._run_of_descriptor.pop(uid, None)
            self._other_descriptors.pop(uid, None)
        self._run_of_resource = {
            uid: run_uid for uid, run_uid in self._run_of_resource.items() if run_uid != doc["run_start"]
        }
        run.external.close()
        if not run.is_ptycho:  # an alignment scan, a count: nothing to reconstruct, nothing to record
            logger.debug(
                "run %s is not a ptychography scan (no start['ptycho'], no frame key): ignored",
                run.start["uid"],
            )
            return
        if run.frames_by_seq_num or run.positions_by_seq_num:
            run.problems.add(
                "unpaired",
                f"{len(run.frames_by_seq_num)} frames without positions and "
                f"{len(run.positions_by_seq_num)} positions without frames were left unused",
            )
        exit_status = doc.get("exit_status", "success")
        partial = exit_status != "success"
        if run.error is not None or run.scan is None:
            run.writer.close("fail", reason=run.error or "no descriptor of the frames came")
            return
        if run.collected == 0:
            run.writer.close("fail", reason="the scan recorded no diffraction frames")
            return
        future = self.runner.submit(self._job(run, self.settings.iterations, final=True))
        self._when_done(future, lambda f: self._finish(run, f, partial, exit_status))

    # --- work --------------------------------------------------------------

    def _job(self, run: _Run, iterations: int, final: bool) -> ReconstructionJob:
        frames = np.asarray(run.frames, dtype=np.float32).reshape(-1, *run.frame_shape)
        positions = np.asarray(run.positions, dtype=float).reshape(-1, 2)
        run.frames, run.positions = [], []  # the runner holds them from now on
        geometry = run.scan.geometry(run.frame_shape)
        run.jobs += 1
        return ReconstructionJob(
            scan_uid=run.start["uid"],
            geometry=geometry,
            settings=self.settings if final else self.preview_settings,
            frames=frames,
            positions=positions,
            iterations=iterations,
            final=final,
            probe=self._first_probe(run) if run.jobs == 1 else None,
        )

    def _look_up_probe(self, run: _Run) -> None:
        """Start finding the scan's initial probe (see ``initial_probe``) once its geometry is known.

        It runs in a thread of its own, so a slow or absent catalog never
        holds up the RunEngine; the scan's first job takes what it found.
        """
        if self.initial_probe is None or run.probe_lookup is not None or run.scan is None:
            return
        run.probe_lookup = self._lookups.submit(self._initial_probe, run.scan.geometry(run.frame_shape))

    def _initial_probe(self, geometry: Geometry) -> tuple[np.ndarray, str]:
        """The probe for a scan of ``geometry`` and where it came from.

        Raises
        ------
        LookupError, ValueError
            Why no probe fits (nothing in the catalog, a mismatch).
        """
        result, source = self._given_probe or earlier_result(latest_probe_for(self.catalog, geometry))
        return reusable_probe(result, geometry, source), source

    def _first_probe(self, run: _Run) -> np.ndarray | None:
        """The initial probe that the scan's lookup found, or None (built from the frames; why is recorded)."""
        if run.probe_lookup is None:
            return None
        try:
            probe, run.probe_source = run.probe_lookup.result(timeout=PROBE_LOOKUP_WAIT)
            return probe
        except (LookupError, ValueError) as refused:
            reason = str(refused)
        except TimeoutError:
            reason = f"the catalog did not answer within {PROBE_LOOKUP_WAIT} s"
        except Exception as error:  # the catalog's own errors (HTTP, connection)
            reason = f"looking it up failed: {error}"
        run.problems.add("initial probe", f"initial probe refused, built from the frames instead: {reason}")
        return None

    def _preview(self, run: _Run) -> None:
        if not self.queue_previews and run.in_flight is not None and not run.in_flight.done():
            return  # the runner is busy: these frames join the next job
        future = self.runner.submit(self._job(run, self.preview_iterations, final=False))
        run.in_flight = future
        self._when_done(future, lambda f: self._previewed(run, f))

    def _previewed(self, run: _Run, future: Future) -> None:
        error = future.exception()
        if error is not None:
            run.problems.add(f"preview:{type(error).__name__}", f"preview failed: {error}")
            return
        run.writer.add_result(self._recorded(run, future), final=False)
        self._notify(run, future.result(), final=False)

    def _finish(self, run: _Run, future: Future, partial: bool, exit_status: str) -> None:
        error = future.exception()
        if error is not None:
            logger.error("scan %s: reconstruction failed: %s", run.start["uid"], error)
            run.writer.close("fail", reason=f"reconstruction failed: {type(error).__name__}: {error}")
            return
        try:
            run.writer.add_result(self._recorded(run, future), final=True, partial=partial)
        except ValueError as error:
            run.writer.close("fail", reason=f"the result could not be recorded: {error}")
            return
        reason = f"partial: the raw scan ended with exit_status {exit_status!r}" if partial else ""
        reason = "; ".join(filter(None, [reason, *run.problems.summary(), *future.result().warnings]))
        run.writer.close("success", reason=reason)
        self._notify(run, future.result(), final=True)

    @staticmethod
    def _recorded(run: _Run, future: Future) -> ReconstructionResult:
        """The job's result, saying where its initial probe came from when the callback gave it."""
        result = future.result()
        if run.probe_source is not None:
            result.extra["probe_source"] = run.probe_source
        return result

    def _notify(self, run: _Run, result: ReconstructionResult, final: bool) -> None:
        if self.on_result is not None:
            self.on_result(run.start["uid"], result, final)

    def _when_done(self, future: Future, handle: Callable[[Future], None]) -> None:
        """Run ``handle(future)`` when it completes; :meth:`wait` waits for the handling too."""
        handled = threading.Event()

        def done(finished: Future) -> None:
            try:
                handle(finished)
            except Exception:
                logger.exception("PtychoCallback could not record a reconstruction result")
            finally:
                handled.set()

        self._pending = [event for event in self._pending if not event.is_set()] + [handled]
        future.add_done_callback(done)

    def _run_for(self, doc: dict) -> _Run | None:
        uid = (
            doc.get("run_start")
            or self._run_of_descriptor.get(doc.get("descriptor", ""))
            or self._run_of_resource.get(doc.get("stream_resource") or doc.get("resource") or "")
        )
        return self._runs.get(uid) if uid else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted reconstruction is finished and recorded.

        Returns False if ``timeout`` seconds passed first.
        """
        return all(event.wait(timeout) for event in list(self._pending))


class _Broadcast:
    """Sends each document to every callback; one that raises is logged and does not stop the others."""

    def __init__(self, callbacks: list[DocumentCallback]) -> None:
        self.callbacks = callbacks

    def __call__(self, name: str, doc: dict) -> None:
        for callback in self.callbacks:
            try:
                callback(name, doc)
            except Exception:
                logger.exception("%r could not take a reconstruction %s document", callback, name)


def _log_document(name: str, doc: dict) -> None:
    logger.info("reconstruction %s document %s", name, doc.get("uid", ""))
