"""One scan over MPI ranks against one process: speed, bytes exchanged, memory per rank, and quality.

Run ``python benchmarks/mpi_ranks.py`` (``--quick`` for a small case). For
each case (4,000 x 128² and 2,000 x 256² frames of 16-bit counts on a Fermat
spiral, written to a CXI file) and algorithm it runs, through ``mpiexec``
and :mod:`bluesky_ptycho.distributed`, one rank with every core's FFT threads
against as many ranks as cores with one thread each, and prints seconds per
iteration, the speed of the ranks relative to the one process (target >=
0.9), bytes each rank sent per iteration, peak memory per rank (and above
the interpreter's own, before the frames were read) relative to the one
process (target <= 0.6), and the R-factor. ``--decompositions`` compares
stripes with round-robin on rPIE. ``--model`` prints the weak-scaling model
of the docs from the measured numbers.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from bluesky_ptycho.federation.mpi import reconstruct_with_mpiexec
from bluesky_ptycho.io import write_cxi
from bluesky_ptycho.solver import ReconstructionSettings, simulate
from bluesky_ptycho.solver.algorithms import REGISTRY
from bluesky_ptycho.solver.backend import default_workers
from bluesky_ptycho.solver.rpie import RPIEOptions
from bluesky_ptycho.solver.state import canvas_margin

CASES = [(4000, 128), (2000, 256)]
QUICK_CASES = [(1000, 64)]
ALGORITHMS = ("rpie", "dm", "lsqml")
ITERATIONS = 10
PHOTONS = 3e5
# seconds a message step costs on the model's interconnect (MPI over InfiniBand: a few µs; NCCL: ~10)
LATENCY = 10e-6
# the minibatch algorithms the weak-scaling model predicts
MODELLED = ("rpie", "lsqml")
GIB = 2**30


def run(
    path: Path, algorithm: str, ranks: int, threads: int, iterations: int, decomposition: str = "stripes"
):
    settings = ReconstructionSettings(
        algorithm=algorithm, iterations=iterations, fft_workers=threads, probe_defocus=0.0
    )
    result = reconstruct_with_mpiexec(
        path,
        path.with_name(f"{path.stem}_{ranks}.cxi"),
        settings,
        ranks,
        decomposition,
        echo=lambda line: None,
    )
    return result, result.extra["distributed"]


def describe(result, record, iterations: int) -> tuple[float, str]:
    per_iteration = result.wall_time / iterations
    peak = max(record["peak_memory_bytes"]) / GIB
    above = max(
        p - b for p, b in zip(record["peak_memory_bytes"], record["memory_before_bytes"], strict=True)
    )
    sent = max(record["bytes_sent_per_iteration"]) / 2**20
    collectives = max(record["collectives_per_iteration"])
    return per_iteration, (
        f"{per_iteration:7.3f} s/it, sent {sent:7.1f} MiB/it in {collectives:.0f} collectives, peak {peak:.2f} GiB "
        f"({above / GIB:.2f} above the interpreter), R {record['r_factor']:.4f}"
    )


def compare(path: Path, algorithms: tuple[str, ...], iterations: int) -> dict:
    cores = default_workers()
    measured = {}
    for algorithm in algorithms:
        one, one_record = run(path, algorithm, 1, cores, iterations)
        many, many_record = run(path, algorithm, cores, 1, iterations)
        t_one, line_one = describe(one, one_record, iterations)
        t_many, line_many = describe(many, many_record, iterations)
        memory = max(many_record["peak_memory_bytes"]) / max(one_record["peak_memory_bytes"])
        above = max(
            p - b
            for p, b in zip(many_record["peak_memory_bytes"], many_record["memory_before_bytes"], strict=True)
        ) / max(one_record["peak_memory_bytes"][0] - one_record["memory_before_bytes"][0], 1)
        print(f"  {algorithm:6s} 1 rank x {cores} threads: {line_one}")
        print(f"  {algorithm:6s} {cores} ranks x 1 thread : {line_many}")
        print(
            f"  {algorithm:6s} ranks: {t_one / t_many:.2f}x the speed, memory per rank {memory:.2f}x "
            f"({above:.2f}x above the interpreter)"
        )
        measured[algorithm] = (t_many, max(many_record["bytes_sent_per_iteration"]))
    return measured


def compare_decompositions(path: Path, iterations: int) -> None:
    cores = default_workers()
    for decomposition in ("stripes", "round-robin"):
        for n in (iterations, 3 * iterations):
            _, record = run(path, "rpie", cores, 1, n, decomposition)
            print(f"  rpie {decomposition:11s} {n:3d} iterations: R {record['r_factor']:.4f}")
    for n in (iterations, 3 * iterations):
        _, record = run(path, "rpie", 1, cores, n)
        print(f"  rpie one process  {n:3d} iterations: R {record['r_factor']:.4f}")


def weak_scaling_model(algorithm: str, size: int, seconds_per_frame: float, link_bytes_per_s: float) -> None:
    """Predicted seconds per iteration of 1,000,000 frames of ``size``² on 8, 64 and 512 ranks (a minibatch ``algorithm``).

    Compute: ``seconds_per_frame`` x frames per rank. Canvas: each rank sends
    the overlaps of its part of the canvas (its stripe of the scan, a frame
    and two margins wider) with the others' parts, 12 bytes a pixel, once
    per iteration; before the parts, a ring all-reduce of the whole canvas
    moved 2 (P - 1) / P of it per rank. Probe: each batch's probe sums (12
    bytes a probe pixel, one mode) all-reduced, ``batch_size / P`` frames a
    batch on each rank, in the algorithm's collectives of a batch
    (``Engine.collectives_per_batch``), each at ``LATENCY`` a message step
    (2 log2 P steps).
    """
    total = 1_000_000
    side = math.sqrt(total) * size * 0.3  # square scan, step of a 70 % overlap spiral
    band = size + 2 * canvas_margin((size, size))[0]
    batch_size = RPIEOptions().batch_size
    print(
        f"  {algorithm}, 1,000,000 x {size}², {seconds_per_frame * 1e3:.3f} ms per frame-iteration, "
        f"canvas {side:.0f}² px, {link_bytes_per_s / 1e9:.0f} GB/s links, {LATENCY * 1e6:.0f} µs a message"
    )
    for ranks in (8, 64, 512):
        compute = seconds_per_frame * total / ranks
        whole = 2 * (ranks - 1) / ranks * side**2 * 12 / link_bytes_per_s
        stripe = side / ranks
        overlap = 2 * sum(max(0.0, stripe + band - k * stripe) for k in range(1, ranks)) * side
        parts = overlap * 12 / link_bytes_per_s
        batches = math.ceil(total / ranks / math.ceil(batch_size / ranks))
        probe = batches * (
            2 * (ranks - 1) / ranks * size**2 * 12 / link_bytes_per_s
            + REGISTRY[algorithm].engine.collectives_per_batch * 2 * math.log2(ranks) * LATENCY
        )
        print(
            f"  {ranks:4d} ranks: compute {compute:8.3f} s, canvas parts' overlaps {parts:7.4f} s "
            f"(whole-canvas all-reduce {whole:6.3f} s), probe's collectives {probe:6.3f} s "
            f"({batches} batches) -> {compute + parts + probe:8.3f} s/it"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case")
    parser.add_argument("--decompositions", action="store_true", help="stripes against round-robin (rPIE)")
    parser.add_argument(
        "--model", action="store_true", help="the weak-scaling model from the measured numbers"
    )
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument(
        "--case", type=int, nargs=2, metavar=("FRAMES", "SIZE"), help="this case only (e.g. 16000 128)"
    )
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=ALGORITHMS)
    args = parser.parse_args()
    cases = [tuple(args.case)] if args.case else QUICK_CASES if args.quick else CASES
    with tempfile.TemporaryDirectory() as directory:
        for n_frames, size in cases:
            path = Path(directory) / f"scan_{n_frames}_{size}.cxi"
            write_cxi(path, simulate(n_frames=n_frames, frame_size=size, photons=PHOTONS, seed=0).data)
            print(f"\n{n_frames} x {size}², {args.iterations} iterations")
            if args.decompositions:
                compare_decompositions(path, args.iterations)
                continue
            measured = compare(path, MODELLED if args.model else tuple(args.algorithms), args.iterations)
            if args.model:
                for algorithm, (seconds, _) in measured.items():
                    weak_scaling_model(algorithm, size, seconds * default_workers() / n_frames, 25e9)


if __name__ == "__main__":
    main()
