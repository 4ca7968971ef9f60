"""The options the commands that reconstruct share (``bluesky-ptycho reconstruct|demo|globus run``)."""

from __future__ import annotations

from dataclasses import Field

import click
from rich.console import Console

from .io.pixel_mask import read_pixel_mask
from .solver import ALGORITHMS, DetectorSettings, ReconstructionSettings
from .solver.algorithms import REGISTRY
from .solver.backend import DEVICES
from .solver.data import LENGTH_UNITS
from .solver.options import settable

console = Console()


class Defocus(click.ParamType):
    """``auto``, ``none`` or a distance: metres, or a number with the unit m, mm, um or nm."""

    name = "defocus"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or value.lower() in ("auto", "none"):
            return value if not isinstance(value, str) else value.lower()
        text = value.strip().lower()
        unit = next((u for u in sorted(LENGTH_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            number = float(text[: -len(unit)] if unit else text) * LENGTH_UNITS.get(unit, 1.0)
        except ValueError:
            self.fail(
                f"{value!r} is not 'auto', 'none' or a distance such as 1.2e-3, 1.2mm or 1200um", param, ctx
            )
        try:
            return ReconstructionSettings(probe_defocus=number).probe_defocus
        except ValueError as error:
            self.fail(str(error), param, ctx)


def algorithm_option_fields() -> dict[str, dict[str, Field]]:
    """Every algorithm option a user can set, by name: the field of each algorithm that takes it."""
    taken: dict[str, dict[str, Field]] = {}
    for algorithm in REGISTRY.values():
        for name, spec in settable(algorithm.options).items():
            taken.setdefault(name, {})[algorithm.name] = spec
    return taken


def algorithm_option(name: str, specs: dict[str, Field]) -> click.Option:
    """A CLI option for the algorithm option ``name``; its help lists each taking algorithm's default."""
    spec = next(iter(specs.values()))
    choices = spec.metadata.get("choices")
    kind = click.Choice(choices) if choices else {"float": float, "int": int, "str": str}[spec.type]
    defaults = ", ".join(f"{algorithm} {spec.default}" for algorithm, spec in specs.items())
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        type=kind,
        default=None,
        help=f"{spec.metadata['help'][0].upper()}{spec.metadata['help'][1:]} [{defaults}].",
    )


def settings_options(function):
    """Options shared by the commands that reconstruct; their defaults are the final reconstruction's.

    The algorithm's own options come from its options dataclass in the registry.
    """
    final = ReconstructionSettings.final()
    options = [
        click.option(
            "--algorithm",
            "-a",
            type=click.Choice(ALGORITHMS),
            default=final.algorithm,
            show_default=True,
            help="; ".join(f"{a.name}: {a.summary}" for a in REGISTRY.values()),
        ),
        click.option(
            "--iterations", "-n", type=click.IntRange(min=1), default=final.iterations, show_default=True
        ),
        click.option(
            "--modes",
            type=click.IntRange(1, 12),
            default=final.probe_modes,
            show_default=True,
            help="Incoherent probe modes.",
        ),
        *(algorithm_option(name, specs) for name, specs in algorithm_option_fields().items()),
        click.option(
            "--probe-defocus",
            type=Defocus(),
            default=final.probe_defocus,
            help="Initial-probe defocus: 'auto' (measured from the data; the default unless the file "
            "records one), 'none' (in focus), or a distance such as 1.2mm (+ = sample downstream of the focus).",
        ),
        click.option(
            "--position-correction/--no-position-correction",
            default=final.position_correction,
            show_default=True,
        ),
        click.option(
            "--position-step",
            type=float,
            default=final.position_step,
            show_default=True,
            help="Share of each frame's least-squares shift taken per iteration, (0, 1]; "
            "0.25 keeps nearly right positions from wandering at low dose; a frame's step "
            "grows towards the whole shift while it is on its way.",
        ),
        click.option(
            "--position-search-every",
            type=click.IntRange(min=0),
            default=final.position_search_every,
            show_default=True,
            help="With --position-correction: every this many iterations, frames whose misfit stands out "
            "are searched for around their recorded positions (stuck far off); 0: never.",
        ),
        click.option(
            "--intensity-correction/--no-intensity-correction",
            default=final.intensity_correction,
            show_default=True,
            help="Fit each frame's share of the beam, for a beam whose power drifts through the scan.",
        ),
        click.option(
            "--variable-probe",
            "variable_probe_modes",
            type=click.IntRange(min=0),
            default=final.variable_probe_modes,
            show_default=True,
            help="Eigen-probes of a probe that changes through the scan (orthogonal probe relaxation; "
            "lsqml only); 0: one probe for every frame. With --intensity-correction the power is the "
            "frames' scales' and the eigen-probes fit the probe's shape; use one for each way the beam "
            "changes (a spare one curves the object's amplitude).",
        ),
        click.option("--device", type=click.Choice(DEVICES), default=final.device, show_default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def make_settings(
    algorithm,
    iterations,
    modes,
    probe_defocus,
    position_correction,
    position_step,
    position_search_every,
    intensity_correction,
    variable_probe_modes,
    device,
    **algorithm_options,
) -> ReconstructionSettings:
    """The settings the options of :func:`settings_options` ask for; a usage error names a wrong one."""
    given = {name: value for name, value in algorithm_options.items() if value is not None}
    takes = settable(REGISTRY[algorithm].options)
    for name in given:
        if name not in takes:
            raise click.UsageError(
                f"--{name.replace('_', '-')} is not an option of {algorithm} "
                f"(it is one of {', '.join(algorithm_option_fields()[name])})"
            )
    try:
        return ReconstructionSettings(
            algorithm=algorithm,
            options=given,
            iterations=iterations,
            probe_modes=modes,
            probe_defocus=probe_defocus,
            position_correction=position_correction,
            position_step=position_step,
            position_search_every=position_search_every,
            intensity_correction=intensity_correction,
            variable_probe_modes=variable_probe_modes,
            device=device,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None


# what reconstruct --uid takes for a scan that does not record its geometry (the callback's overrides)
SCAN_KEY_TYPES = {"photon_energy_ev": float, "detector_distance_m": float, "detector_pixel_size_m": float}


def parse_configuration_signal(value: str) -> tuple[str, tuple[str, float]]:
    """``KEY=SIGNAL`` or ``KEY=SIGNAL*FACTOR`` as (key, (signal, factor)); ValueError names the form."""
    key, _, source = value.partition("=")
    signal, _, factor = source.partition("*")
    if not key or not signal:
        raise ValueError(f"{value!r} is not KEY=SIGNAL or KEY=SIGNAL*FACTOR")
    return key.strip(), (signal.strip(), float(factor) if factor else 1.0)


detector_options = [
    click.option(
        "--frame-size",
        type=click.IntRange(min=2),
        default=None,
        help="With --uid: reconstruct a square of this many (binned) pixels around the beam centre.",
    ),
    click.option(
        "--beam-centre",
        type=(float, float),
        default=None,
        metavar="ROW COLUMN",
        help="With --uid: the direct beam on the detector, in its pixels (default: measured).",
    ),
    click.option(
        "--binning",
        type=click.IntRange(min=1),
        default=1,
        help="With --uid: detector pixels per edge summed.",
    ),
    click.option(
        "--saturation",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="With --uid: counts at and above which a pixel is not trusted.",
    ),
    click.option(
        "--pixel-mask",
        default=None,
        metavar="FILE.h5[:DATASET]|FILE.npy",
        help="With --uid: the detector's pixel mask (0 good), default dataset the Eiger master file's.",
    ),
]
DETECTOR_OPTIONS = ("frame_size", "beam_centre", "binning", "saturation", "pixel_mask")


def scan_metadata_options(function):
    """``--data-key`` ... ``--detector-pixel-size-m``, the detector's region and ``--configuration-signal``."""
    from .scan_metadata import PTYCHO_KEYS

    options = [
        click.option(
            f"--{key.replace('_', '-')}",
            key,
            type=SCAN_KEY_TYPES.get(key, str),
            default=None,
            help=f"With --uid: the scan's {description} (overrides start['ptycho']).",
        )
        for key, description in PTYCHO_KEYS.items()
        if key != "scan_area"
    ]
    options += detector_options
    options.append(
        click.option(
            "--configuration-signal",
            "configuration_signals",
            multiple=True,
            metavar="KEY=SIGNAL[*FACTOR]",
            help="With --uid: read a geometry key from this device configuration signal of the frames' "
            "descriptor (FACTOR converts its unit, e.g. photon_energy_ev=mono_energy*1000 for keV).",
        )
    )
    for option in reversed(options):
        function = option(function)
    return function


def scan_metadata_from(options: dict) -> dict:
    """Take the scan-metadata options out of ``options``: the overrides, ``configuration_signals`` and ``detector_settings``.

    Raises
    ------
    click.UsageError
        For a configuration signal that is not KEY=SIGNAL[*FACTOR] or names no geometry key,
        or a pixel mask that cannot be read.
    """
    from .scan_metadata import PTYCHO_KEYS, configuration_metadata

    given = {key: options.pop(key) for key in list(options) if key in PTYCHO_KEYS}
    detector = {key: options.pop(key) for key in DETECTOR_OPTIONS}
    try:
        signals = dict(
            parse_configuration_signal(value) for value in options.pop("configuration_signals", ())
        )
        configuration_metadata({}, signals)
    except ValueError as error:
        raise click.UsageError(f"--configuration-signal: {error}") from None
    if detector["pixel_mask"] is not None:
        try:
            detector["pixel_mask"] = read_pixel_mask(detector["pixel_mask"])
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--pixel-mask") from None
    metadata = {
        **{key: value for key, value in given.items() if value is not None},
        "configuration_signals": signals,
    }
    settings = DetectorSettings(**detector)
    if settings != DetectorSettings() or settings.pixel_mask is not None:
        metadata["detector_settings"] = settings
    return metadata
