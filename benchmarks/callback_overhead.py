"""RunEngine wall time of a scan with and without PtychoCallback subscribed.

Run ``python benchmarks/callback_overhead.py`` (defaults: 500 frames of
256 x 256, previews every 50 frames). Both scans run in this process, one
after the other, and each is repeated; the overhead is the ratio of the
medians. The callback runs its reconstructions on a worker thread or on a
worker process (``LocalRunner(process=True)``); the work left when the
RunEngine returns is waited for but not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bluesky import RunEngine

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


def timed_scan(points: int, size: int, with_callback: bool, process: bool) -> float:
    RE = RunEngine()
    stage, detector = simulated_beamline(frame_size=size)
    callback = None
    if with_callback:
        callback = PtychoCallback(
            lambda name, doc: None,
            runner=LocalRunner(process=process),
            settings=ReconstructionSettings(iterations=5),
            preview_every=50,
        )
        RE.subscribe(callback)
    step = 0.3 * 64 / size  # the probe is a fixed fraction of the frame
    start = time.perf_counter()
    RE(fermat_spiral_ptycho_scan(detector, stage, n_points=points, step_um=step))
    elapsed = time.perf_counter() - start
    if callback is not None:
        callback.wait()
        callback.runner.shutdown()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {
        "without callback": (False, False),
        "worker thread": (True, False),
        "worker process": (True, True),
    }
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (with_callback, process) in cases.items():
            times[name].append(timed_scan(args.points, args.size, with_callback, process))
    print(f"{args.points} frames of {args.size}x{args.size}, {args.repeats} repeats (median)")
    without = statistics.median(times["without callback"])
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"RunEngine wall time, {name:16s}: {median:6.2f} s ({100 * (median / without - 1):+.1f} %)")


if __name__ == "__main__":
    main()
