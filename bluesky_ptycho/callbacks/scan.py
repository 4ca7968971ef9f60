"""The reconstruction of one scan: its documents in, its jobs out, its record kept honest.

:class:`ScanReconstruction` is the per-run callback that
:class:`~.ptycho.PtychoCallback`'s ``RunRouter`` makes for every run, behind a
:class:`~.normalizing.LegacyNormalizer` that turns legacy Resource/Datum
into StreamResource/StreamDatum, so frames have one read path. It reads the
scan's metadata (:mod:`bluesky_ptycho.scan_metadata`), pairs frames with
positions, checks frames, cuts them from the raw detector frames
(:class:`~bluesky_ptycho.solver.detector.FramePreparation`), hands preview and final jobs to the runner and
passes results and failures to its :class:`ReconstructionRunWriter`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from event_model import DocumentRouter

from ..federation.jobs import ReconstructionJob
from ..federation.shared_frames import SharedFrames
from ..io.frame_files import FileFrames, FramePoint
from ..scan_metadata import ScanGeometry, configuration_metadata, start_metadata
from ..solver.data import ReconstructionResult
from ..solver.detector import CENTRE_FRAMES, DetectorError, FramePreparation
from .external import ExternalFrames

if TYPE_CHECKING:
    from .ptycho import PtychoCallback

logger = logging.getLogger(__name__)
# how long a scan's first job waits for its initial probe's lookup (begun at its first descriptor)
PROBE_LOOKUP_WAIT = 5.0
# a preview's time budget, unless the callback sets one: the scan's first gets PREVIEW_MIN_SECONDS
# (a first look, as soon as it can be had); later ones this share of the time their frames took to
# arrive, less what the last preview spent outside its job (waiting for the worker, moving its
# result), so that each ends before the next one's frames are in, with room for an overrun of
# half as much again (an iteration longer than its measured cost, a busy machine); never less
# than PREVIEW_MIN_SECONDS
PREVIEW_SHARE = 0.6
PREVIEW_MIN_SECONDS = 1.0
# to a runner that keeps a scan's frames, frames go as they arrive, whenever this many wait and it
# has nothing of the scan's to do (one page of the solver's frame store): a preview then finds them
# stored and only iterates, and the final only takes the last ones in
INTAKE_FRAMES = 256


class Problems:
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


def _position_problem(position: tuple[float, float]) -> tuple[str, str] | None:
    """(kind, message) of what makes a position unusable, or None."""
    if not all(np.isfinite(position)):
        return "non-finite position", f"position {position} is not finite"
    return None


def _frame_problem(
    frame: np.ndarray, position: tuple[float, float], frame_shape: tuple[int, int] | None
) -> tuple[str, str] | None:
    """(kind, message) of what makes a frame (or its position) unusable, or None."""
    if frame.ndim != 2 or frame.size == 0:
        return "frame shape", f"a frame of shape {frame.shape} is not an image"
    if frame_shape is not None and frame.shape != frame_shape:
        return "frame shape", f"frame shape {frame.shape} != {frame_shape}"
    if not np.issubdtype(frame.dtype, np.number) or np.issubdtype(frame.dtype, np.complexfloating):
        return "frame type", f"frame of type {frame.dtype} is not photon counts"
    if frame.dtype.kind == "f" and not np.all(np.isfinite(frame)):  # integer counts always are
        return "non-finite frame", "frame holds NaN or infinite counts"
    return _position_problem(position)


class ScanReconstruction(DocumentRouter):
    """The live reconstruction of one scan (one run's documents).

    Parameters
    ----------
    owner
        The :class:`~.ptycho.PtychoCallback` whose configuration (runner,
        settings, overrides, probe reuse) this scan follows.
    start
        The run's start document.
    """

    def __init__(self, owner: PtychoCallback, start: dict) -> None:
        super().__init__()
        self.owner = owner
        self.start_doc = start
        self.uid = start["uid"]
        self.problems = Problems(self.uid)
        self.writer = owner.record_of(start)
        self.metadata = start_metadata(start, owner.geometry_overrides)  # completed by a descriptor
        self.scan: ScanGeometry | None = None  # None until the metadata are complete
        self.error: str | None = None
        self.is_ptycho = "ptycho" in start  # or: a descriptor with the frames and both positions
        self.frame_descriptors: set[str] = set()
        self.frame_streams: set[str] = set()  # their stream names, which the stop document counts events of
        self.events = 0  # of the frame streams, taken or not
        # not yet handed to the runner: frames, references or (for a worker process) shared memory
        self.frames: list[np.ndarray | FramePoint] | SharedFrames = []
        self.since_preview = 0  # frames taken since the last preview's job (sent ahead or not)
        self.frames_since = 0.0  # time.monotonic() when the first of those arrived
        self.positions: list[tuple[float, float]] = []
        self.detector_shape: tuple[int, int] | None = None  # of the frames as recorded
        self.frame_shape: tuple[int, int] | None = None  # of the frames reconstructed
        self.preparation: FramePreparation | None = None  # fixed by the first frames
        # the frames that fix it: (seq_num, frame, position, the frame's reference or None)
        self.unprepared: list[tuple[int, np.ndarray, tuple[float, float], FramePoint | None]] = []
        self.by_reference: dict[str, bool] = {}  # stream resource uid -> whether the runner reads its frames
        self.detector_file_facts: tuple | None = None  # pixel mask and cutoff of the frames' file, once read
        self.external = ExternalFrames()
        self.frames_by_seq_num: dict[int, np.ndarray] = {}  # waiting for their positions
        self.positions_by_seq_num: dict[int, tuple[float, float]] = {}  # and the reverse
        self.collected = 0
        self.seq_nums: set[int] = set()  # of the frames taken
        self.in_flight: Future | None = None
        self.preview_overhead: float | None = None  # seconds the last preview spent outside its job
        self.jobs = 0
        self.probe_lookup: Future | None = None  # of (probe, where it came from)
        self.probe_deadline = 0.0  # time.monotonic() after which the first job stops waiting for it
        self.probe_source: str | None = None  # where the initial probe came from, when the callback gave one
        self.stopped = False
        self.abandoned = False
        if not set(owner.configuration_signals) - set(self.metadata):  # complete without a descriptor
            self._describe(self.metadata)

    @property
    def recorded(self) -> bool:
        """Whether nothing more will be recorded of this scan (its record is closed, or there is none to make)."""
        return self.writer.closed or self.abandoned or (self.stopped and not self.is_ptycho)

    def abandon(self, reason: str) -> bool:
        """Stop following the scan and record it as failed with ``reason``; False if already recorded."""
        recorded = self.recorded
        self.abandoned = True
        self.external.close()
        if recorded or not self.is_ptycho:
            return False
        logger.error("scan %s: %s", self.uid, reason)
        self.writer.close("fail", reason=reason)
        return True

    # --- documents ---------------------------------------------------------

    def __call__(self, name: str, doc: dict):
        if self.abandoned or self.stopped:  # stopped: by a stop document, or ended without one
            return name, doc
        return super().__call__(name, doc)

    def _describe(self, metadata: dict) -> None:
        """Set the scan geometry from its complete ``metadata``, or record why it cannot be."""
        try:
            self.scan = replace(
                ScanGeometry.from_metadata(metadata, self.owner.configuration_signals),
                binning=self.owner.detector_settings.binning,
            )
        except ValueError as invalid:
            self.error = str(invalid)
            if self.is_ptycho:
                logger.error("scan %s: %s", self.uid, self.error)
            return
        self.writer.scan_area = self.scan.scan_area

    def descriptor(self, doc: dict) -> None:
        # a ptychography scan's frames come with positions: a count of the detector is no such scan
        keys = [self.metadata.get(key) for key in ("data_key", "x_key", "y_key")]
        self.is_ptycho = self.is_ptycho or all(key in doc["data_keys"] for key in keys)
        if not self.is_ptycho or keys[0] not in doc["data_keys"]:
            return
        if self.scan is None and self.error is None:  # the geometry waited for the configuration
            try:
                configured = configuration_metadata(doc, self.owner.configuration_signals)
            except ValueError as invalid:
                self.error = str(invalid)
            else:
                self._describe({**configured, **self.metadata})
        if self.scan is None:
            return
        self.frame_descriptors.add(doc["uid"])
        self.frame_streams.add(doc.get("name", "primary"))
        shape = [n for n in doc["data_keys"][self.scan.data_key].get("shape") or [] if n != 1]
        if self.detector_shape is None and len(shape) == 2 and min(shape) > 1:
            self._set_detector_shape((int(shape[0]), int(shape[1])))  # as the detector declares it

    def event(self, doc: dict) -> None:
        if doc["descriptor"] not in self.frame_descriptors:
            return  # another stream (baseline, monitors)
        self.events += 1
        data, scan = doc["data"], self.scan
        scale = scan.metres_per_position_unit
        position = (float(data[scan.x_key]) * scale, float(data[scan.y_key]) * scale)
        if scan.data_key in data:
            self._accept(doc["seq_num"], np.asarray(data[scan.data_key]), position)
        else:  # the frame comes (or came) in a StreamDatum
            self._pair(doc["seq_num"], position=position)

    def stream_resource(self, doc: dict) -> None:
        if self.scan is not None and doc.get("data_key") == self.scan.data_key:
            self.external.add_stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        if not self.external.knows(doc["stream_resource"]):
            return  # another detector's
        resource = doc["stream_resource"]
        if self.detector_file_facts is None:
            self.detector_file_facts = self.external.detector_file_facts(resource)
        if resource not in self.by_reference:
            self.by_reference[resource] = self._runner_reads(resource)
        if self.by_reference[resource]:
            frames = self.external.points_of(doc)
        else:
            frames = self.external.read_stream_datum(doc)
        for seq_num, frame in zip(
            range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]), frames, strict=True
        ):
            self._pair(seq_num, frame=frame)

    def _runner_reads(self, resource: str) -> bool:
        """Whether the runner's worker reads this resource's frames itself (they are handed on by reference).

        It does when the runner says it reads files (a local one) and the
        frames are unsigned counts of one shape: nothing the document thread
        would check in each frame.
        """
        frames = self.external.frames_of(resource)
        return (
            getattr(self.owner.runner, "reads_files", False)
            and frames.dtype.kind == "u"
            and frames.ndim == 3
            and (self.detector_shape is None or frames.shape[1:] == self.detector_shape)
        )

    def _pair(self, seq_num: int, frame=None, position=None) -> None:
        """Join a frame and a position that arrive in different documents (StreamDatum, event)."""
        if frame is not None:
            self.frames_by_seq_num[seq_num] = frame
        if position is not None:
            self.positions_by_seq_num[seq_num] = position
        if seq_num in self.frames_by_seq_num and seq_num in self.positions_by_seq_num:
            self._accept(seq_num, self.frames_by_seq_num.pop(seq_num), self.positions_by_seq_num.pop(seq_num))

    def _accept(self, seq_num: int, frame: np.ndarray | FramePoint, position: tuple[float, float]) -> None:
        point = frame if isinstance(frame, FramePoint) else None
        if point is None or self.preparation is None:
            frame = _as_image(frame if point is None else self.external.read_point(point))
            problem = _frame_problem(frame, position, self.detector_shape)
        else:  # read by the runner's worker: its file's frames are all of one shape and type
            problem = _position_problem(position)
        if problem is None and seq_num in self.seq_nums:
            problem = ("duplicate seq_num", "a second frame with this seq_num")
        area = self.scan.scan_area
        if problem is None and area is not None and not area.admits(position, self.scan.field_of_view_m):
            problem = ("outside scan area", f"position {position} m is outside the planned scan_area")
        if problem is not None:
            kind, message = problem
            self.problems.add(kind, f"event {seq_num}: {message} (skipped)")
            return
        if self.detector_shape is None:
            self._set_detector_shape(frame.shape)  # the first frames are read here, by reference too
        self.seq_nums.add(seq_num)
        if not self.since_preview and not self.unprepared:
            self.frames_since = time.monotonic()
        if self.preparation is not None:
            self._collect(seq_num, frame if point is None else point, position)
            return
        self.unprepared.append((seq_num, frame, position, point))
        if len(self.unprepared) >= (CENTRE_FRAMES if self.owner.detector_settings.measures_centre else 1):
            self._prepare_frames()

    def _set_detector_shape(self, shape: tuple[int, int]) -> None:
        """The frames as recorded are of ``shape``: the reconstruction's are known, and its probe can be looked up."""
        self.detector_shape = shape
        self.frame_shape = self.owner.detector_settings.frame_shape(shape)
        self._look_up_probe()

    def _prepare_frames(self) -> None:
        """Fix the region and mask of the frames from the first ones, and take those; the scan fails if none fits."""
        first, self.unprepared = self.unprepared, []
        preparation = FramePreparation(self.owner.detector_settings, *(self.detector_file_facts or ()))
        try:
            preparation.fix(np.asarray([frame for _, frame, _, _ in first]))
        except DetectorError as error:
            self.owner.closed(self)
            self.abandon(f"the detector frames cannot be used: {error}")
            return
        self.preparation = preparation
        for seq_num, frame, position, point in first:
            self._collect(seq_num, frame if point is None else point, position)

    def _collect(self, seq_num: int, raw: np.ndarray | FramePoint, position: tuple[float, float]) -> None:
        """Take one checked frame as recorded (``raw``, or its reference) into the next job."""
        if isinstance(raw, FramePoint):
            self._take(raw, position)
            return
        if saturated := self.preparation.saturated(raw):
            self.problems.add(
                "saturated",
                f"event {seq_num}: {saturated} pixels at or above the saturation count "
                f"{self.preparation.saturation:g}, used as recorded",
            )
        frame = self.preparation.prepare(raw)
        if frame.dtype.kind != "u" and frame.min() < 0:
            self.problems.add("negative counts", f"event {seq_num}: negative counts, set to 0")
            frame = np.clip(frame, 0, None)
        self._take(frame, position)

    def _take(self, frame: np.ndarray | FramePoint, position: tuple[float, float]) -> None:
        inline = isinstance(frame, np.ndarray)
        pool = getattr(self.owner.runner, "block_pool", None)
        if not self.frames and inline and pool is not None:
            self.frames = SharedFrames(self.frame_shape, pool=pool)  # the next job's, for the worker to map
        if isinstance(self.frames, SharedFrames):
            self.frames.append(frame if inline else self._read(frame))
        else:
            self.frames.append(frame)
        self.positions.append(position)
        self.collected += 1
        self.since_preview += 1
        if self.owner.preview_every and self.since_preview >= self.owner.preview_every:
            self._preview()
        elif len(self.frames) >= INTAKE_FRAMES and getattr(self.owner.runner, "keeps_frames", False):
            self._send_frames()

    def stop(self, doc: dict) -> None:
        exit_status = doc.get("exit_status", "success")
        counted = sum(doc.get("num_events", {}).get(stream, 0) for stream in self.frame_streams)
        if exit_status != "success":
            self._end(f"partial: the raw scan ended with exit_status {exit_status!r}")
        elif counted > self.events:  # a lossy bus (0MQ) drops documents without a word
            self._end(
                f"partial: {counted - self.events} of the scan's {counted} events never came here "
                "(the document bus lost them)"
            )
        else:
            self._end("")

    def end_without_stop(self, why: str) -> None:
        """End the scan whose stop document will not come (``why``): the frames taken make a partial final."""
        self._end(f"partial: the scan's stop document never came here ({why})")

    def _end(self, partial: str) -> None:
        """No frames will come: the final, of every frame taken; ``partial``: why it lacks some, or ''."""
        if partial:
            logger.warning("scan %s: %s", self.uid, partial)
        if self.unprepared:  # fewer frames than fixing the region waits for
            self._prepare_frames()
            if self.abandoned:
                return
        self.stopped = True
        self.owner.closed(self)
        self.external.close()
        if not self.is_ptycho:  # an alignment scan, a count: nothing to reconstruct, nothing to record
            logger.debug(
                "run %s is not a ptychography scan (no start['ptycho'], no frame key): ignored", self.uid
            )
            return
        if self.frames_by_seq_num or self.positions_by_seq_num:
            self.problems.add(
                "unpaired",
                f"{len(self.frames_by_seq_num)} frames without positions and "
                f"{len(self.positions_by_seq_num)} positions without frames were left unused",
            )
        if self.error is not None or self.scan is None:
            self.writer.close("fail", reason=self.error or "no descriptor of the frames came")
            return
        if self.collected == 0:
            reason = "; ".join(["the scan recorded no diffraction frames", *self.problems.summary()])
            self.writer.close("fail", reason=reason)
            return
        if self._probe_pending():  # the final is the scan's first job: it goes once the lookup answers
            self._when_probe_known(lambda: self._submit_final(partial))
        else:
            self._submit_final(partial)

    def _submit_final(self, partial: str) -> None:
        job = self._job(self.owner.settings.iterations, final=True)
        self.external.close()  # reopened if the last frames had to be read here
        future = self.owner.runner.submit(job)
        self.owner.when_done(future, lambda f: self._finish(f, partial))

    # --- work --------------------------------------------------------------

    def _job(self, iterations: int, final: bool, frames_only: bool = False) -> ReconstructionJob:
        seconds = None if final or frames_only else self._preview_seconds()
        frames = self._job_frames()
        positions = np.asarray(self.positions, dtype=float).reshape(-1, 2)
        self.frames, self.positions = [], []  # the runner holds them from now on
        if not frames_only:
            self.since_preview = 0
        self.jobs += 1
        return ReconstructionJob(
            scan_uid=self.uid,
            geometry=self.scan.geometry(self.frame_shape),
            settings=self.owner.settings if final else self.owner.preview_settings,
            frames=frames,
            positions=positions,
            iterations=iterations,
            final=final,
            probe=self._first_probe() if self.jobs == 1 else None,
            seconds=seconds,
            mask=self.preparation.mask,
            frames_only=frames_only,
        )

    def _job_frames(self) -> np.ndarray | FileFrames | SharedFrames:
        """The frames taken since the last job: counts, in shared memory, or references the runner's worker reads."""
        if isinstance(self.frames, SharedFrames):
            return self.frames
        if self.frames and all(isinstance(frame, FramePoint) for frame in self.frames):
            reshaped = self.owner.detector_settings.reshapes
            return FileFrames.of_points(
                self.frames,
                region=self.preparation.region if reshaped else None,
                saturation=self.preparation.saturation,
                mask=self.preparation.mask,
            )
        frames = [self._read(frame) if isinstance(frame, FramePoint) else frame for frame in self.frames]
        return np.asarray(frames).reshape(-1, *self.frame_shape)

    def _read(self, point: FramePoint) -> np.ndarray:
        """A frame by reference read here, prepared (where frames of both kinds come to one job)."""
        return self.preparation.prepare(self.external.read_point(point))

    def _preview_seconds(self) -> float | None:
        """The next preview's time budget: the callback's, or a share of the time its frames took to arrive."""
        given = self.owner.preview_seconds
        if given is not None:
            return None if given == math.inf else given
        if self.preview_overhead is None:
            return PREVIEW_MIN_SECONDS
        share = PREVIEW_SHARE * (time.monotonic() - self.frames_since) - self.preview_overhead
        return max(PREVIEW_MIN_SECONDS, share)

    def _look_up_probe(self) -> None:
        """Start finding the scan's initial probe (the owner's ``initial_probe``) once its geometry is known."""
        if self.probe_lookup is None and self.scan is not None:
            self.probe_lookup = self.owner.look_up_probe(self.scan.geometry(self.frame_shape))
            self.probe_deadline = time.monotonic() + PROBE_LOOKUP_WAIT

    def _lookup_time_left(self) -> float:
        """Seconds the scan's first job may still wait for its initial probe's lookup (0: no more)."""
        return max(0.0, self.probe_deadline - time.monotonic())

    def _probe_pending(self) -> bool:
        """Whether the scan's first job is still to wait for its initial probe (which no job does on the caller's thread)."""
        return (
            self.jobs == 0
            and self.probe_lookup is not None
            and not self.probe_lookup.done()
            and self._lookup_time_left() > 0
        )

    def _when_probe_known(self, then: Callable[[], None]) -> None:
        """Call ``then()`` once the probe lookup has answered or its time is up, from a thread of its own."""
        known: Future = Future()

        def wait_for_lookup() -> None:
            wait([self.probe_lookup], timeout=self._lookup_time_left())
            known.set_result(None)

        self.owner.when_done(known, lambda _: then())
        threading.Thread(target=wait_for_lookup, name="ptycho-probe-wait", daemon=True).start()

    def _first_probe(self) -> np.ndarray | None:
        """The initial probe that the scan's lookup found, or None (built from the frames; why is recorded)."""
        if self.probe_lookup is None:
            return None
        try:
            probe, self.probe_source = self.probe_lookup.result(timeout=self._lookup_time_left())
            return probe
        except (LookupError, ValueError) as refused:
            reason = str(refused)
        except TimeoutError:
            reason = f"the catalog did not answer within {PROBE_LOOKUP_WAIT} s"
        except Exception as error:  # the catalog's own errors (HTTP, connection)
            reason = f"looking it up failed: {error}"
        self.problems.add("initial probe", f"initial probe refused, built from the frames instead: {reason}")
        return None

    def _busy(self) -> bool:
        """Whether the runner is still doing this scan's last job."""
        return self.in_flight is not None and not self.in_flight.done()

    def _preview(self) -> None:
        if not self.owner.queue_previews and self._busy():
            return  # the runner is busy: these frames join the next job
        if self._probe_pending():
            return  # the initial probe is still being looked up: these frames join the next job
        job = self._job(self.owner.preview_iterations, final=False)
        submitted = time.monotonic()
        future = self.owner.runner.submit(job)
        self.in_flight = future
        self.owner.when_done(future, lambda done: self._previewed(done, submitted))

    def _send_frames(self) -> None:
        """Hand the frames taken so far to the runner to store, unless it is busy with the scan (they wait)."""
        if self._busy() or self._probe_pending():
            return
        future = self.owner.runner.submit(self._job(0, final=False, frames_only=True))
        self.in_flight = future
        self.owner.when_done(future, self._frames_sent)

    def _frames_sent(self, future: Future) -> None:
        error = future.exception()
        if error is not None:
            self.problems.add(f"intake:{type(error).__name__}", f"taking frames in failed: {error}")

    def _previewed(self, future: Future, submitted: float) -> None:
        error = future.exception()
        if error is not None:
            self.problems.add(f"preview:{type(error).__name__}", f"preview failed: {error}")
            return
        in_worker = future.result().extra.get("preview", {}).get("seconds")
        if in_worker is not None:
            self.preview_overhead = max(0.0, time.monotonic() - submitted - in_worker)
        if self.stopped:  # superseded: the final continues from it, with every frame, and is what is awaited
            logger.debug("scan %s: a preview that finished after the scan's stop is not recorded", self.uid)
            return
        self.writer.add_result(self._recorded(future), final=False)
        self.owner.notify(self.uid, future.result(), final=False)

    def _finish(self, future: Future, partial: str) -> None:
        error = future.exception()
        if error is not None:
            logger.error("scan %s: reconstruction failed: %s", self.uid, error)
            self.writer.close("fail", reason=f"reconstruction failed: {type(error).__name__}: {error}")
            return
        try:
            self.writer.add_result(self._recorded(future), final=True, partial=bool(partial))
        except ValueError as error:
            self.writer.close("fail", reason=f"the result could not be recorded: {error}")
            return
        saturated = future.result().extra.get("saturated_frames", 0)
        if saturated:  # counted where the frames were read: the runner's worker
            self.problems.add(
                "saturated",
                f"{saturated} frames read by the worker hold pixels at or above the saturation count "
                f"{self.preparation.saturation:g}, used as recorded",
            )
        reason = "; ".join(filter(None, [partial, *self.problems.summary(), *future.result().warnings]))
        self.writer.close("success", reason=reason)
        self.owner.notify(self.uid, future.result(), final=True)

    def _recorded(self, future: Future) -> ReconstructionResult:
        """The job's result, saying where its initial probe came from when the callback gave it."""
        result = future.result()
        if self.probe_source is not None:
            result.extra["probe_source"] = self.probe_source
        if self.owner.detector_settings.reshapes:
            result.extra["detector_region"] = self.preparation.record()
        return result
