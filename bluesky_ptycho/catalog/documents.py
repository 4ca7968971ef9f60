"""Reconstructions as event-model documents: one run per reconstructed scan.

The run's start document links to the raw scan (``raw_uid``, ``raw_scan_id``)
and records the solver settings, version and where the work ran; its
``primary`` stream has one event per preview done while the scan ran and one
for the final result; its stop document says honestly how it ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from event_model import compose_run

from .. import __version__
from ..solver.data import ReconstructionResult
from ..solver.pages import ordinary_empty
from ..solver.scan_area import ObjectCanvas, ScanArea

logger = logging.getLogger(__name__)
DocumentCallback = Callable[[str, dict], Any]
PLAN_NAME = "ptycho_reconstruction"
# the stream of a result's probe varying through the scan, when it has one (:mod:`..solver.variable_probe`)
VARIABLE_PROBE = "variable_probe"


def as_polar(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A complex array as its amplitude and phase (radians), float32 images any viewer shows."""
    array = np.asarray(array)
    amplitude, phase = ordinary_empty(array.shape, np.float32), ordinary_empty(array.shape, np.float32)
    np.abs(array, out=amplitude, casting="same_kind")
    np.arctan2(array.imag, array.real, out=phase, casting="same_kind")
    return amplitude, phase


def from_polar(amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Inverse of :func:`as_polar`: the complex64 array."""
    return (np.asarray(amplitude) * np.exp(1j * np.asarray(phase))).astype(np.complex64)


def padded_frames(values: np.ndarray, n_points: int | None) -> np.ndarray:
    """Per-frame ``values`` (N, ...) padded with NaN rows to the scan's ``n_points``, so every event has one shape."""
    if n_points is None or len(values) > n_points:
        return values
    return np.concatenate([values, np.full((n_points - len(values), *values.shape[1:]), np.nan)])


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
    probe_shape: tuple[int, int, int],
    object_shape: tuple[int, int] | None = None,
    n_points: int | None = None,
) -> dict[str, dict]:
    """Descriptor data keys of a reconstruction event (shapes that grow are None).

    Object and probe are stored as float32 amplitude and phase images, which
    Tiled's web interface and image endpoint show as they are. The object has
    ``object_shape`` when every result is placed on one canvas, and the
    positions ``n_points`` rows (NaN where no frame was taken yet) when the
    scan's number of points is known; otherwise they grow with the scan
    (ragged arrays: far slower to store, and not shown by the web interface).
    """
    obj = list(object_shape or (None, None))
    return {
        "object_amplitude": _data_key("array", obj, dtype_numpy="<f4"),
        "object_phase": _data_key("array", obj, "rad", dtype_numpy="<f4"),
        "probe_amplitude": _data_key("array", list(probe_shape), "sqrt(photons)", dtype_numpy="<f4"),
        "probe_phase": _data_key("array", list(probe_shape), "rad", dtype_numpy="<f4"),
        "positions": _data_key("array", [n_points, 2], "m", "x, y of each frame; NaN: not yet taken"),
        "frame_scales": _data_key(
            "array",
            [n_points],
            description="each frame's beam amplitude relative to the scan's mean (NaN: not corrected, not taken)",
        ),
        # scalars, not 2-vectors: a table cell of the catalog would hold a vector as text
        "pixel_size_y": _data_key("number", [], "m", "object pixel height"),
        "pixel_size_x": _data_key("number", [], "m", "object pixel width"),
        "object_origin_x": _data_key("number", [], "m", "x of the object's first pixel"),
        "object_origin_y": _data_key("number", [], "m", "y of the object's first pixel"),
        "iteration": _data_key("integer", [], description="iterations so far, previews included"),
        "n_frames": _data_key("integer", []),
        "frames_visited": _data_key(
            "integer",
            [],
            description="frames this result's iterations visited (a preview's share of n_frames)",
        ),
        "cost": _data_key("number", []),
        "wall_time": _data_key("number", [], "s"),
        "probe_defocus": _data_key("number", [], "m", "initial-probe defocus used (given or estimated)"),
        "positions_moved_rms": _data_key(
            "number", [], "pixel", "rms of how far position refinement moved the positions (NaN: not refined)"
        ),
        "positions_moved_max": _data_key(
            "number", [], "pixel", "the furthest position refinement moved one (NaN: not refined)"
        ),
        "final": _data_key("boolean", []),
        "partial": _data_key("boolean", []),
    }


def variable_probe_data_keys(
    eigen_shape: tuple[int, int, int], n_points: int | None = None
) -> dict[str, dict]:
    """Descriptor data keys of the :data:`VARIABLE_PROBE` stream: the eigen-probes and each frame's weights.

    Frame ``j``'s first probe mode is ``probe[0] + sum_k eigen_weights[j, k] * eigen_probes[k]``;
    ``iteration`` names the primary stream's event (the result) they belong to.
    """
    return {
        "eigen_probe_amplitude": _data_key("array", list(eigen_shape), "sqrt(photons)", dtype_numpy="<f4"),
        "eigen_probe_phase": _data_key("array", list(eigen_shape), "rad", dtype_numpy="<f4"),
        "eigen_weights": _data_key(
            "array", [n_points, eigen_shape[0]], description="each frame's weights; NaN: not yet taken"
        ),
        "iteration": _data_key("integer", [], description="the result's, in the primary stream"),
    }


def frames_visited(result: ReconstructionResult) -> int:
    """Frames the iterations of the job that gave ``result`` visited: a time-bounded preview's share, or all."""
    return int(result.extra.get("preview", {}).get("frames_visited", result.n_frames))


