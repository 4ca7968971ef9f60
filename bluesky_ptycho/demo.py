"""The whole loop on the simulated beamline: scan, live reconstruction, catalog, query."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from rich.console import Console

from .callbacks import PtychoCallback
from .catalog import DurableCatalogWriter, connect, latest_final_reconstruction
from .catalog.server import redact
from .plotting import save_summary_png
from .scan_metadata import ScanGeometry
from .sim import fermat_spiral_ptycho_scan, simulated_beamline
from .solver import PtychoData, ReconstructionSettings, fourier_r_factor, object_error, warm_up


def run_live_demo(
    settings: ReconstructionSettings,
    n_points: int = 200,
    preview_every: int = 50,
    catalog: str | None = None,
    catalog_directory: str | Path | None = None,
    output_dir: Path = Path("."),
    console: Console | None = None,
) -> str:
    """Scan the simulated beamline with live reconstruction into a catalog; return the raw scan uid."""
    console = console or Console()
    with console.status("preparing the solver (the first run after installing compiles its CPU kernels)"):
        warm_up()
    client = connect(catalog, catalog_directory)
    writer = DurableCatalogWriter(client, batch_size=20)  # never blocks the scan; spools if the catalog fails
    RE = RunEngine()
    RE.subscribe(writer)
    started = time.perf_counter()

    done = {"iterations": 0}  # by the results shown so far: each continues from the last

    def show(raw_uid, result, final):
        label = "final  " if final else "preview"
        console.print(
            f"[{time.perf_counter() - started:5.1f} s] {label} {result.n_frames:4d} frames, "
            f"{result.iterations - done['iterations']:4d} iterations, cost {result.final_cost:.3e}"
        )
        done["iterations"] = result.iterations

    callback = PtychoCallback(writer, settings=settings, preview_every=preview_every, on_result=show)
    RE.subscribe(callback)
    stage, detector = simulated_beamline()
    console.print(f"scanning {n_points} points on a Fermat spiral, previews every {preview_every} frames")
    (uid,) = RE(fermat_spiral_ptycho_scan(detector, stage, n_points=n_points))
    console.print(f"[{time.perf_counter() - started:5.1f} s] scan {uid} done; final reconstruction running")
    callback.wait()
    writer.flush()
    result = latest_final_reconstruction(client, uid)
    scan = ScanGeometry.from_metadata(client[uid].metadata["start"]["ptycho"])
    raw = client[uid]["primary"]
    positions = (
        np.stack([raw[scan.x_key].read(), raw[scan.y_key].read()], axis=1) * scan.metres_per_position_unit
    )
    frames = np.asarray(raw[scan.data_key].read())
    data = PtychoData(frames, positions, scan.geometry(frames.shape[-2:]))
    console.print(
        f"object error {object_error(result, detector.sample.truth(positions)):.4f}, "
        f"R-factor {fourier_r_factor(result, data):.4f}"
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    png = save_summary_png(
        result, output_dir / "demo_reconstruction.png", title=f"scan {uid[:8]}: live reconstruction"
    )
    console.print(f"wrote {png}")
    console.print("find it again with:")
    where = (
        f"{redact(catalog)!r}"
        if catalog
        else (f"directory={str(catalog_directory)!r}" if catalog_directory else "")
    )
    console.print(
        "  from bluesky_ptycho.catalog import connect, latest_final_reconstruction\n"
        f"  result = latest_final_reconstruction(connect({where}), {uid!r})",
        highlight=False,
        soft_wrap=True,
    )
    options = (
        f" --catalog {redact(catalog)}"
        if catalog
        else (f" --catalog-dir {catalog_directory}" if catalog_directory else "")
    )
    console.print(
        f"or: bluesky-ptycho catalog show {uid}{options} --png recon.png", highlight=False, soft_wrap=True
    )
    if not catalog:  # the embedded catalog's server stops with this process: a link needs one that stays
        console.print(
            f"or in Tiled's web interface: `bluesky-ptycho catalog serve{options}` prints its link; "
            f"the reconstruction is under /ui/browse/runs/{result.extra['run_uid']}/primary",
            highlight=False,
            soft_wrap=True,
        )
    return uid
