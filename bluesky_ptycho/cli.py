"""The ``bluesky-ptycho`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .cli_options import console, make_settings, scan_metadata_from, scan_metadata_options, settings_options
from .io import CXIFormatError, read_cxi, write_cxi, write_result
from .solver import (
    ReconstructionResult,
    Reconstructor,
    fourier_r_factor,
    simulate,
)
from .solver.decomposition import DECOMPOSITIONS
from .solver.pages import prefer_ordinary_pages
from .solver.probe import reusable_probe

if TYPE_CHECKING:
    from .catalog import ReconstructionSummary


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


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Live ptychographic reconstruction for Bluesky beamlines."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    prefer_ordinary_pages()


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


catalog_options = [
    click.option(
        "--catalog", default=None, help="Tiled URI or profile (default: the embedded local catalog)."
    ),
    click.option(
        "--catalog-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Directory of the embedded catalog.",
    ),
]


def with_catalog_options(function):
    """Options that choose the catalog."""
    for option in reversed(catalog_options):
        function = option(function)
    return function


@main.command("reconstruct")
@click.argument(
    "input_file",
    metavar="[FILE.cxi]",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--uid", "raw_uid", default=None, help="Reconstruct this raw scan from the catalog instead.")
@with_catalog_options
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
    help="Summary PNG (default FILE_recon.png, or UID.png with --uid).",
)
@click.option(
    "--probe",
    "probe_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Start from the probe of this result file (FILE_recon.cxi of an earlier scan).",
)
@click.option(
    "--probe-from",
    default=None,
    metavar="UID",
    help="Start from the probe of this reconstruction (or the newest one of this raw scan) in the catalog.",
)
@click.option(
    "--ranks",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="MPI ranks that share the scan (FILE.cxi only; starts mpiexec, needs the 'mpi' extra).",
)
@click.option(
    "--decomposition",
    type=click.Choice(DECOMPOSITIONS),
    default="stripes",
    show_default=True,
    help="With --ranks: how the frames are shared out.",
)
@scan_metadata_options
@settings_options
def reconstruct_command(
    input_file,
    raw_uid,
    catalog,
    catalog_dir,
    output,
    png,
    probe_file,
    probe_from,
    ranks,
    decomposition,
    **options,
):
    """Reconstruct a CXI dataset, or (--uid) a raw scan archived in the catalog.

    A file gives a result file (CXI/HDF5) and a summary PNG; a catalog scan
    gives a new reconstruction run in the same catalog, and the PNG. With
    --ranks N the file's frames are shared out over N MPI processes.
    """
    scan_metadata = scan_metadata_from(options)
    settings = make_settings(**options)
    if (input_file is None) == (raw_uid is None):
        raise click.UsageError("give either FILE.cxi or --uid RAW_UID")
    if ranks > 1 and (raw_uid is not None or probe_file is not None or probe_from is not None):
        raise click.UsageError("--ranks takes FILE.cxi, without --uid, --probe or --probe-from")
    if input_file is not None and (scan_metadata["configuration_signals"] or len(scan_metadata) > 1):
        raise click.UsageError(
            "the scan-metadata and detector options (--data-key ... --configuration-signal, "
            "--frame-size ... --pixel-mask) are for --uid"
        )
    if probe_file is not None and probe_from is not None:
        raise click.UsageError("give either --probe FILE or --probe-from UID, not both")
    previous = earlier_probe(probe_file, probe_from, catalog, catalog_dir)
    if raw_uid is not None:
        # the callback reads a file itself, so that the run records the file as the probe's source
        given = probe_file or (previous[0] if previous else None)
        reconstruct_from_catalog(raw_uid, catalog, catalog_dir, png, settings, given, scan_metadata)
        return
    stem = input_file.with_suffix("")
    output = output or Path(f"{stem}_recon.cxi")
    png = png or Path(f"{stem}_recon.png")
    if ranks > 1:
        reconstruct_on_ranks(input_file, output, png, settings, ranks, decomposition)
        return
    try:
        data = read_cxi(input_file)
    except CXIFormatError as error:
        raise click.ClickException(str(error)) from None
    console.print(
        f"{len(data)} frames of {data.geometry.frame_shape}, {settings.algorithm}, {settings.device}"
    )
    if previous is None:
        reconstructor = Reconstructor.from_data(data, settings)
    else:
        result, source = previous
        try:
            probe = reusable_probe(result, data.geometry, source)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        reconstructor = Reconstructor(
            data.geometry, settings, mask=data.mask, probe=probe, probe_source=source
        )
        reconstructor.add_frames(data.frames, data.positions).prepare()
    console.print(f"initial probe: {describe_probe(reconstructor.extra)}")
    run_with_progress(reconstructor, settings.iterations, settings.algorithm)
    result = reconstructor.result()
    write_result(output, result)
    summarise_result(result, png, f"{input_file.name}: {settings.algorithm}", fourier_r_factor(result, data))
    console.print(f"wrote {output} and {png}")


def summarise_result(result: ReconstructionResult, png: Path, title: str, r_factor: float) -> None:
    """The result's warnings, its summary PNG, and its R-factor and time."""
    for warning in result.warnings:
        console.print(f"[yellow]warning: {warning}[/]")
    from .plotting import save_summary_png

    save_summary_png(result, png, title=title)
    console.print(f"R-factor {r_factor:.4f}, {result.wall_time:.1f} s")


