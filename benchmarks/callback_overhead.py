"""RunEngine wall time of a scan with and without PtychoCallback subscribed.

Run ``python benchmarks/callback_overhead.py`` (defaults: 500 frames of
256 x 256, previews every 50 frames). All cases run in this process, one
after the other, and each is repeated; the overhead is the ratio of the
medians. Cases: the callback collecting frames only (previews off: its own
cost on the RunEngine thread); previews on a worker thread; previews on a
worker process (``LocalRunner(process=True)``); and, for reference, no
callback but a lowest-priority busy process beside the scan: what any
concurrent work costs the RunEngine on this machine. The work left when the
RunEngine returns is waited for but not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

from bluesky import RunEngine

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


@contextlib.contextmanager
def busy_neighbour():
    """A process spinning at the lowest priority (niceness 19) while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.nice(19))
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def timed_scan(points: int, size: int, case: str) -> float:
    RE = RunEngine()
    stage, detector = simulated_beamline(frame_size=size)
    callback = None
    if case in ("collecting only", "worker thread", "worker process"):
        callback = PtychoCallback(
            lambda name, doc: None,
            runner=LocalRunner(process=case == "worker process"),
            settings=ReconstructionSettings(iterations=5),
            preview_every=None if case == "collecting only" else 50,
        )
        RE.subscribe(callback)
    step = 0.3 * 64 / size  # the probe is a fixed fraction of the frame
    with busy_neighbour() if case == "busy neighbour" else contextlib.nullcontext():
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
    cases = ["without callback", "collecting only", "worker thread", "worker process", "busy neighbour"]
    times = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case in cases:
            times[case].append(timed_scan(args.points, args.size, case))
    print(f"{args.points} frames of {args.size}x{args.size}, {args.repeats} repeats (median)")
    without = statistics.median(times["without callback"])
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"RunEngine wall time, {name:16s}: {median:6.2f} s ({100 * (median / without - 1):+.1f} %)")


if __name__ == "__main__":
    main()
