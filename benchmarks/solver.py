"""Solver speed and quality: seconds per iteration, object error and the FFT floor.

Run ``python benchmarks/solver.py`` (``--quick`` for the small case only,
``--fft scipy`` to use scipy.fft where pyFFTW is installed). Prints one row
per case, algorithm and device; the FFT floor is one forward and one inverse
in-place FFT of the whole frame stack, for each CPU FFT library available
(the fastest of several repeats: a shared machine only ever slows it down),
and "x floor" divides an iteration by the floor of the library it used.
Then, per algorithm, the cost of 2, 3 and 5 probe modes relative to one
(target: at most 1.1 x K for K modes); every time is the fastest of three
measurements taken in the same run.

``--scaling`` prints instead how the cost per frame grows with the scan:
seconds per frame per iteration of scans of 1,000, 10,000 and 50,000
frames of 16-bit counts (``--frames``) of 128² and 256² (``--sizes``) simulated on a Fermat spiral,
for every algorithm with one probe mode and with three modes and position
refinement (the fastest of two rounds of two iterations: DM refines every
second iteration), and each as a ratio to the 1,000-frame scan's (target: at most
1.2); ``--farfield-precision`` says how DM holds its far fields (default:
DM's default, half). A scan whose arrays would not fit in this machine's memory is
skipped with its estimate; where the solver's arrays fit only without the
simulated counts beside them, the counts go once the solver holds them.

``--corrections`` prints what position refinement and intensity correction
cost: seconds per iteration of every algorithm with one and three probe
modes, without them and with each from the first iteration, on a
measured-like scan of 300 x 128² (target: at most 1.3x an iteration
without them); every time is the fastest of three rounds, the variants
taking turns within each round.

``--memory`` simulates scans of photon counts (16-bit, as a detector
records them; ``--frames`` and ``--sizes``, e.g. ``--frames 50000 --sizes
256``) and prints the peak resident memory of reconstructing each, counts
included, against the counts (target: at most 2.5x).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from peak_memory import PeakMemory

from bluesky_ptycho.solver import ALGORITHMS, ReconstructionSettings, Reconstructor, object_error, simulate
from bluesky_ptycho.solver.algorithms import REGISTRY
from bluesky_ptycho.solver.backend import (
    FFT_LIBRARIES,
    FFTW_INSTALLED,
    ArrayBackend,
    default_fft_library,
    gpu_available,
    make_backend,
)
from bluesky_ptycho.solver.dm import DMOptions
from bluesky_ptycho.solver.farfields import BYTES_PER_NUMBER, PRECISIONS
from bluesky_ptycho.solver.simulate import aperture_probe, realistic

CASES = [(200, 64, 100), (516, 128, 20), (1000, 256, 4)]


MODES = (1, 2, 3, 5)


def fft_floor(backend: ArrayBackend, n_frames: int, size: int, repeats: int = 15) -> float:
    """Seconds for one forward and one inverse in-place FFT of an (n, size, size) complex64 stack (fastest repeat)."""
    xp = backend.xp
    stack = xp.ones((n_frames, 1, size, size), dtype=np.complex64)
    stack = backend.ifft2(backend.fft2(stack, overwrite_x=True), overwrite_x=True)
    times = []
    for _ in range(repeats):
        synchronize(xp)
        start = time.perf_counter()
        stack = backend.ifft2(backend.fft2(stack, overwrite_x=True), overwrite_x=True)
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return min(times)


def seconds_per_iteration(reconstructor: Reconstructor, iterations: int, xp, rounds: int = 3) -> float:
    """Fastest of ``rounds`` timings of ``iterations`` iterations, per iteration (after as many to warm up).

    The warm-up is at least two iterations: the probe updates from the
    second on, and DM refines positions every second iteration, each with
    kernels and FFT plans of its own.
    """
    reconstructor.iterate(max(2, iterations))  # warm-up: plans, caches, compiled kernels
    times = []
    for _ in range(rounds):
        synchronize(xp)
        start = time.perf_counter()
        reconstructor.iterate(iterations)
        synchronize(xp)
        times.append((time.perf_counter() - start) / iterations)
    return min(times)


def synchronize(xp) -> None:
    if xp is not np:  # pragma: no cover - GPU only
        xp.cuda.Device().synchronize()


def run_case(n_frames: int, size: int, iterations: int, device: str, library: str) -> None:
    backend = make_backend(device, library if device == "cpu" else None)
    xp = backend.xp
    sim = simulate(n_frames=n_frames, frame_size=size, photons=1e6, seed=0)
    probe = aperture_probe((size, size), size / 3 * 1.15, curvature=0.0)
    if device == "cpu":
        libraries = [name for name in FFT_LIBRARIES if name == "scipy" or FFTW_INSTALLED]
        floors = {name: fft_floor(make_backend("cpu", name), n_frames, size) for name in libraries}
        floor = floors[library]
        floor_text = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in floors.items())
    else:
        floor = fft_floor(backend, n_frames, size)
        floor_text = f"{floor * 1e3:.2f} ms"
    used = backend.describe()
    print(f"\n{n_frames} frames of {size}x{size}, {device} ({used}), {iterations} iterations")
    print(f"FFT floor: {floor_text}")
    print(f"{'algorithm':>10} {'s/iteration':>12} {'x floor':>8} {'object error':>13}")
    one_mode = {}
    for algorithm in ALGORITHMS:
        settings = ReconstructionSettings(
            algorithm=algorithm, device=device, fft_library=backend.fft_library if device == "cpu" else None
        )
        reconstructor = Reconstructor(sim.data.geometry, settings, probe=probe)
        reconstructor.add_frames(sim.data.frames, sim.data.positions)
        per_iteration = seconds_per_iteration(reconstructor, max(iterations // 3, 1), xp)
        reconstructor.iterate(max(iterations - reconstructor.iteration, 0))
        error = object_error(reconstructor.result(), sim)
        one_mode[algorithm] = per_iteration
        print(f"{algorithm:>10} {per_iteration:12.4f} {per_iteration / floor:8.1f} {error:13.4f}")
    print("probe modes: s/iteration and its ratio to one mode (target <= 1.1 x modes)")
    print(f"{'algorithm':>10} " + " ".join(f"{f'{k} modes':>16}" for k in MODES))
    for algorithm in ALGORITHMS:
        cells = []
        for modes in MODES:
            settings = ReconstructionSettings(
                algorithm=algorithm, device=device, probe_modes=modes, fft_library=settings.fft_library
            )
            reconstructor = Reconstructor(sim.data.geometry, settings, probe=probe)
            reconstructor.add_frames(sim.data.frames, sim.data.positions)
            seconds = seconds_per_iteration(reconstructor, max(iterations // 10, 1), xp)
            if modes == 1:
                one_mode[algorithm] = seconds
            cells.append(f"{seconds:8.4f} ({seconds / one_mode[algorithm]:4.2f}x)")
        print(f"{algorithm:>10} " + " ".join(f"{cell:>16}" for cell in cells))


SCALING_FRAMES = (1000, 10000, 50000)
SCALING_SIZES = (128, 256)
SCALING_PHOTONS = 3e5  # per frame: 16-bit counts at 128² and 256²
SCALING_VARIANTS = {"1 mode": {}, "3 modes + positions": {"probe_modes": 3, "position_correction": True}}


def solver_bytes(n_frames: int, size: int, algorithm: str, modes: int, farfield_precision: str) -> int:
    """The solver's bytes for a scaling case: per pixel of its frames, 2 for its float16 amplitudes and DM's
    stored far fields (per mode, :data:`~bluesky_ptycho.solver.farfields.BYTES_PER_NUMBER`)."""
    farfield = BYTES_PER_NUMBER[farfield_precision] * modes if algorithm == "dm" else 0
    return n_frames * size * size * (2 + farfield)


def run_scaling(
    frame_counts: list[int],
    sizes: list[int],
    device: str,
    library: str,
    farfield_precision: str,
    algorithms: list[str],
) -> None:
    room = 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows = [
        (algorithm, variant, options)
        for algorithm in algorithms
        for variant, options in SCALING_VARIANTS.items()
    ]

    def needs(n_frames: int, size: int, algorithm: str, options: dict) -> int:
        return solver_bytes(n_frames, size, algorithm, options.get("probe_modes", 1), farfield_precision)

    for size in sizes:
        print(
            f"\nseconds per frame per iteration, {size}x{size} frames ({device}, {library} FFTs; "
            f"dm's far fields in {farfield_precision} precision)"
        )
        seconds: dict[tuple[str, str], dict[int, float]] = {(a, v): {} for a, v, _ in rows}
        for n_frames in frame_counts:  # one scan in memory at a time, simulated once for the rows that fit
            counts = n_frames * size * size * 2  # 16-bit
            data = None
            fitting = [
                row for row in rows if needs(n_frames, size, row[0], row[2]) <= room and 2 * counts <= room
            ]
            for algorithm, variant, options in sorted(
                fitting, key=lambda row: needs(n_frames, size, row[0], row[2])
            ):
                if data is None:
                    data = simulate(n_frames=n_frames, frame_size=size, photons=SCALING_PHOTONS, seed=0).data
                settings = ReconstructionSettings(
                    algorithm=algorithm,
                    device=device,
                    fft_library=library if device == "cpu" else None,
                    probe_defocus=0.0,
                    position_correction_start=0,
                    **options,
                    **({"options": {"farfield_precision": farfield_precision}} if algorithm == "dm" else {}),
                )
                reconstructor = Reconstructor(data.geometry, settings)
                reconstructor.add_frames(data.frames, data.positions)
                if needs(n_frames, size, algorithm, options) + counts > room:
                    data = None  # the counts are in the solver now: their room is the far fields' (simulated again if needed)
                reconstructor.prepare()
                per_frame = seconds_per_iteration(reconstructor, 2, reconstructor.xp, rounds=2) / n_frames
                seconds[algorithm, variant][n_frames] = per_frame
                del reconstructor
                print(f"  {n_frames} frames, {algorithm}, {variant}: {per_frame * 1e3:.4f} ms", flush=True)
            del data
        header = " ".join(f"{f'{n} frames':>18}" for n in frame_counts)
        print(f"{'algorithm':>10} {'variant':>20} {header}")
        for algorithm, variant, options in rows:
            measured = seconds[algorithm, variant]
            first = next(iter(measured.values()), None)
            cells = [
                f"{measured[n] * 1e3:8.4f} ms ({measured[n] / first:4.2f}x)"
                if n in measured
                else f"({needs(n, size, algorithm, options) / 2**30:.0f} GiB: skipped)"
                for n in frame_counts
            ]
            print(f"{algorithm:>10} {variant:>20} " + " ".join(f"{cell:>18}" for cell in cells), flush=True)


# what --corrections times against an iteration without them
CORRECTIONS = {
    "positions": {"position_correction": True, "position_correction_start": 0},
    "intensity": {"intensity_correction": True, "intensity_correction_start": 0},
    "variable probe 1": {"variable_probe_modes": 1, "variable_probe_start": 0},
    "variable probe 3": {"variable_probe_modes": 3, "variable_probe_start": 0},
}


def run_corrections(device: str, library: str, iterations: int = 10, rounds: int = 3) -> None:
    """Seconds per iteration without and with each of :data:`CORRECTIONS` an algorithm has, and their ratios."""
    sim = realistic(-1e-3, photons=1e5, n_frames=300, seed=11)
    print(
        f"\ncorrections, 300 frames of 128x128 ({device}, {library} FFTs): s/iteration and the ratio to none"
    )
    print(f"{'algorithm':>10} {'modes':>5} {'none':>8} " + " ".join(f"{name:>16}" for name in CORRECTIONS))
    variants = {"none": {}, **CORRECTIONS}
    for algorithm in ALGORITHMS:
        for modes in (1, 3):
            reconstructors = {}
            for name, options in variants.items():
                if options.get("variable_probe_modes") and not REGISTRY[algorithm].engine.varies_probe:
                    continue
                settings = ReconstructionSettings(
                    algorithm=algorithm,
                    probe_modes=modes,
                    device=device,
                    fft_library=library if device == "cpu" else None,
                    **options,
                )
                reconstructors[name] = Reconstructor.from_data(sim.data, settings).iterate(1)
            best = dict.fromkeys(reconstructors, np.inf)
            for _ in range(rounds):
                for name, reconstructor in reconstructors.items():
                    synchronize(reconstructor.xp)
                    start = time.perf_counter()
                    reconstructor.iterate(iterations)
                    synchronize(reconstructor.xp)
                    best[name] = min(best[name], (time.perf_counter() - start) / iterations)
            cells = [
                f"{best[name]:8.4f} ({best[name] / best['none']:4.2f}x)" if name in best else "-"
                for name in CORRECTIONS
            ]
            print(
                f"{algorithm:>10} {modes:>5} {best['none']:8.4f} " + " ".join(f"{c:>16}" for c in cells),
                flush=True,
            )


def run_memory(n_frames: int, size: int, device: str, library: str) -> None:
    """A scan of photon counts simulated, then reconstructed (rPIE, one iteration): peak memory against its 16-bit counts."""
    print(f"\nmemory, {n_frames} frames of {size}x{size} photon counts ({device}, {library} FFTs)")
    with PeakMemory(0.005) as simulating:
        before = simulating.now()
        data = simulate(n_frames=n_frames, frame_size=size, photons=SCALING_PHOTONS, seed=0).data
    counts = data.frames.size * 2  # as 16-bit counts
    settings = ReconstructionSettings(device=device, fft_library=library if device == "cpu" else None)
    start = time.perf_counter()
    with PeakMemory(0.005) as solving:
        reconstructor = Reconstructor(data.geometry, settings).add_frames(data.frames, data.positions)
        reconstructor.prepare()
        prepared = time.perf_counter()
        reconstructor.iterate(1)
        synchronize(reconstructor.xp)
    iteration = time.perf_counter() - prepared
    held = reconstructor.state.measured.nbytes
    gib = 2**30
    print(
        f"counts ({data.frames.dtype}): {data.frames.nbytes / gib:.2f} GiB; held by the solver: "
        f"{held / gib:.2f} GiB; the process before the scan: {before / gib:.2f} GiB"
    )
    print(
        f"peak while simulating: {simulating.peak / gib:.2f} GiB ({simulating.peak / counts:.2f}x the counts)"
    )
    print(
        f"peak while reconstructing (counts, solver and all): {solving.peak / gib:.2f} GiB "
        f"({solving.peak / counts:.2f}x the counts; target 2.5x)"
    )
    print(f"taking the frames: {prepared - start:.1f} s; one iteration: {iteration:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 200 x 64x64 case")
    parser.add_argument("--fft", choices=FFT_LIBRARIES, default=default_fft_library(), help="CPU FFT library")
    parser.add_argument("--scaling", action="store_true", help="cost per frame against the scan's size")
    parser.add_argument("--frames", type=int, nargs="+", default=list(SCALING_FRAMES), help="with --scaling")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SCALING_SIZES), help="with --scaling")
    parser.add_argument(
        "--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS), help="with --scaling"
    )
    parser.add_argument(
        "--farfield-precision",
        choices=PRECISIONS,
        default=DMOptions().farfield_precision,
        help="with --scaling: how dm holds its far fields",
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak memory of a scan of counts (--frames, --sizes)"
    )
    parser.add_argument(
        "--corrections", action="store_true", help="the cost of position refinement and intensity correction"
    )
    args = parser.parse_args()
    devices = ["cpu"] + (["gpu"] if gpu_available() else [])
    for device in devices:
        if args.corrections:
            run_corrections(device, args.fft)
            continue
        if args.memory:
            for n_frames in args.frames:
                for size in args.sizes:
                    run_memory(n_frames, size, device, args.fft)
            continue
        if args.scaling:
            run_scaling(args.frames, args.sizes, device, args.fft, args.farfield_precision, args.algorithms)
            continue
        for n_frames, size, iterations in CASES[:1] if args.quick else CASES:
            run_case(n_frames, size, iterations, device, args.fft)


if __name__ == "__main__":
    main()
