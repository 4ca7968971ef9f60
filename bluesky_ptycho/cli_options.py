"""The options the commands that reconstruct share (``bluesky-ptycho reconstruct|demo|globus run``)."""

from __future__ import annotations

import click
from rich.console import Console

from .solver import ALGORITHMS, ReconstructionSettings
from .solver.algorithms import REGISTRY
from .solver.backend import DEVICES
from .solver.settings import NOISE_MODELS

console = Console()


DISTANCE_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9}


class Defocus(click.ParamType):
    """``auto``, ``none`` or a distance: metres, or a number with the unit m, mm, um or nm."""

    name = "defocus"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or value.lower() in ("auto", "none"):
            return value if not isinstance(value, str) else value.lower()
        text = value.strip().lower()
        unit = next((u for u in sorted(DISTANCE_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            number = float(text[: -len(unit)] if unit else text) * DISTANCE_UNITS.get(unit, 1.0)
        except ValueError:
            self.fail(
                f"{value!r} is not 'auto', 'none' or a distance such as 1.2e-3, 1.2mm or 1200um", param, ctx
            )
        try:
            return ReconstructionSettings(probe_defocus=number).probe_defocus
        except ValueError as error:
            self.fail(str(error), param, ctx)


def settings_options(function):
    """Options shared by the commands that reconstruct; their defaults are the final reconstruction's."""
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
            "--batch-size",
            type=click.IntRange(min=1),
            default=final.batch_size,
            help="Frames per update (rpie, epie, lsqml; default 64).",
        ),
        click.option(
            "--modes",
            type=click.IntRange(1, 12),
            default=final.probe_modes,
            show_default=True,
            help="Incoherent probe modes.",
        ),
        click.option(
            "--noise-model", type=click.Choice(NOISE_MODELS), default=final.noise_model, show_default=True
        ),
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
        click.option("--device", type=click.Choice(DEVICES), default=final.device, show_default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def make_settings(
    algorithm, iterations, batch_size, modes, noise_model, probe_defocus, position_correction, device
):
    return ReconstructionSettings(
        algorithm=algorithm,
        iterations=iterations,
        batch_size=batch_size,
        probe_modes=modes,
        noise_model=noise_model,
        probe_defocus=probe_defocus,
        position_correction=position_correction,
        device=device,
    )
