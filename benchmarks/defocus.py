"""Automatic probe-defocus estimate: accuracy and cost relative to the reconstruction it starts.

Run ``python benchmarks/defocus.py``. For simulated zone-plate probes at
several defocus distances it prints the estimate, its time, the time of the
100-iteration rPIE reconstruction that follows, and the object errors reached
from the estimated and from the true probe.
"""

from __future__ import annotations

import time

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, object_error, simulate

DEFOCI = [0.0, 1e-3, -1e-3, 2e-3, -2e-3]


def main() -> None:
    print(
        f"{'true (mm)':>10} {'estimate (mm)':>14} {'estimate s':>11} {'100 it s':>9} {'ratio':>6} {'error auto':>11} {'error true':>11}"
    )
    for defocus in DEFOCI:
        sim = simulate(probe_kind="focused", probe_defocus=defocus, photons=1e6, seed=3)
        start = time.perf_counter()
        auto = Reconstructor.from_data(sim.data, ReconstructionSettings(probe_defocus="auto"))
        estimate_seconds = time.perf_counter() - start
        start = time.perf_counter()
        auto.iterate(100)
        iterate_seconds = time.perf_counter() - start
        true = Reconstructor(sim.data.geometry, ReconstructionSettings(), probe=sim.true_probe)
        true.add_frames(sim.data.frames, sim.data.positions).iterate(100)
        print(
            f"{defocus * 1e3:10.2f} {auto.extra['probe_defocus'] * 1e3:14.3f} {estimate_seconds:11.2f} "
            f"{iterate_seconds:9.2f} {estimate_seconds / iterate_seconds:6.1%} "
            f"{object_error(auto.result(), sim):11.4f} {object_error(true.result(), sim):11.4f}"
        )


if __name__ == "__main__":
    main()