def _data_key(
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
        self._n_points = raw_start.get("num_points")
        self._descriptor = None
        self._convergence = None  # the descriptor of the cost per iteration
        self._variable_probe = None  # the descriptor of the eigen-probes, once a result has them
        self._iterations_written = 0
        self._started = False
        self._closed = False

    @property
    def uid(self) -> str:
        """uid of the reconstruction run."""
        return self._bundle.start_doc["uid"]

    @property
    def closed(self) -> bool:
        """Whether the stop document was emitted."""
        return self._closed

    def _start(self, result: ReconstructionResult | None = None) -> None:
        if not self._started:
            if result is not None and result.geometry is not None:
                self._bundle.start_doc["ptycho_geometry"] = result.geometry.to_dict()
            for key in ("probe_source", "detector_region"):  # where the probe came from, the frames' region
                if result is not None and key in result.extra:
                    self._bundle.start_doc[f"ptycho_{key}"] = result.extra[key]
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
            if self._closed:  # given up (the service stopped, the scan was abandoned): nothing more to say
                logger.info("reconstruction %s is already closed: a late result is dropped", self.uid)
                return
            if self.scan_area is not None and self._canvas is None:
                self._canvas = self.scan_area.canvas_for(result)
            object_amplitude, object_phase = as_polar(result.object)
            origin = result.object_origin
            if self._canvas is not None:  # the rest holds the object's mean, as a growing canvas does
                amplitude, phase = as_polar(result.object.mean())
                object_amplitude = self._canvas.place(result, object_amplitude, amplitude)
                object_phase = self._canvas.place(result, object_phase, phase)
                origin = self._canvas.origin
            self._start(result)
            probe = with_modes(result.probe, self._probe_modes or len(result.probe))
            positions = padded_frames(result.positions, self._n_points)
            if self._descriptor is None:
                regular_positions = positions.shape[0] if positions.shape[0] == self._n_points else None
                self._descriptor = self._bundle.compose_descriptor(
                    name="primary",
                    data_keys=reconstruction_data_keys(
                        probe.shape, object_amplitude.shape if self._canvas else None, regular_positions
                    ),
                )
                self._emit("descriptor", self._descriptor.descriptor_doc)
            probe_amplitude, probe_phase = as_polar(probe)
            refinement = result.extra.get("position_refinement", {})
            data = {
                "object_amplitude": object_amplitude,
                "object_phase": object_phase,
                "probe_amplitude": probe_amplitude,
                "probe_phase": probe_phase,
                "positions": positions,
                "frame_scales": padded_frames(
                    np.full(result.n_frames, np.nan) if result.frame_scales is None else result.frame_scales,
                    self._n_points,
                ),
                "pixel_size_y": float(result.pixel_size[0]),
                "pixel_size_x": float(result.pixel_size[1]),
                "object_origin_x": float(origin[0]),
                "object_origin_y": float(origin[1]),
                "iteration": result.iterations,
                "n_frames": result.n_frames,
                "frames_visited": frames_visited(result),
                "cost": result.final_cost,
                "wall_time": result.wall_time,
                "probe_defocus": float(result.extra.get("probe_defocus", np.nan)),
                "positions_moved_rms": float(refinement.get("moved_rms_px", np.nan)),
                "positions_moved_max": float(refinement.get("moved_max_px", np.nan)),
                "final": final,
                "partial": partial,
            }
            now = time.time()
            self._add_convergence(result.cost_history, now)  # first: a live view draws on the event
            event = self._descriptor.compose_event(data=data, timestamps=dict.fromkeys(data, now))
            self._emit("event", event)
            self._add_variable_probe(result, now)

    def _add_variable_probe(self, result: ReconstructionResult, now: float) -> None:
        """Emit the result's eigen-probes and weights (:data:`VARIABLE_PROBE`), if its probe varies."""
        if result.eigen_probes is None:
            return
        weights = padded_frames(result.eigen_weights.astype(float), self._n_points)
        if self._variable_probe is None:
            regular = weights.shape[0] if weights.shape[0] == self._n_points else None
            self._variable_probe = self._bundle.compose_descriptor(
                name=VARIABLE_PROBE, data_keys=variable_probe_data_keys(result.eigen_probes.shape, regular)
            )
            self._emit("descriptor", self._variable_probe.descriptor_doc)
        amplitude, phase = as_polar(result.eigen_probes)
        data = {
            "eigen_probe_amplitude": amplitude,
            "eigen_probe_phase": phase,
            "eigen_weights": weights,
            "iteration": result.iterations,
        }
        self._emit(
            "event", self._variable_probe.compose_event(data=data, timestamps=dict.fromkeys(data, now))
        )

    def _add_convergence(self, cost_history: list[float], now: float) -> None:
        """Emit the costs of the iterations since the last result, one event per iteration."""
        new = cost_history[self._iterations_written :]
        if not new:
            return
        if self._convergence is None:
            self._convergence = self._bundle.compose_descriptor(
                name="convergence",
                data_keys={
                    "iteration": _data_key("integer", []),
                    "cost": _data_key("number", [], description="amplitude misfit"),
                },
            )
            self._emit("descriptor", self._convergence.descriptor_doc)
        first = self._iterations_written + 1
        data = {"iteration": list(range(first, first + len(new))), "cost": [float(cost) for cost in new]}
        page = self._convergence.compose_event_page(
            data=data,
            timestamps={key: [now] * len(new) for key in data},
            seq_num=data["iteration"],
            time=[now] * len(new),
        )
        self._emit("event_page", page)
        self._iterations_written = len(cost_history)

    def close(self, exit_status: str = "success", reason: str = "") -> None:
        """Emit the stop document (once): "success", "fail" (with ``reason``) or "abort"."""
        with self._lock:
            if self._closed:
                return
            self._start()
            self._emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))
            self._closed = True
