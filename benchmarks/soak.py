"""Soak: many back-to-back scans through RunEngine + PtychoCallback + the catalog, then one long scan.

Run ``python benchmarks/soak.py`` (defaults: 20 scans of 500 frames of 64 x 64,
then one scan of 10,000 frames of 128 x 128). Everything goes into a fresh
embedded Tiled catalog through :class:`DurableCatalogWriter`. Prints, per scan,
the RunEngine wall time and its overhead over a scan of the same size without
the callback and catalog, and the resident memory after the scan; then the peak
and final resident memory, and how many reconstructions the catalog holds
(it must equal the number of scans).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from peak_memory import PeakMemory

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import DurableCatalogWriter, connect, recent_reconstructions
from bluesky_ptycho.sim import SimulatedSample, fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings
from bluesky_ptycho.solver.simulate import fermat_spiral

MiB = 2**20


def return_free_heap() -> bool:
    """Collect garbage and hand free heap back to the OS (glibc only); False where unavailable."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc_trim(0)
    return True


def scan_seconds(RE: RunEngine, points: int, size: int) -> float:
    step = 0.3 * 64 / size  # the probe is a fixed fraction of the frame
    span_m = np.ptp(fermat_spiral(points, step), axis=0).max() * 1e-6
    pixel_m = SimulatedSample.create(frame_size=size).geometry.sample_pixel_size[0]
    stage, detector = simulated_beamline(frame_size=size, object_size=int(span_m / pixel_m) + 3 * size)
    start = time.perf_counter()
    RE(fermat_spiral_ptycho_scan(detector, stage, n_points=points, step_um=step))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--long-points", type=int, default=10_000, help="0: skip the long scan")
    parser.add_argument("--long-size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--preview-every", type=int, default=100)
    args = parser.parse_args()

    memory = PeakMemory()
    start_rss = memory.now()
    workdir = Path(tempfile.mkdtemp(prefix="ptycho-soak-"))
    catalog = connect(directory=workdir / "catalog")
    writer = DurableCatalogWriter(catalog, workdir / "spool", batch_size=20)
    callback = PtychoCallback(
        writer,
        settings=ReconstructionSettings(iterations=args.iterations),
        preview_every=args.preview_every,
        preview_iterations=5,
    )
    plain = RunEngine()
    baseline = {args.size: scan_seconds(plain, args.points, args.size)}
    RE = RunEngine()
    RE.subscribe(writer)
    RE.subscribe(callback)
    sizes = [(args.points, args.size)] * args.scans
    if args.long_points:
        sizes.append((args.long_points, args.long_size))
    print(
        f"{args.scans} scans of {args.points} x {args.size}^2"
        + (f", then {args.long_points} x {args.long_size}^2" if args.long_points else "")
    )
    print(f"{'scan':>4} {'frames':>6} {'RE s':>7} {'overhead':>9} {'RSS MiB':>8}")
    for index, (points, size) in enumerate(sizes, 1):
        if size not in baseline:
            baseline[size] = scan_seconds(plain, points, size) if points <= 2000 else None
        seconds = scan_seconds(RE, points, size)
        callback.wait()
        writer.flush()
        reference = baseline[size]
        overhead = f"{100 * (seconds / reference - 1):+8.1f}%" if reference else "       -"
        print(f"{index:4d} {points:6d} {seconds:7.2f} {overhead} {memory.now() / MiB:8.0f}", flush=True)
    memory.stop()
    writer.close()
    count = len(recent_reconstructions(catalog, limit=10 * len(sizes)))
    print(
        f"resident memory: start {start_rss / MiB:.0f} MiB, peak {memory.peak / MiB:.0f} MiB, final {memory.now() / MiB:.0f} MiB"
    )
    if return_free_heap():
        print(
            f"final after gc and malloc_trim: {memory.now() / MiB:.0f} MiB "
            "(the rest of 'final' was free heap the allocator kept, not live objects)"
        )
    print(
        f"reconstructions in the catalog: {count} for {len(sizes)} scans ({'OK' if count == len(sizes) else 'MISSING'})"
    )
    print(f"spooled runs left: {len(writer.pending_runs)}; catalog in {workdir}")


if __name__ == "__main__":
    main()
