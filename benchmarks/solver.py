"""Solver speed and quality: seconds per iteration, object error and the FFT floor.

Run ``python benchmarks/solver.py`` (``--quick`` for the small case only).
Prints one row per case, algorithm and device; the FFT floor is one forward
and one inverse FFT of the whole frame stack, so "x floor" shows how close an
iteration comes to the unavoidable work.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bluesky_ptycho.solver import ALGORITHMS, ReconstructionSettings, Reconstructor, object_error, simulate
from bluesky_ptycho.solver.backend import fft2, gpu_available, ifft2, module_for_device
from bluesky_ptycho.solver.simulate import aperture_probe

CASES = [(200, 64, 100), (516, 128, 20), (1000, 256, 4)]


def fft_floor(xp, n_frames: int, size: int, repeats: int = 5) -> float:
    """Seconds for one forward and one inverse FFT of an (n, size, size) complex64 stack."""
    stack = xp.ones((n_frames, 1, size, size), dtype=np.complex64)
    ifft2(fft2(stack))
    synchronize(xp)
    start = time.perf_counter()
    for _ in range(repeats):
        ifft2(fft2(stack))
    synchronize(xp)
    return (time.perf_counter() - start) / repeats


def synchronize(xp) -> None:
    if xp is not np:  # pragma: no cover - GPU only
        xp.cuda.Device().synchronize()


def run_case(n_frames: int, size: int, iterations: int, device: str) -> None:
    xp = module_for_device(device)
    sim = simulate(n_frames=n_frames, frame_size=size, photons=1e6, seed=0)
    floor = fft_floor(xp, n_frames, size)
    probe = aperture_probe((size, size), size / 3 * 1.15, curvature=0.0)
    print(
        f"\n{n_frames} frames of {size}x{size}, {device}, {iterations} iterations, FFT floor {floor * 1e3:.2f} ms"
    )
    print(f"{'algorithm':>10} {'s/iteration':>12} {'x floor':>8} {'object error':>13}")
    for algorithm in ALGORITHMS:
        settings = ReconstructionSettings(algorithm=algorithm, device=device)
        reconstructor = Reconstructor(sim.data.geometry, settings, probe=probe)
        reconstructor.add_frames(sim.data.frames, sim.data.positions)
        reconstructor.iterate(1)  # warm-up: plans, caches
        synchronize(xp)
        start = time.perf_counter()
        reconstructor.iterate(iterations - 1)
        synchronize(xp)
        per_iteration = (time.perf_counter() - start) / max(iterations - 1, 1)
        error = object_error(reconstructor.result(), sim)
        print(f"{algorithm:>10} {per_iteration:12.4f} {per_iteration / floor:8.1f} {error:13.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 200 x 64x64 case")
    args = parser.parse_args()
    devices = ["cpu"] + (["gpu"] if gpu_available() else [])
    for device in devices:
        for n_frames, size, iterations in CASES[:1] if args.quick else CASES:
            run_case(n_frames, size, iterations, device)


if __name__ == "__main__":
    main()
