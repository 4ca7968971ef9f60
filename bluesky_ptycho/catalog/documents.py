"""Reconstructions as event-model documents: one run per reconstructed scan.

The run's start document links to the raw scan (``raw_uid``, ``raw_scan_id``)
and records the solver settings, version and where the work ran; its
``primary`` stream has one event per preview and one for the final result;
its stop document says honestly how it ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from event_model import compose_run

from .. import __version__
from ..solver.data import ReconstructionResult
from ..solver.scan_area import ObjectCanvas, ScanArea

DocumentCallback = Callable[[str, dict], Any]
PLAN_NAME = "ptycho_reconstruction"


def complex_as_pairs(array: np.ndarray) -> np.ndarray:
    """A complex64 array as float32 with a trailing (real, imaginary) axis of 2 (no copy)."""
    array = np.ascontiguousarray(array, dtype=np.complex64)
    return array.view(np.float32).reshape(*array.shape, 2)


def pairs_as_complex(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`complex_as_pairs`."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array.view(np.complex64)[..., 0]


def with_modes(probe: np.ndarray, modes: int) -> np.ndarray:
    """``probe`` (modes, H, W) with zero modes appended up to ``modes``.

    Raises
    ------
    ValueError
        If the probe has more than ``modes`` modes.
    """
    if len(probe) > modes:
        raise ValueError(f"the probe has {len(probe)} modes, more than the {modes} the run declared")
    return np.concatenate([probe, np.zeros((modes - len(probe), *probe.shape[1:]), probe.dtype)])


def reconstruction_data_keys(
    probe_shape: tuple[int, int, int], object_shape: tuple[int, int] | None = None
) -> dict[str, dict]:
    """Descriptor data keys of a reconstruction event (shapes that grow are None).

    Complex arrays (object, probe) are stored as float32 with a trailing
    (real, imaginary) axis, which every array store understands. The object
    has ``object_shape`` when every result is placed on one canvas; otherwise
    its shape grows with the scan (a ragged array, far slower to store).
    """

    def key(
        dtype: str,
        shape: list,
        units: str | None = None,
        description: str | None = None,
        dtype_numpy: str = "<f8",
    ) -> dict:
        described = {"source": "bluesky-ptycho", "dtype": dtype, "shape": shape}
        if dtype == "array":
            described["dtype_numpy"] = dtype_numpy
        if units:
            described["units"] = units
        if description:
            described["description"] = description
        return described

    pairs = "complex as (..., 2) real/imaginary float32"
    return {
        "object": key("array", [*(object_shape or (None, None)), 2], description=pairs, dtype_numpy="<f4"),
        "probe": key("array", [*probe_shape, 2], description=pairs, dtype_numpy="<f4"),
        "positions": key("array", [None, 2], "m"),
        "pixel_size": key("array", [2], "m"),
        "object_origin": key("array", [2], "m"),
        "iteration": key("integer", []),
        "n_frames": key("integer", []),
        "cost": key("number", []),
        "wall_time": key("number", [], "s"),
        "probe_defocus": key("number", [], "m", "initial-probe defocus used (given or estimated)"),
        "final": key("boolean", []),
        "partial": key("boolean", []),
    }


class ReconstructionRunWriter:
    """Emits the documents of one reconstruction run as its results arrive.

    Parameters
    ----------
    emit
        Receives ``(name, doc)``: a TiledWriter, a databroker/RunRouter, a list's append.
    raw_start
        The raw scan's start document.
    settings
        The solver settings (a plain dictionary).
    location
        Where the work runs (the runner's ``location``).
    scan_area
        The area the raw scan is planned to cover, when known: every object
        is then stored on one canvas that covers it (``object_origin`` is that
        canvas's), so the catalog holds the objects as one regular array.
        May be set later (the attribute), until the first result is written.
    probe_modes
        The most probe modes any result of the run has (previews may have
        fewer than the final): every probe is stored with this many, the
        missing ones as zeros (which :func:`~.queries.result_from_run` drops),
        so the catalog holds the probes as one regular array.
    """

    def __init__(
        self,
        emit: DocumentCallback,
        raw_start: dict,
        settings: dict,
        location: str,
        scan_area: ScanArea | None = None,
        probe_modes: int | None = None,
    ) -> None:
        self._emit = emit
        self._probe_modes = probe_modes
        self.scan_area = scan_area
        self._canvas: ObjectCanvas | None = None
        self._lock = threading.Lock()
        self._bundle = compose_run(
            metadata={
                "plan_name": PLAN_NAME,
                "raw_uid": raw_start["uid"],
                "raw_scan_id": raw_start.get("scan_id"),
                "ptycho_solver": {"settings": settings, "version": __version__, "location": location},
            }
        )
        self._descriptor = None
        self._started = False
        self._closed = False

    @property
    def uid(self) -> str:
        """uid of the reconstruction run."""
        return self._bundle.start_doc["uid"]

    def _start(self, result: ReconstructionResult | None = None) -> None:
        if not self._started:
            if result is not None and result.geometry is not None:
                self._bundle.start_doc["ptycho_geometry"] = result.geometry.to_dict()
            if result is not None and "probe_source" in result.extra:
                self._bundle.start_doc["ptycho_probe_source"] = result.extra["probe_source"]
            self._emit("start", self._bundle.start_doc)
            self._started = True

    def add_result(self, result: ReconstructionResult, final: bool, partial: bool = False) -> None:
        """Emit one event for a preview (``final=False``) or the final result.

        ``partial`` marks a result of a scan that ended before all its frames
        were taken (aborted or failed).

        Raises
        ------
        ValueError
            If the object does not fit the planned scan area's canvas.
        """
        with self._lock:
            if self.scan_area is not None and self._canvas is None:
                self._canvas = self.scan_area.canvas_for(result)
            if self._canvas is None:
                obj, origin = result.object, result.object_origin
            else:
                obj, origin = self._canvas.place(result), self._canvas.origin
            self._start(result)
            probe = with_modes(result.probe, self._probe_modes or len(result.probe))
            if self._descriptor is None:
                self._descriptor = self._bundle.compose_descriptor(
                    name="primary",
                    data_keys=reconstruction_data_keys(probe.shape, obj.shape if self._canvas else None),
                )
                self._emit("descriptor", self._descriptor.descriptor_doc)
            data = {
                "object": complex_as_pairs(obj),
                "probe": complex_as_pairs(probe),
                "positions": result.positions,
                "pixel_size": np.asarray(result.pixel_size),
                "object_origin": np.asarray(origin),
                "iteration": result.iterations,
                "n_frames": result.n_frames,
                "cost": result.final_cost,
                "wall_time": result.wall_time,
                "probe_defocus": float(result.extra.get("probe_defocus", np.nan)),
                "final": final,
                "partial": partial,
            }
            now = time.time()
            event = self._descriptor.compose_event(data=data, timestamps=dict.fromkeys(data, now))
            self._emit("event", event)

    def close(self, exit_status: str = "success", reason: str = "") -> None:
        """Emit the stop document (once): "success", "fail" (with ``reason``) or "abort"."""
        with self._lock:
            if self._closed:
                return
            self._start()
            self._emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))
            self._closed = True
