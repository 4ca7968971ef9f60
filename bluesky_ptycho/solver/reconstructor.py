"""The resumable reconstruction: grow the dataset, iterate, snapshot.

This is the object live reconstruction during a scan drives: frames arrive in
chunks (:meth:`Reconstructor.add_frames`), each preview continues from the
current estimate (:meth:`Reconstructor.iterate`), and :meth:`Reconstructor.result`
copies the current estimate to host memory at any time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import replace

import numpy as np
from scipy.spatial import cKDTree

from .algorithms import REGISTRY
from .backend import ArrayBackend, make_backend, to_numpy
from .communicator import Communicator
from .data import (
    Geometry,
    PtychoData,
    ReconstructionResult,
    geometry_warnings,
    validate_frames_and_positions,
    validate_mask,
    validate_probe,
)
from .defocus import check_defocus_sign, estimate_defocus
from .frames import MeasuredAmplitudes
from .intensity import FrameIntensity
from .iteration_cost import IterationCost
from .position_search import search_stuck_frames
from .positions import refinement_record
from .probe import add_modes, mode_rotation, normalize_power, probe_from_mean_pattern, rotate_modes
from .settings import ReconstructionSettings
from .state import SolverState, canvas_margin
from .variable_probe import VariableProbe

logger = logging.getLogger(__name__)


ProgressCallback = Callable[[int, float], None]

# a cost this many times its best since the frames last changed is divergence
DIVERGENCE_FACTOR = 10.0
# recoveries (best state restored, step lowered) before a diverging run fails
MAX_RECOVERIES = 3


def frame_photons(frames: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Photons in the good pixels of each frame of ``frames`` (N, H, W), with no temporary the size of the frames."""
    photons = frames.sum(axis=(1, 2), dtype=np.float64)
    if mask is not None:
        photons -= frames[:, ~mask].sum(axis=1, dtype=np.float64)
    return photons


def copied_into(target, source):
    """A copy of ``source``: into ``target`` when it is of the same shape and type, else a new array.

    Fresh memory is slow to touch the first time (about 1 s for a 400 MB
    canvas on a virtual machine, 0.03 s into memory already touched).
    """
    if target is None or target.shape != source.shape or target.dtype != source.dtype:
        return source.copy()
    target[...] = source
    return target


def with_data_defocus(settings: ReconstructionSettings, data: PtychoData) -> ReconstructionSettings:
    """``settings`` with the probe defocus ``data`` carry (a CXI file's) where the settings name none."""
    if data.probe_defocus is not None and settings.probe_defocus is None:
        return replace(settings, probe_defocus=data.probe_defocus)
    return settings


