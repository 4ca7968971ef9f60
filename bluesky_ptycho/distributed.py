"""One reconstruction over MPI ranks: ``mpiexec -n N python -m bluesky_ptycho.distributed DATA.cxi RESULT.cxi``.

Every rank reads its own frames of the CXI file (the scan cut into stripes,
:mod:`.solver.decomposition`), and the ranks iterate together
(:class:`~.solver.communicator.MPICommunicator`); rank 0 writes the result
(object, probe, every frame's refined position) to RESULT.cxi and prints
progress. ``bluesky-ptycho reconstruct DATA.cxi --ranks N`` starts this
through mpiexec (:mod:`.federation.mpi`).

On GPUs (``"device": "gpu"`` in ``--settings``) each rank takes the GPU
numbered ``BLUESKY_PTYCHO_DEVICE``, or its rank on the node modulo the GPUs
it sees. An error on any rank ends every rank (``MPI_Abort``): none is left
waiting in a collective.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .io import read_cxi, read_positions, write_result
from .solver import ReconstructionResult, ReconstructionSettings, Reconstructor
from .solver.backend import default_workers, gpu_available
from .solver.communicator import Communicator, MPICommunicator, local_rank
from .solver.decomposition import DECOMPOSITIONS, assign_frames
from .solver.metrics import fourier_r_factor_sums

# the GPU a rank computes on, where the launcher's local rank should not choose it
DEVICE_VARIABLE = "BLUESKY_PTYCHO_DEVICE"


def reconstruct_on_ranks(
    input_path: Path,
    settings: ReconstructionSettings,
    comm: Communicator,
    decomposition: str = "stripes",
    progress=None,
) -> ReconstructionResult | None:
    """Reconstruct ``input_path`` with every rank of ``comm`` (a collective call): the result on rank 0, None on the others.

    The result's positions are every frame's, in the file's order; its
    ``extra["distributed"]`` records the ranks, the decomposition, bytes
    each rank sent per iteration, each rank's frames, its peak memory and
    its memory before it read its frames (the interpreter and libraries),
    and the R-factor over every frame.
    """
    before = _peak_memory()
    mine = assign_frames(read_positions(input_path), comm.size, decomposition)[comm.rank]
    data = read_cxi(input_path, mine)
    if settings.fft_workers is None:
        settings = replace(settings, fft_workers=max(1, default_workers() // comm.ranks_on_node()))
    reconstructor = Reconstructor.from_data(data, settings, communicator=comm)
    sent_before = comm.bytes_sent
    reconstructor.iterate(progress=progress)
    result = reconstructor.result()
    misfit, total = fourier_r_factor_sums(result, data)
    r_factor = comm.total(misfit) / comm.total(total)
    iterations = max(reconstructor.iteration, 1)
    ranks = comm.gather(
        {
            "frames": mine,
            "positions": result.positions,
            "peak_memory_bytes": _peak_memory(),
            "memory_before_bytes": before,
            "bytes_sent_per_iteration": (comm.bytes_sent - sent_before) / iterations,
        }
    )
    if comm.rank != 0:
        return None
    positions = np.empty((sum(len(rank["frames"]) for rank in ranks), 2))
    for rank in ranks:
        positions[rank["frames"]] = rank["positions"]
    record = {
        "ranks": comm.size,
        "decomposition": decomposition,
        "communicator": comm.describe(),
        "r_factor": r_factor,
        "frames_per_rank": [len(rank["frames"]) for rank in ranks],
        "peak_memory_bytes": [rank["peak_memory_bytes"] for rank in ranks],
        "memory_before_bytes": [rank["memory_before_bytes"] for rank in ranks],
        "bytes_sent_per_iteration": [rank["bytes_sent_per_iteration"] for rank in ranks],
    }
    return replace(result, positions=positions, extra={**result.extra, "distributed": record})


def _peak_memory() -> int:
    """This process's peak resident memory so far, bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def use_rank_gpu() -> int:
    """Make this rank's GPU CuPy's current device (``DEVICE_VARIABLE``, else the local rank modulo the GPUs); its number."""
    import cupy

    number = int(os.environ.get(DEVICE_VARIABLE, local_rank() % cupy.cuda.runtime.getDeviceCount()))
    cupy.cuda.Device(number).use()
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bluesky_ptycho.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("input", type=Path, help="the dataset (CXI)")
    parser.add_argument("output", type=Path, help="the result file (CXI) rank 0 writes")
    parser.add_argument(
        "--settings", default="{}", help="reconstruction settings as JSON (ReconstructionSettings.to_dict)"
    )
    parser.add_argument("--decomposition", choices=DECOMPOSITIONS, default="stripes")
    args = parser.parse_args(argv)
    try:
        comm = MPICommunicator()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        settings = ReconstructionSettings.from_dict(json.loads(args.settings))
        if settings.device == "gpu" and gpu_available():  # else the backend names what is missing
            use_rank_gpu()
        start = time.perf_counter()
        result = reconstruct_on_ranks(
            args.input, settings, comm, args.decomposition, progress=_printer(comm, settings.iterations)
        )
        if result is not None:
            write_result(args.output, result)
            print(
                f"{comm.describe()}: R-factor {result.extra['distributed']['r_factor']:.4f}, "
                f"{time.perf_counter() - start:.1f} s; wrote {args.output}",
                flush=True,
            )
    except Exception as error:  # any rank's error ends every rank: the others would wait forever
        print(
            f"error on rank {comm.rank} of {comm.size}: {type(error).__name__}: {error}",
            file=sys.stderr,
            flush=True,
        )
        comm.abort(1)
    return 0


def _printer(comm: Communicator, iterations: int):
    """Rank 0 prints each iteration's cost (mpiexec forwards it); the others print nothing."""
    if comm.rank != 0:
        return None
    return lambda iteration, cost: print(f"iteration {iteration}/{iterations} cost {cost:.4e}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