def reconstruct_on_ranks(input_file: Path, output: Path, png: Path, settings, ranks: int, decomposition: str):
    """``reconstruct FILE.cxi --ranks N``: mpiexec runs the ranks, this process shows their progress and the result."""
    from .federation.mpi import reconstruct_with_mpiexec

    console.print(
        f"{input_file.name} on {ranks} MPI ranks ({decomposition}), {settings.algorithm}, {settings.device}"
    )
    try:
        result = reconstruct_with_mpiexec(
            input_file,
            output,
            settings,
            ranks,
            decomposition,
            echo=lambda line: console.print(line, highlight=False),
        )
    except (RuntimeError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    distributed = result.extra["distributed"]
    summarise_result(
        result, png, f"{input_file.name}: {settings.algorithm}, {ranks} ranks", distributed["r_factor"]
    )
    memory = ", ".join(f"{size / 2**30:.2f}" for size in distributed["peak_memory_bytes"])
    console.print(f"frames per rank {distributed['frames_per_rank']}, peak memory per rank {memory} GiB")
    console.print(f"wrote {output} and {png}")


def earlier_probe(probe_file, probe_from, catalog, catalog_dir) -> tuple[ReconstructionResult, str] | None:
    """The earlier reconstruction whose probe to start from (``--probe`` / ``--probe-from``) and its source, or None."""
    from .callbacks.ptycho import earlier_result

    if probe_file is not None:
        try:
            return earlier_result(probe_file)
        except (CXIFormatError, OSError, KeyError) as error:
            raise click.ClickException(f"--probe {probe_file}: {error}") from None
    if probe_from is not None:
        from .catalog import connect, find_reconstruction, result_from_run

        try:
            run = find_reconstruction(connect(catalog, catalog_dir), probe_from)
        except LookupError as error:
            raise click.ClickException(str(error.args[0])) from None
        return earlier_result(result_from_run(run))
    return None


def describe_probe(extra: dict) -> str:
    """Where the initial probe came from, in words (from a reconstruction's ``extra``)."""
    source = extra.get("probe_source", "?")
    if "defocus" not in source:
        return source
    defocus = extra["probe_defocus"]
    text = "in focus" if defocus == 0 else f"defocus {defocus * 1e3:+.3f} mm"
    if extra.get("probe_defocus_sign_corrected"):
        text += " (the given sign was corrected: + = sample downstream of the focus)"
    return f"{text} ({'measured from the data' if source == 'defocus estimate' else 'given'})"


def reconstruct_from_catalog(
    raw_uid, catalog, catalog_dir, png, settings, previous=None, scan_metadata: dict | None = None
) -> None:
    """Reconstruct the archived scan ``raw_uid``; ``scan_metadata``: the callback's overrides and configuration signals."""
    from .catalog import connect, find_reconstruction
    from .replay import reconstruct_archived_scan

    client = connect(catalog, catalog_dir)
    with console.status(
        f"reconstructing scan {raw_uid} ({settings.algorithm}, {settings.iterations} iterations)"
    ):
        try:
            reconstruct_archived_scan(
                client, raw_uid, settings, initial_probe=previous, **(scan_metadata or {})
            )
        except KeyError as error:
            raise click.ClickException(str(error.args[0])) from None
    try:
        run = find_reconstruction(client, raw_uid)
    except LookupError:
        raise click.ClickException(
            f"scan {raw_uid} is not a ptychography scan (no start['ptycho']; for a plan that does not "
            "record it, give --data-key, --x-key and --y-key): nothing was reconstructed"
        ) from None
    summary = show_reconstruction(run, png or Path(f"{raw_uid[:8]}_recon.png"))
    if summary.exit_status != "success":
        raise SystemExit(1)


def show_reconstruction(run, png: Path | None) -> ReconstructionSummary:
    """Print a reconstruction run's summary and return it; write its summary PNG."""
    from .catalog import result_from_run, summarize

    summary = summarize(run)
    console.print(
        f"reconstruction {summary.uid} of scan {summary.raw_uid} (scan_id {summary.raw_scan_id}): "
        f"{summary.exit_status}" + (f" ({summary.reason})" if summary.reason else "")
    )
    if summary.n_frames is None:
        return summary
    console.print(
        f"{summary.algorithm} on {summary.location}: {summary.n_frames} frames, "
        f"{summary.iterations} iterations, cost {summary.cost:.3e}"
    )
    if png is not None:
        from .plotting import save_summary_png

        save_summary_png(result_from_run(run), png, title=f"scan {summary.raw_uid[:8]}: {summary.algorithm}")
        console.print(f"wrote {png}")
    return summary


@main.group("catalog")
def catalog_group() -> None:
    """Browse the reconstructions in the catalog."""


@catalog_group.command("ls")
@with_catalog_options
@click.option("--limit", type=int, default=20, show_default=True, help="How many, newest first.")
@click.option("--raw", is_flag=True, help="List the raw scans instead of the reconstructions.")
def catalog_ls(catalog, catalog_dir, limit, raw):
    """List recent reconstructions (or, with --raw, raw scans)."""
    from rich.table import Table

    from .catalog import connect, recent_reconstructions

    if raw:
        list_raw_scans(connect(catalog, catalog_dir), limit)
        return
    headers = ("uid", "scan uid", "scan id", "solver", "frames", "iter.", "cost", "status")
    table = Table(*headers, box=None, header_style="bold")
    for column in table.columns:
        column.no_wrap = True
    for summary in recent_reconstructions(connect(catalog, catalog_dir), limit):
        table.add_row(
            summary.uid[:8],
            summary.raw_uid[:8],
            str(summary.raw_scan_id),
            summary.algorithm,
            "-" if summary.n_frames is None else str(summary.n_frames),
            "-" if summary.iterations is None else str(summary.iterations),
            "-" if summary.cost is None else f"{summary.cost:.2e}",
            summary.exit_status + (" (partial)" if "partial" in summary.reason else ""),
        )
    console.print(table)


def list_raw_scans(client, limit: int) -> None:
    """Print the newest raw scans: uid, scan id, plan, when, and whether they are ptychography scans."""
    import datetime

    from rich.table import Table

    from .catalog.queries import recent_raw_scans

    table = Table("uid", "scan id", "plan", "started", "ptycho", box=None, header_style="bold")
    for start in recent_raw_scans(client, limit):
        when = datetime.datetime.fromtimestamp(start["time"]).strftime("%Y-%m-%d %H:%M:%S")
        ptycho = "yes" if "ptycho" in start else "-"
        table.add_row(
            start["uid"][:8], str(start.get("scan_id", "-")), start.get("plan_name", "?"), when, ptycho
        )
    console.print(table)


@catalog_group.command("serve")
@click.option(
    "--catalog-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the embedded catalog (default: the user data directory).",
)
def catalog_serve(catalog_dir):
    """Serve the embedded catalog to every process on this machine until stopped (Ctrl-C or SIGTERM).

    Without it, the first process that opens the catalog (IPython, the CLI)
    serves it to the others while it runs.
    """
    import signal
    import threading

    from .catalog.server import default_catalog_directory, embedded_server, started_here

    directory = Path(catalog_dir or default_catalog_directory()).resolve()
    address = embedded_server(directory)
    if not started_here(address):
        click.echo(f"the catalog in {directory} is already served, by process {address.pid}:")
        click.echo(address.web_ui_link)
        return
    click.echo(f"serving the catalog in {directory} (process {address.pid}); web interface:")
    click.echo(address.web_ui_link)
    sys.stdout.flush()  # for a log or a pipe: the link is what the reader is waiting for
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    click.echo("stopped")


@catalog_group.command("show")
@click.argument("uid")
@with_catalog_options
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a summary PNG."
)
def catalog_show(uid, catalog, catalog_dir, png):
    """Show a reconstruction (its uid, or a raw scan uid for its newest reconstruction)."""
    from .catalog import connect, find_reconstruction

    try:
        run = find_reconstruction(connect(catalog, catalog_dir), uid)
    except LookupError as error:
        raise click.ClickException(str(error.args[0])) from None
    show_reconstruction(run, png)