class Reconstructor:
    """A reconstruction that can grow and continue.

    Parameters
    ----------
    geometry
        Wavelength, detector distance, pixel size and frame shape.
    settings
        Algorithm and parameters; defaults to :class:`ReconstructionSettings()`.
    mask
        Optional (H, W) boolean, True where the detector pixel is good.
    probe
        Optional initial probe (modes, H, W) in the sample plane. Default: the
        inverse FFT of the square root of the mean diffraction pattern of the
        first frames, with ``settings.probe_defocus`` applied (measured from
        those frames when it is "auto" or None).
    object
        Optional initial object (2-D complex); default: a flat object of ones.
    object_origin
        (x, y) in metres of the initial object's top-left pixel, as in
        :attr:`ReconstructionResult.object_origin`; needed with ``object``.
    backend
        The array backend to compute with (default: the one
        ``settings.device``, ``fft_library`` and ``fft_workers`` describe).
    probe_source
        Where a given ``probe`` came from (a file, a reconstruction's uid),
        recorded as ``extra["probe_source"]``; a built probe records
        "defocus estimate" or "given defocus" with ``extra["probe_defocus"]``.
    communicator
        The ranks that share this scan (:mod:`.decomposition`), each with a
        reconstructor of its own frames, all making the same calls; default:
        one process. The initial probe and canvas come from every rank's
        frames; :meth:`preview` runs in one process only.

    Examples
    --------
    >>> rec = Reconstructor(geometry, ReconstructionSettings(algorithm="rpie"))
    >>> rec.add_frames(frames[:100], positions[:100])
    >>> rec.iterate(20)
    >>> rec.add_frames(frames[100:], positions[100:])
    >>> result = rec.iterate(50).result()
    """

    def __init__(
        self,
        geometry: Geometry,
        settings: ReconstructionSettings | None = None,
        *,
        mask: np.ndarray | None = None,
        probe: np.ndarray | None = None,
        object: np.ndarray | None = None,
        object_origin: tuple[float, float] | None = None,
        probe_source: str = "given probe",
        backend: ArrayBackend | None = None,
        communicator: Communicator | None = None,
    ) -> None:
        self.geometry = geometry
        # a copy: recovering from divergence lowers its steps (and the algorithm's options)
        self.settings = deepcopy(settings or ReconstructionSettings())
        self.backend = backend or make_backend(
            self.settings.device, self.settings.fft_library, self.settings.fft_workers
        )
        self.xp = self.backend.xp
        self.comm = communicator or Communicator()
        self.mask = None if mask is None else validate_mask(mask, geometry.frame_shape)
        self._initial_probe = None if probe is None else validate_probe(probe, geometry.frame_shape)
        self._probe_source = probe_source
        if object is not None and object_origin is None:
            raise ValueError("an initial object needs its object_origin (x, y) in metres")
        self._initial_object = None if object is None else np.asarray(object, dtype=np.complex64)
        self._origin = None if object_origin is None else np.asarray(object_origin, dtype=float)
        self.engine = REGISTRY[self.settings.algorithm].engine(self.settings)
        self.rng = np.random.default_rng(self.settings.seed)
        self.state: SolverState | None = None
        self.iteration = 0
        self.cost_history: list[float] = []
        self.wall_time = 0.0
        self.extra: dict = {}
        # in each frame's good pixels: the cost is normalised by them, intensity correction fits them
        self._photons = np.zeros(0)
        self._previewed = 0  # frames the previews have visited as new ones
        self._iteration_cost = IterationCost()
        self._coverage: dict | None = None  # what the last preview visited
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._best: tuple[float, np.ndarray] | None = None  # cost and positions, since the frames changed
        self._best_arrays: tuple | None = None  # its object and probe, overwritten in place from then on
        for warning in geometry_warnings(geometry):
            self._warn(warning)

    @classmethod
    def from_data(cls, data: PtychoData, settings: ReconstructionSettings | None = None) -> Reconstructor:
        """A reconstructor holding every frame of ``data``."""
        settings = with_data_defocus(settings or ReconstructionSettings(), data)
        reconstructor = cls(data.geometry, settings, mask=data.mask, probe=data.probe)
        return reconstructor.add_frames(data.frames, data.positions).prepare()

    @classmethod
    def start_or_resume(
        cls,
        geometry: Geometry,
        settings: ReconstructionSettings,
        positions: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        probe: np.ndarray | None = None,
        previous: ReconstructionResult | None = None,
        communicator: Communicator | None = None,
    ) -> tuple[Reconstructor, np.ndarray]:
        """A reconstructor for a scan's frames at ``positions`` ((N, 2) metres), and the positions to add them at.

        Without ``previous`` a new one (``probe``: the initial probe, None:
        built from the data) and ``positions``; with it, one that continues
        ``previous`` (:meth:`resume`), and ``positions`` with its refined
        ones for the frames it used.

        Raises
        ------
        ValueError
            If ``previous`` used more frames than ``positions`` holds.
        """
        if previous is None:
            return cls(geometry, settings, mask=mask, probe=probe, communicator=communicator), positions
        if previous.n_frames > len(positions):
            raise ValueError(
                f"the previous result used {previous.n_frames} frames but this job has only {len(positions)}"
            )
        positions = np.array(positions, dtype=float)
        positions[: previous.n_frames] = previous.positions
        return cls.resume(previous, geometry, settings, mask=mask, communicator=communicator), positions

    @classmethod
    def resume(
        cls,
        previous: ReconstructionResult,
        geometry: Geometry,
        settings: ReconstructionSettings | None = None,
        *,
        mask: np.ndarray | None = None,
        communicator: Communicator | None = None,
    ) -> Reconstructor:
        """A reconstructor that continues from a snapshot taken elsewhere.

        The object, probe, iteration count, cost history and extras carry on
        from ``previous``; add the frames again (all of them, the ones
        ``previous`` used first, with ``previous.positions`` for those), then
        iterate. This is how a stateless worker (an executor, a Globus
        Compute endpoint) continues a scan's reconstruction job after job.
        """
        reconstructor = cls(
            geometry,
            settings,
            mask=mask,
            probe=previous.probe,
            object=previous.object,
            object_origin=previous.object_origin,
            communicator=communicator,
        )
        reconstructor.iteration = previous.iterations
        reconstructor.cost_history = list(previous.cost_history)
        reconstructor.wall_time = previous.wall_time
        reconstructor.extra = dict(previous.extra)
        return reconstructor

    def use_settings(self, settings: ReconstructionSettings) -> Reconstructor:
        """Continue with other settings: another algorithm or number of probe modes (a final after previews).

        The object, probe (given modes added or dropped) and positions carry on.
        """
        if settings == self.settings:
            return self
        self.settings = deepcopy(settings)
        self.engine = REGISTRY[self.settings.algorithm].engine(self.settings)
        if self.state is not None:
            total = float(self.xp.sum(self.xp.abs(self.state.probe) ** 2))
            probe = add_modes(to_numpy(self.state.probe), self.settings.probe_modes)
            self.state.probe = self.xp.asarray(normalize_power(probe, total))
            self._corrections(self.state, self.comm.total(self.state.n_frames))
            self._take_frames()
            self.engine.frames_added(self.state, 0)
            self._best = None
        return self

    @property
    def n_frames(self) -> int:
        """Frames added so far."""
        pending = sum(len(frames) for frames, _ in self._pending)
        return pending + (0 if self.state is None else self.state.n_frames)

    @property
    def pixel_size(self) -> tuple[float, float]:
        """(y, x) size in metres of one object pixel."""
        return self.geometry.sample_pixel_size

    def add_frames(self, frames, positions) -> Reconstructor:
        """Append frames (N, H, W) and their positions (N, 2) as (x, y) metres.

        Frames are checked at once and taken into the reconstruction by the
        next :meth:`prepare` (which :meth:`iterate` and :meth:`result` call);
        the object canvas grows when the new positions leave it.
        """
        self._pending.append(validate_frames_and_positions(frames, positions, self.geometry.frame_shape))
        return self

    def prepare(self) -> Reconstructor:
        """Take the added frames into the reconstruction.

        The first call builds the initial probe (estimating its defocus when
        asked to) and the object canvas from the frames added so far.

        Raises
        ------
        ValueError
            If no frames were added, or the positions never overlap.
        """
        if not self._pending:
            if self.state is None:
                raise ValueError("the dataset is empty: add frames before iterating")
            return self
        pending, self._pending = self._pending, []
        positions = np.concatenate([p for _, p in pending])
        self._photons = np.concatenate([self._photons, *(frame_photons(f, self.mask) for f, _ in pending)])
        if self.state is None:
            self._check_overlap(positions)
            # the initial probe and canvas are made from these frames, as one array
            first = pending[0][0] if len(pending) == 1 else np.concatenate([f for f, _ in pending])
            self.state = self._initial_state(first, positions)
            del first
            n_before = 0
        else:
            n_before = self.state.n_frames
            self.state.set_positions(np.concatenate([self.state.positions, self.state.pixels(positions)]))
        for frames, _ in pending:
            self.state.measured.append(frames)
        del pending, frames  # in the store now: what the engine makes next can have the counts' room
        self._take_frames()
        self.engine.frames_added(self.state, n_before)
        self._best = None
        logger.debug("took %d frames (%d in all)", len(positions), self.state.n_frames)
        return self

    def iterate(
        self,
        n: int | None = None,
        progress: ProgressCallback | None = None,
        stop_early: Callable[[], bool] | None = None,
    ) -> Reconstructor:
        """Do ``n`` more iterations (default ``settings.iterations``), from the current estimate.

        ``progress(iteration, cost)`` is called after each iteration. When
        ``stop_early()`` (checked before each) says True, the iterations end
        there: the estimate is as good as it got, ready to continue.

        A cost that turns non-finite or rises ``DIVERGENCE_FACTOR`` times over
        its best is divergence: the best state is restored and the engine's
        step lowered, with a warning logged and kept in ``extra["divergence"]``.

        Raises
        ------
        FloatingPointError
            Naming the algorithm, iteration and cost, when the run diverges
            again after ``MAX_RECOVERIES`` recoveries.
        """
        self.prepare()
        self._coverage = None
        n = self.settings.iterations if n is None else int(n)
        for _ in range(n):
            if stop_early is not None and stop_early():
                break
            cost = self._step()
            if progress is not None:
                progress(self.iteration, cost)
        return self

    def preview(
        self,
        seconds: float,
        n: int | None = None,
        stop_early: Callable[[], bool] | None = None,
        started: float | None = None,
        spent: float = 0.0,
    ) -> Reconstructor:
        """Up to ``n`` iterations (default ``settings.iterations``) in about ``seconds``, the newest frames first.

        Each iteration visits the frames added since the last preview and as
        many of the others (a new random draw each time) as the time left
        allows at the cost measured so far (:class:`IterationCost`); no
        iteration starts that would not end, at that cost, within ``seconds``
        of ``started`` (a ``time.perf_counter()``; default: the call; a first
        preview's set-up, building the probe, counts), less ``spent`` (seconds
        already spent on this preview's frames: taking them in as they
        arrived), but one always runs. A preview's cost
        is then bounded whatever the scan's size. An engine that visits every
        frame in each iteration (DM) is bounded by whole iterations only.
        ``stop_early`` as in :meth:`iterate`. What the preview visited goes
        into :meth:`result`'s ``extra["preview"]``.
        """
        if self.comm.size > 1:
            raise ValueError(f"previews run in one process, not on {self.comm.describe()}: use iterate()")
        start = time.perf_counter() if started is None else started
        self.prepare()
        n = self.settings.iterations if n is None else int(n)
        new = np.arange(self._previewed, self.state.n_frames)
        visited = np.zeros(self.state.n_frames, bool)
        smallest = (
            self.settings.options.effective_batch_size(self.state.n_frames)
            if self.engine.visits_some_frames
            else self.state.n_frames
        )
        done = 0
        while done < n and not (stop_early is not None and stop_early()):
            left = seconds - spent - (time.perf_counter() - start)
            if done and left < self._iteration_cost.seconds(smallest):
                break
            frames = self._preview_frames(new, left, n - done)
            visited[slice(None) if frames is None else frames] = True
            self._step(frames)
            done += 1
        self._previewed = self.state.n_frames
        self._coverage = {
            "frames_new": len(new),
            "frames_visited": int(visited.sum()),
            "iterations": done,
            "seconds": time.perf_counter() - start,
            "intake_seconds": float(spent),
            "seconds_allowed": float(seconds),
        }
        return self

    def _preview_frames(self, new: np.ndarray, seconds: float, iterations: int) -> np.ndarray | None:
        """The frames the next of ``iterations`` preview iterations in ``seconds`` visits (None: all).

        The new frames first: all of them if the time left holds them, else
        as many as it does; then a random draw of the others, the time left
        shared between the iterations left, each iteration's fixed part
        (its steps over the whole canvas) counted. Never less than one batch;
        with nothing measured yet, one batch, which starts the measuring.
        """
        n_frames = self.state.n_frames
        if not self.engine.visits_some_frames:
            return None
        count = self.settings.options.effective_batch_size(n_frames)
        cost = self._iteration_cost
        if cost.per_frame is not None:
            count = max(count, min(len(new), cost.frames_in(seconds)), cost.frames_in(seconds / iterations))
        if count >= n_frames:
            return None
        if count <= len(new):
            return np.sort(self.rng.choice(new, count, replace=False))
        older = self.rng.choice(n_frames - len(new), count - len(new), replace=False)
        return np.sort(np.concatenate([new, np.setdiff1d(np.arange(n_frames), new)[older]]))

    def _step(self, frames: np.ndarray | None = None) -> float:
        """One iteration over ``frames`` (None: all), with the divergence check; its normalised cost."""
        start = time.perf_counter()
        try:
            misfit = self.engine.iterate(self.state, self.iteration, self.rng, frames)
        finally:
            seconds = time.perf_counter() - start
            self.wall_time += seconds
        if self.engine.searches_positions(self.iteration):
            self._search_positions(frames)
        if self.engine.corrects_intensity(self.iteration):
            self.state.intensity.normalise(self.comm)
        visited = self.state.n_frames if frames is None or not self.engine.visits_some_frames else len(frames)
        self._iteration_cost.add(visited, seconds)
        photons = (
            self._photons if frames is None or not self.engine.visits_some_frames else self._photons[frames]
        )
        misfit, photons_visited = self.comm.totals(misfit, photons.sum())
        cost = misfit / photons_visited
        if self._diverged(cost):
            self._recover(cost)
        else:
            self.cost_history.append(cost)
            self._keep_if_best(cost)
        self.iteration += 1
        return cost

    def _search_positions(self, frames: np.ndarray | None) -> None:
        """Search ``frames`` (None: all) stuck far from their positions; the record in ``extra["position_searches"]``.

        Its time counts in the wall time, not in the iteration's cost that previews plan by.
        """
        start, state = time.perf_counter(), self.state
        frames = np.arange(state.n_frames) if frames is None else frames
        moved, record = search_stuck_frames(state, frames, lambda part: self.engine.chunks(part, state))
        self.engine.positions_jumped(state, moved)
        seconds = time.perf_counter() - start
        self.wall_time += seconds
        self.extra.setdefault("position_searches", []).append(
            {"iteration": self.iteration, **record, "seconds": round(seconds, 3)}
        )

    def _diverged(self, cost: float) -> bool:
        return not np.isfinite(cost) or (self._best is not None and cost > DIVERGENCE_FACTOR * self._best[0])

    def _keep_if_best(self, cost: float) -> None:
        if self._best is None or cost < self._best[0]:
            state = self.state
            kept = self._best_arrays or (None, None)
            self._best_arrays = tuple(map(copied_into, kept, (state.object, state.probe)))
            self._best = (cost, state.positions.copy())

    def _recover(self, cost: float) -> None:
        """Restore the best state and lower the step, or fail after ``MAX_RECOVERIES``."""
        recoveries = self.extra.setdefault("divergence", [])
        best = self._best[0] if self._best is not None else float("nan")
        if self._best is None or len(recoveries) >= MAX_RECOVERIES:
            raise FloatingPointError(
                f"{self.settings.algorithm} diverged at iteration {self.iteration}: cost {cost:.3g} "
                f"against its best {best:.3g}, after {len(recoveries)} recoveries "
                "(each restored the best state and lowered the step)"
            )
        (_, positions), (obj, probe) = self._best, self._best_arrays
        self.state.object, self.state.probe = obj.copy(), probe.copy()
        self.state.set_positions(positions.copy())
        action = self.engine.calm_down()
        self.engine.restored(self.state)
        recoveries.append({"iteration": self.iteration, "cost": float(cost), "best": best, "action": action})
        logger.warning(
            "%s diverged at iteration %d (cost %.3g, best %.3g): restored the best state, %s",
            self.settings.algorithm,
            self.iteration,
            cost,
            best,
            action,
        )

    def result(self, copy: bool = True) -> ReconstructionResult:
        """A host-memory snapshot of the current estimate.

        ``copy=False`` leaves the object a view of the state where the state
        is in host memory (on the CPU), for a caller that serialises the
        result before anything iterates again (a worker process's reply).
        """
        state = self.prepare().state
        covered, origin = state.covered()
        obj = to_numpy(state.object[covered])
        probe = to_numpy(state.probe)
        rotation = mode_rotation(probe) if len(probe) > 1 else np.ones((1, 1))
        return ReconstructionResult(
            object=obj.copy() if copy else obj,
            probe=rotate_modes(probe, rotation).copy(),
            positions=state.metres(state.positions),
            pixel_size=self.pixel_size,
            object_origin=(float(origin[0]), float(origin[1])),
            cost_history=list(self.cost_history),
            iterations=self.iteration,
            settings=self.settings.to_dict(),
            wall_time=self.wall_time,
            frame_scales=None if state.intensity is None else state.intensity.scales.copy(),
            **({} if state.variable_probe is None else state.variable_probe.recorded(rotation)),
            extra={
                **self.extra,
                "backend": self.backend.describe(),
                **({} if self.comm.size == 1 else {"ranks": self.comm.describe()}),
                **({} if self._coverage is None else {"preview": dict(self._coverage)}),
                **(
                    {"position_refinement": refinement_record(state)}
                    if self.settings.position_correction
                    else {}
                ),
                **(
                    {}
                    if state.variable_probe is None
                    else {"variable_probe": state.variable_probe.record(self.comm)}
                ),
            },
            geometry=self.geometry,
        )

    def _initial_state(self, frames, positions) -> SolverState:
        xp = self.xp
        h, w = self.geometry.frame_shape
        py, px = self.pixel_size
        margin = canvas_margin((h, w))
        comm = self.comm
        if self._origin is None:
            low, _ = comm.extent(positions.min(axis=0), positions.max(axis=0))  # (x, y) of every rank's
            self._origin = low - margin[::-1] * (px, py)
        pixels = (positions - self._origin)[:, ::-1] / (py, px)
        # this rank's part of the canvas: its frames' patches and the margin (in one process, all of it)
        first = np.maximum(np.floor(pixels.min(axis=0)).astype(int) - margin, 0) if comm.size > 1 else 0
        end = np.ceil(pixels.max(axis=0)).astype(int) + (h, w) + margin + 1
        counts, n_frames = comm.totals(self._photons.sum(), len(self._photons))
        mean_counts = counts / n_frames
        probe = self._initial_probe
        if probe is not None:
            self.extra.setdefault("probe_source", self._probe_source)
        else:
            # one rank's frames tell the defocus; the mean pattern is every rank's
            defocus, extra = comm.broadcast(
                (self._initial_defocus(frames, positions), self.extra) if comm.rank == 0 else None
            )
            self.extra.update(extra)
            pattern = (
                frames.mean(axis=0)
                if comm.size == 1
                else comm.sum(frames.sum(axis=0, dtype=np.float64)) / comm.total(len(frames))
            )
            probe = probe_from_mean_pattern(pattern, self.geometry, defocus)[None]
        probe = normalize_power(add_modes(probe, self.settings.probe_modes), mean_counts)
        if self._initial_object is None:
            obj = np.ones(end - first, dtype=np.complex64)
        elif comm.size > 1:  # this rank's part of the previous object, its new area at that object's mean
            obj = np.full(end - first, self._initial_object.mean(), dtype=np.complex64)
            part = self._initial_object[first[0] : end[0], first[1] : end[1]]
            obj[: part.shape[0], : part.shape[1]] = part
        else:
            obj = self._initial_object
        mask = None if self.mask is None else xp.asarray(np.fft.ifftshift(self.mask))
        state = SolverState(
            backend=self.backend,
            object=xp.asarray(obj),
            probe=xp.asarray(probe.astype(np.complex64)),
            measured=MeasuredAmplitudes(
                self.backend, self.geometry.frame_shape, self.settings.frame_precision
            ),
            mask=mask,
            positions=pixels - first,
            corners=None,
            origin=self._origin + np.multiply(first, self.pixel_size)[::-1],
            pixel_size=self.pixel_size,
            comm=comm,
        )
        state.set_positions(pixels - first)
        self._corrections(state, comm.total(len(positions)))
        return state

    def _take_frames(self) -> None:
        """The frames' beam shares and probe variations take every frame the state has."""
        if self.state.intensity is not None:
            self.state.intensity.take(self._photons)
        if self.state.variable_probe is not None:
            self.state.variable_probe.take(self.state.n_frames)

    def _corrections(self, state: SolverState, n_frames: float) -> None:
        """Give ``state`` the frames' beam shares and the probe's variation its settings ask for (``n_frames``: every rank's)."""
        s = self.settings
        state.intensity = (state.intensity or FrameIntensity()) if s.intensity_correction else None
        count = s.variable_probe_modes
        if count >= n_frames:
            raise ValueError(
                f"variable_probe_modes={count}: a probe varying through the scan needs more frames "
                f"than eigen-probes, and this scan has {n_frames:g}"
            )
        variable = state.variable_probe
        if not count:
            state.variable_probe = None
        elif variable is None or len(variable.eigen_probes) != count:
            # the same start on every rank: a generator of its own, from the seed
            rng = np.random.default_rng(s.seed)
            state.variable_probe = VariableProbe.start(self.xp, count, self.geometry.frame_shape, rng)

    def _warn(self, warning: str) -> None:
        """Log ``warning`` and keep it for the result's record (:attr:`.ReconstructionResult.warnings`)."""
        logger.warning(warning)
        self.extra.setdefault("warnings", []).append(warning)

    def _initial_defocus(self, frames: np.ndarray, positions: np.ndarray) -> float:
        """The defocus of the initial probe: given (sign checked) or measured from the data."""
        defocus = self.settings.probe_defocus
        if defocus is None or defocus == "auto":
            estimate = estimate_defocus(frames, positions, self.geometry, self.mask, self.settings.device)
            self.extra.update(estimate.as_dict())
            if estimate.warning:
                self._warn(estimate.warning)
            return estimate.defocus
        defocus, flipped = check_defocus_sign(frames, positions, self.geometry, float(defocus), self.mask)
        self.extra.update(
            probe_defocus=defocus, probe_source="given defocus", probe_defocus_sign_corrected=flipped
        )
        return defocus

    def _check_overlap(self, positions: np.ndarray) -> None:
        """Refuse a scan whose patches never overlap (nothing constrains the phase)."""
        if len(positions) < 2:
            raise ValueError("ptychography needs at least two overlapping frames; got one")
        pixels = positions[:, ::-1] / self.pixel_size
        distance, _ = cKDTree(pixels).query(pixels, k=2, p=np.inf)
        if np.all(distance[:, 1] >= min(self.geometry.frame_shape)):
            raise ValueError(
                "the scan positions do not overlap at all: neighbouring positions are at least "
                f"{distance[:, 1].min():.0f} pixels apart and the frames are "
                f"{self.geometry.frame_shape} pixels; check the position units (metres expected)"
            )
