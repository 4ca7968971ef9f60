"""The RunEngine side: collect frames and positions, trigger reconstructions.

:class:`PtychoCallback` is subscribed to the RunEngine (or a document bus).
An event-model ``RunRouter`` (:class:`~.routing.EventRouter`) gives every run its own
:class:`~.scan.ScanReconstruction`, behind a :class:`~.normalizing.LegacyNormalizer`
(legacy Resource/Datum become StreamResource/StreamDatum),
so per-run state lives in one object. The scan reads its metadata
(:mod:`bluesky_ptycho.scan_metadata`), collects frames and positions from
events and event pages (frames inline, or in HDF5 files that
StreamResource/StreamDatum point to), hands reconstruction jobs to a runner
(previews every ``preview_every`` frames, a final one after the stop
document) and passes every result or failure to a
:class:`~bluesky_ptycho.catalog.ReconstructionRunWriter`.

It never blocks the RunEngine (the work runs on the runner) and never raises
into it: ``RE.ignore_callback_exceptions`` is False by default, so an
exception escaping a callback would abort the user's scan. Problems are
logged with the run uid and recorded in the reconstruction run instead.
Documents of runs it did not see start (a service that joined mid-scan) are
held back by :class:`~.arrivals.RunArrivals` and recorded as not reconstructed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog.documents import DocumentCallback, ReconstructionRunWriter
from ..catalog.queries import latest_probe_for
from ..federation.jobs import Runner
from ..federation.local import LocalRunner
from ..io import read_result
from ..scan_metadata import ConfigurationSignals, configuration_metadata
from ..solver.data import Geometry, ReconstructionResult
from ..solver.detector import DetectorSettings
from ..solver.probe import reusable_probe
from ..solver.settings import ReconstructionSettings
from .arrivals import RunArrivals
from .normalizing import LegacyNormalizer
from .routing import EventRouter
from .scan import Problems, ScanReconstruction

logger = logging.getLogger(__name__)


def earlier_result(source: str | Path | ReconstructionResult) -> tuple[ReconstructionResult, str]:
    """An earlier reconstruction whose probe a new one starts from, and where it came from in words.

    ``source`` is a result file's path ("file PATH") or a result read from
    the catalog ("reconstruction UID").
    """
    if isinstance(source, ReconstructionResult):
        return source, f"reconstruction {source.extra.get('run_uid', '(not in a catalog)')}"
    return read_result(source), f"file {source}"


class PtychoCallback:
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
        Iterations of each preview, at most.
    preview_seconds
        Each preview's time budget (:meth:`.Reconstructor.preview`): its
        iterations visit the frames new since the last preview first, then
        as many of the others as the time allows, so a preview's cost stays
        bounded however large the scan has grown; counted from the job's
        start in the worker, less what storing its frames took before it (a
        runner that ``keeps_frames`` gets them as they arrive, in frames-only
        jobs). None (default): ``PREVIEW_MIN_SECONDS`` for the
        scan's first; for later ones 0.6 of the time their frames took to
        arrive, less the time the last preview spent outside its job (at
        least ``PREVIEW_MIN_SECONDS``), so that each ends before the next
        preview's frames are in.
        ``math.inf``: every iteration over every frame.
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
    detector_settings
        How raw detector frames become reconstruction frames: the region
        around the beam centre (given, or measured from the bright field),
        binning, saturation and pixel mask (:class:`DetectorSettings`).
        Default: frames as recorded, masked by the pixel mask of the
        detector's file where it holds one (an Eiger master file).
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
        preview_seconds: float | None = None,
        queue_previews: bool = False,
        on_result: Callable[[str, ReconstructionResult, bool], Any] | None = None,
        initial_probe: str | Path | ReconstructionResult | None = None,
        catalog: Any = None,
        configuration_signals: ConfigurationSignals | None = None,
        detector_settings: DetectorSettings | None = None,
        **geometry: Any,
    ) -> None:
        if initial_probe == "latest" and catalog is None:
            raise ValueError("initial_probe='latest' needs the catalog to look in: pass catalog=")
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
        if preview_seconds is not None and not preview_seconds > 0:
            raise ValueError(
                f"preview_seconds must be a positive number of seconds or None, got {preview_seconds!r}"
            )
        self.preview_seconds = preview_seconds
        self.queue_previews = queue_previews
        self.on_result = on_result
        self.initial_probe = initial_probe
        # a given probe, read once: (result, where it came from)
        self._given_probe = None if initial_probe in (None, "latest") else earlier_result(initial_probe)
        self.catalog = catalog
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycho-probe-lookup")
        self.geometry_overrides = geometry
        self.detector_settings = detector_settings or DetectorSettings()
        self.configuration_signals = dict(configuration_signals or {})
        configuration_metadata({}, self.configuration_signals)  # a key that cannot be configured fails here
        self._router = EventRouter([self._factory])
        self._arrivals = RunArrivals(self._missed)
        self._scans: dict[str, ScanReconstruction] = {}  # open, by run uid: for what the router cannot place
        self._unrecorded: dict[str, ScanReconstruction] = {}  # whose reconstruction is not recorded yet
        self._unattributed = Problems("(unknown run)")  # documents of no open run
        self._pending: list[threading.Event] = []

    def __call__(self, name: str, doc: dict) -> tuple[str, dict]:
        try:
            if self._arrivals.admit(name, doc):
                self._router(name, doc)
        except Exception as error:  # never let an exception reach the RunEngine
            self._problems_of(name, doc).add(
                f"{name}:{type(error).__name__}", f"{name}: {type(error).__name__}: {error}", exc_info=error
            )
        return name, doc

    def _problems_of(self, name: str, doc: dict) -> Problems:
        """Where a document's problem is recorded: its run's, the one open run's, or the unattributed."""
        run = doc.get("run_start") if name != "start" else doc.get("uid")
        scan = self._scans.get(run) if isinstance(run, str) else None
        if scan is None and len(self._scans) == 1 and name not in ("start", "stop"):
            (scan,) = self._scans.values()  # a document of an unknown descriptor or resource: the open run's
        return self._unattributed if scan is None else scan.problems

    def _factory(self, name: str, start: dict) -> tuple[list, list]:
        """The callbacks of one run: its scan reconstruction, behind a normalizer of legacy documents."""
        scan = ScanReconstruction(self, start)
        self._scans[start["uid"]] = scan
        self._unrecorded = {uid: each for uid, each in self._unrecorded.items() if not each.recorded}
        self._unrecorded[start["uid"]] = scan
        normalizer = LegacyNormalizer()
        normalizer.subscribe(scan)
        return [normalizer], []

    def closed(self, scan: ScanReconstruction) -> None:
        """``scan`` had its stop document."""
        self._scans.pop(scan.uid, None)

    def abandon(self, reason: str, *, running: bool = False) -> int:
        """Give up the scans still taking frames (with ``running``, also those still reconstructing).

        Each is recorded as failed with ``reason`` (a scan already recorded
        keeps its record); their later documents and results are dropped.
        A service calls this when it stops, or when its bus lost documents.
        Returns how many reconstructions were recorded as failed.
        """
        scans = list(self._unrecorded.values() if running else self._scans.values())
        for scan in scans:
            self._scans.pop(scan.uid, None)
        return sum(scan.abandon(reason) for scan in scans)

    def end_open_scans(self, why: str, but: str | None = None) -> int:
        """End the scans still taking frames (but run ``but``) whose stop documents will not come (``why``); how many.

        Each is reconstructed from the frames it took, its final marked
        partial with ``why``. A service on a bus that loses documents calls
        this when the next scan starts (a RunEngine runs one scan at a time).
        """
        scans = [scan for uid, scan in self._scans.items() if uid != but]
        for scan in scans:
            scan.end_without_stop(why)
        return len(scans)

    def _missed(self, run_uid: str, descriptor: dict | None) -> None:
        """Record a scan whose documents came without its start: not reconstructed, and why."""
        keys = [self.geometry_overrides.get(key) for key in ("data_key", "x_key", "y_key")]
        if descriptor is None or not _has_frames(descriptor["data_keys"], keys):
            logger.warning("run %s: documents without its start document were ignored", run_uid)
            return
        reason = (
            "not reconstructed: its start document never came here (the reconstruction began "
            "listening during the scan, or the document bus lost documents)"
        )
        logger.error("scan %s: %s", run_uid, reason)
        self.record_of({"uid": run_uid}).close("fail", reason=reason)

    def record_of(self, raw_start: dict) -> ReconstructionRunWriter:
        """The record of the reconstruction of the scan that ``raw_start`` began, with these settings."""
        return ReconstructionRunWriter(
            self.emit_reconstruction,
            raw_start,
            self.settings.to_dict(),
            getattr(self.runner, "location", "?"),
            probe_modes=max(self.settings.probe_modes, self.preview_settings.probe_modes),
        )

    def look_up_probe(self, geometry: Geometry) -> Future | None:
        """Start finding the initial probe for a scan of ``geometry`` (see ``initial_probe``); None: build it.

        It runs in a thread of its own, so a slow or absent catalog never
        holds up the RunEngine; the scan's first job takes what it found.
        """
        if self.initial_probe is None:
            return None
        return self._lookups.submit(self._initial_probe, geometry)

    def _initial_probe(self, geometry: Geometry) -> tuple[np.ndarray, str]:
        """The probe for a scan of ``geometry`` and where it came from.

        Raises
        ------
        LookupError, ValueError
            Why no probe fits (nothing in the catalog, a mismatch).
        """
        result, source = self._given_probe or earlier_result(latest_probe_for(self.catalog, geometry))
        return reusable_probe(result, geometry, source), source

    def notify(self, raw_uid: str, result: ReconstructionResult, final: bool) -> None:
        """Pass a result to ``on_result``."""
        if self.on_result is not None:
            self.on_result(raw_uid, result, final)

    def when_done(self, future: Future, handle: Callable[[Future], None]) -> None:
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

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted reconstruction is finished and recorded.

        Work that handling submits (a final that waited for its probe) is
        waited for too. Returns False if ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending := [event for event in self._pending if not event.is_set()]:
            for event in pending:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not event.wait(left):
                    return False
        return True


def _has_frames(data_keys: dict, keys: list[str | None]) -> bool:
    """Whether a descriptor's ``data_keys`` hold diffraction frames: the configured keys, or any image."""
    if keys[0] is not None:
        return all(key in data_keys for key in keys if key is not None)
    return any(sum(n > 1 for n in spec.get("shape") or []) >= 2 for spec in data_keys.values())


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