@catalog_group.command("replay")
@with_catalog_options
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Spool directory (default: the user data directory's spool).",
)
@click.option(
    "--incomplete",
    is_flag=True,
    help="Also write runs without a stop document (a session that ended mid-run), closed as failed. "
    "Only when no running session uses the spool.",
)
def catalog_replay(catalog, catalog_dir, spool_dir, incomplete):
    """Write the runs the catalog could not take (kept in the spool) into it."""
    from .catalog import connect
    from .catalog.spool import DocumentSpool, replay_spool

    spool = DocumentSpool(spool_dir)
    waiting = spool.runs()
    if not waiting:
        console.print(f"nothing to replay in {spool.directory}")
        return
    written, failed = replay_spool(connect(catalog, catalog_dir), spool, incomplete=incomplete)
    for uid in written:
        console.print(f"wrote {uid}")
    for uid, error in failed.items():
        console.print(f"[red]could not write {uid}: {error}[/red]")
    left = [uid for uid in waiting if uid not in written and uid not in failed]
    if left:
        console.print(
            f"{len(left)} run(s) without a stop document left in {spool.directory} "
            "(--incomplete writes them, closed as failed)"
        )
    if failed:
        raise SystemExit(1)


@main.command("demo")
@click.option("--points", type=int, default=200, show_default=True, help="Scan points.")
@click.option(
    "--preview-every", type=int, default=50, show_default=True, help="Frames between previews (0: none)."
)
@with_catalog_options
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


def _add_subcommands() -> None:
    from .cli_globus import globus_group
    from .cli_service import serve_command

    main.add_command(globus_group)
    main.add_command(serve_command)


_add_subcommands()


if __name__ == "__main__":
    main()
