"""The ``bluesky-ptycho`` command."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .io import CXIFormatError, read_cxi, write_cxi, write_result
from .plotting import save_summary_png
from .solver import (
    ALGORITHMS,
    ReconstructionSettings,
    Reconstructor,
    fourier_r_factor,
    simulate,
)

console = Console()


def run_with_progress(reconstructor: Reconstructor, iterations: int, label: str) -> None:
    """Iterate with a progress bar that shows the current cost."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cost {task.fields[cost]:.3e}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=iterations, cost=float("nan"))
        reconstructor.iterate(
            iterations, progress=lambda _, cost: progress.update(task, advance=1, cost=cost)
        )


def settings_options(function):
    """Options shared by the commands that reconstruct."""
    options = [
        click.option("--algorithm", "-a", type=click.Choice(ALGORITHMS), default="rpie", show_default=True),
        click.option("--iterations", "-n", type=int, default=100, show_default=True),
        click.option("--batch-size", type=int, default=None, help="Frames per update (rpie, epie, lsqml)."),
        click.option("--modes", type=int, default=1, show_default=True, help="Incoherent probe modes."),
        click.option(
            "--noise-model", type=click.Choice(["gaussian", "poisson"]), default="gaussian", show_default=True
        ),
        click.option(
            "--probe-defocus",
            type=float,
            default=None,
            help="Initial-probe defocus in m (+ = sample downstream of focus).",
        ),
        click.option("--position-correction/--no-position-correction", default=False, show_default=True),
        click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True),
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


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Live ptychographic reconstruction for Bluesky beamlines."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])


@main.command("simulate")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--frames", type=int, default=200, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Frame edge in pixels.")
@click.option("--overlap", type=float, default=0.7, show_default=True)
@click.option(
    "--photons", type=float, default=1e6, show_default=True, help="Photons per frame; 0 for noise-free."
)
@click.option("--modes", type=int, default=1, show_default=True, help="Incoherent probe modes of the beam.")
@click.option(
    "--probe", "probe_kind", type=click.Choice(["aperture", "focused"]), default="aperture", show_default=True
)
@click.option(
    "--defocus", type=float, default=0.0, show_default=True, help="Defocus in m of a focused probe."
)
@click.option(
    "--position-error", type=float, default=0.0, show_default=True, help="RMS position error, pixels."
)
@click.option("--seed", type=int, default=0, show_default=True)
def simulate_command(
    output, frames, size, overlap, photons, modes, probe_kind, defocus, position_error, seed
):
    """Write a simulated far-field ptychography dataset to OUTPUT (CXI)."""
    sim = simulate(
        n_frames=frames,
        frame_size=size,
        overlap=overlap,
        photons=photons or None,
        probe_modes=modes,
        probe_kind=probe_kind,
        probe_defocus=defocus,
        position_error=position_error,
        seed=seed,
    )
    write_cxi(output, sim.data)
    console.print(f"wrote {frames} frames of {size}x{size} to [bold]{output}[/]")


@main.command("reconstruct")
@click.argument(
    "input_file", metavar="FILE.cxi", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Result file (default FILE_recon.cxi).",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Summary PNG (default FILE_recon.png).",
)
@settings_options
def reconstruct_command(input_file, output, png, **options):
    """Reconstruct a CXI dataset; write the result (CXI/HDF5) and a summary PNG."""
    try:
        data = read_cxi(input_file)
    except CXIFormatError as error:
        raise click.ClickException(str(error)) from None
    settings = make_settings(**options)
    console.print(
        f"{len(data)} frames of {data.geometry.frame_shape}, {settings.algorithm}, {settings.device}"
    )
    reconstructor = Reconstructor.from_data(data, settings)
    run_with_progress(reconstructor, settings.iterations, settings.algorithm)
    result = reconstructor.result()
    stem = input_file.with_suffix("")
    output = output or Path(f"{stem}_recon.cxi")
    png = png or Path(f"{stem}_recon.png")
    write_result(output, result)
    save_summary_png(result, png, title=f"{input_file.name}: {settings.algorithm}")
    console.print(f"R-factor {fourier_r_factor(result, data):.4f}, {result.wall_time:.1f} s")
    console.print(f"wrote {output} and {png}")


@main.command("demo")
@click.option("--points", type=int, default=200, show_default=True, help="Scan points.")
@click.option(
    "--preview-every", type=int, default=50, show_default=True, help="Frames between previews (0: none)."
)
@click.option("--catalog", default=None, help="Tiled URI or profile (default: the embedded local catalog).")
@click.option(
    "--catalog-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the embedded catalog.",
)
@click.option(
    "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True
)
@settings_options
def demo_command(points, preview_every, catalog, catalog_dir, output_dir, **options):
    """Scan the simulated beamline with live reconstruction into the catalog."""
    from .demo import run_live_demo

    run_live_demo(
        make_settings(**options),
        n_points=points,
        preview_every=preview_every,
        catalog=catalog,
        catalog_directory=catalog_dir,
        output_dir=output_dir,
        console=console,
    )
