"""Reconstruction settings: what every algorithm shares, and the chosen algorithm's own options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .algorithms import REGISTRY
from .backend import FFT_LIBRARIES
from .frames import PRECISIONS
from .options import AlgorithmOptions

ALGORITHMS = tuple(REGISTRY)
# the final reconstruction's defaults, chosen on the robustness grid of measured-like
# simulations (benchmarks/robustness.py --final; the table is in docs/quality.md): the best
# R-factor within the time target; 200 iterations bring every case of the grid within
# 5 % of a start from the true probe (100: 17 of 24). Position refinement with a quarter
# step is on: on that grid (nearly right positions) R with it is at worst 1.002x without
# (final and previews, robustness.py --refinement --position-step 0.25; the rule
# is 1.02x), and it corrects a fifth of a step of random error, a drifting stage and, with
# its search, frames stuck far off (docs/imperfect-scans.md). ReconstructionSettings()
# itself stays the fast preview choice, rPIE with one mode and nothing refined.
FINAL_DEFAULTS = {
    "algorithm": "lsqml",
    "probe_modes": 3,
    "iterations": 200,
    "position_correction": True,
    "position_step": 0.25,
}
PREVIEW_DEFAULTS = {"algorithm": "rpie", "probe_modes": 1, "iterations": 100, "variable_probe_modes": 0}
# a zone plate's focal length is millimetres to a metre: a larger defocus is a unit mistake
MAX_DEFOCUS = 1.0


@dataclass
class ReconstructionSettings:
    """What to reconstruct and how.

    Parameters
    ----------
    algorithm
        A name in :data:`.algorithms.REGISTRY`: "rpie" (regularised PIE,
        minibatched), "epie" (rPIE pinned to alpha=1), "dm" (difference map)
        or "lsqml" (least-squares maximum likelihood).
    options
        The algorithm's own options: its dataclass in the registry
        (:class:`~.rpie.RPIEOptions`, :class:`~.rpie.EPIEOptions`,
        :class:`~.dm.DMOptions`, :class:`~.lsqml.LSQMLOptions`), a dictionary
        of its fields, or None for its defaults.
    iterations
        Iterations done by :meth:`Reconstructor.iterate` when no count is given.
    probe_modes
        Number of incoherent probe modes (mixed states), kept orthogonal.
    object_step, probe_step
        Relaxation of the object and probe updates (1 = full step).
    probe_update_start
        First iteration (0-based) in which the probe is updated.
    position_correction
        Refine scan positions by their cost gradient (off by default).
    position_correction_start
        First iteration in which positions are refined.
    position_step
        Share of each frame's least-squares shift applied in one iteration,
        (0, 1]. A full step (default) corrects real errors fastest; a
        smaller one lets less of each iteration's noise into positions that
        are nearly right (docs/imperfect-scans.md: 0.25 measured). A
        frame's step grows towards the full one while it is on its way
        somewhere (:mod:`.position_gains`).
    max_position_step
        Largest position change in one iteration, in object pixels.
    position_search_every
        While positions are refined, every this many iterations the frames
        whose misfit stands out (stuck far from their true positions) are
        searched for on a grid around where the scan recorded them
        (:mod:`.position_search`); 0: never.
    intensity_correction
        Fit each frame's share of the beam (:mod:`.intensity`): for a beam
        whose power drifts through the scan (off by default).
    intensity_correction_start
        First iteration in which the frames' shares are fitted: before it the
        object takes its absorption from the data (fitted from the start,
        the shares take up an absorbing object's contrast instead).
    variable_probe_modes
        Eigen-probes of a probe that changes through the scan (orthogonal
        probe relaxation, :mod:`.variable_probe`); 0 (default): one probe
        for every frame. LSQ-ML only.
    variable_probe_start
        First iteration in which the eigen-probes are fitted (then every
        second one, :data:`.variable_probe.FIT_EVERY`).
    probe_defocus
        Defocus in metres of the initial probe built when none is given
        (positive: sample downstream of the focus). A given value whose
        opposite sign fits the data clearly better is flipped, with a warning.
        "auto": measured from the data (0 when the probe is focused; see
        :mod:`.defocus`). "none": 0, in focus. None (default): the data's own
        value where they carry one (a CXI file), else "auto".
    device
        "cpu" (NumPy/SciPy) or "gpu" (CuPy).
    fft_library
        CPU FFTs by "scipy" or "fftw" (pyFFTW, the optional "fftw" extra);
        None: FFTW where it is installed.
    fft_workers
        Threads for CPU FFTs; None uses every core available.
    seed
        Seed of the random numbers used for initial probe modes.
    frame_precision
        How the measured frames are held (:mod:`.frames`): "half" (float16
        amplitudes, two bytes a pixel, the default) or "single" (float32).
    """

    algorithm: str = "rpie"
    options: AlgorithmOptions | dict[str, Any] | None = None
    iterations: int = 100
    probe_modes: int = 1
    object_step: float = 1.0
    probe_step: float = 1.0
    probe_update_start: int = 1
    position_correction: bool = False
    position_correction_start: int = 10
    position_step: float = 1.0
    max_position_step: float = 0.5
    position_search_every: int = 30
    intensity_correction: bool = False
    intensity_correction_start: int = 50
    variable_probe_modes: int = 0
    variable_probe_start: int = 20
    probe_defocus: float | str | None = None
    device: str = "cpu"
    fft_library: str | None = None
    fft_workers: int | None = None
    seed: int = 0
    frame_precision: str = "half"

    def __post_init__(self) -> None:
        self.algorithm = str(self.algorithm).lower()
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        self.options = algorithm_options(self.algorithm, self.options)
        if self.fft_library is not None and self.fft_library not in FFT_LIBRARIES:
            raise ValueError(f"fft_library must be one of {FFT_LIBRARIES} or None, got {self.fft_library!r}")
        if self.frame_precision not in PRECISIONS:
            raise ValueError(
                f"frame_precision must be one of {sorted(PRECISIONS)}, got {self.frame_precision!r}"
            )
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.probe_modes < 1:
            raise ValueError(f"probe_modes must be >= 1, got {self.probe_modes}")
        if self.position_search_every < 0:
            raise ValueError(f"position_search_every must be >= 0, got {self.position_search_every}")
        if self.variable_probe_modes < 0:
            raise ValueError(f"variable_probe_modes must be >= 0, got {self.variable_probe_modes}")
        if self.variable_probe_modes and not REGISTRY[self.algorithm].engine.varies_probe:
            varying = ", ".join(name for name, entry in REGISTRY.items() if entry.engine.varies_probe)
            raise ValueError(
                f"variable_probe_modes (a probe varying through the scan) is not an option of "
                f"{self.algorithm}: only of {varying}"
            )
        if isinstance(self.probe_defocus, str) and self.probe_defocus.lower() in ("auto", "none"):
            self.probe_defocus = {"auto": "auto", "none": 0.0}[self.probe_defocus.lower()]
        elif self.probe_defocus is not None:
            given = self.probe_defocus
            try:
                self.probe_defocus = float(given)
            except (TypeError, ValueError):
                self.probe_defocus = float("nan")
            if not abs(self.probe_defocus) < MAX_DEFOCUS:
                raise ValueError(
                    "probe_defocus must be 'auto', 'none' or a distance in metres within "
                    f"+-{MAX_DEFOCUS:g} m, got {given!r}"
                )
        for name in ("object_step", "probe_step", "max_position_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.position_step <= 1:
            raise ValueError(f"position_step must be within (0, 1], got {self.position_step}")

    @classmethod
    def final(cls, **overrides: Any) -> ReconstructionSettings:
        """The defaults for a final reconstruction (:data:`FINAL_DEFAULTS`), with ``overrides``.

        ``ReconstructionSettings()`` is the fast choice for previews; this is
        the one measured best on data as hard as measured data.
        """
        return cls(**{**FINAL_DEFAULTS, **overrides})

    def for_preview(self) -> ReconstructionSettings:
        """These settings with the fast preview algorithm (:data:`PREVIEW_DEFAULTS`: rPIE, one mode, one probe for every frame)."""
        return replace(self, options=None, **PREVIEW_DEFAULTS)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dictionary (the options as one of their own)."""
        return {**asdict(self), "options": self.options.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReconstructionSettings:
        """Build settings from a dictionary, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown reconstruction settings: {', '.join(unknown)}")
        return cls(**values)


def algorithm_options(algorithm: str, options: AlgorithmOptions | dict[str, Any] | None) -> AlgorithmOptions:
    """``options`` as ``algorithm``'s options dataclass, refusing another algorithm's by name."""
    kind = REGISTRY[algorithm].options
    if options is None:
        return kind()
    if isinstance(options, dict):
        return kind.from_dict(options)
    if type(options) is not kind:
        raise ValueError(
            f"algorithm {algorithm!r} takes {kind.__name__}, got {type(options).__name__} "
            f"(the options of {options.algorithm!r})"
        )
    return options
