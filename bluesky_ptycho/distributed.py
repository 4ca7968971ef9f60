"""One reconstruction over MPI ranks: ``mpiexec -n N python -m bluesky_ptycho.distributed DATA.cxi -o RESULT.cxi``.

Every rank reads its own frames of the CXI file(s) (the scan cut into stripes,
:mod:`.solver.decomposition`) and holds the part of the object they cover,
and the ranks iterate together
(:class:`~.solver.communicator.MPICommunicator`); rank 0 joins the parts and
writes the result (object, probe, every frame's refined position) to
RESULT.cxi and prints progress. ``bluesky-ptycho reconstruct DATA.cxi --ranks N`` starts this
through mpiexec (:mod:`.federation.mpi`).

On GPUs (``"device": "gpu"`` in ``--settings``) each rank takes the GPU
numbered ``BLUESKY_PTYCHO_GPU``, or its rank on the node modulo the GPUs
it sees. An error on any rank ends every rank (``MPI_Abort``): none is left
waiting in a collective.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .io import read_cxi, read_positions, read_result, write_result
from .solver import ReconstructionResult, ReconstructionSettings, Reconstructor
from .solver.backend import default_workers, gpu_available, make_backend
from .solver.communicator import Communicator, MPICommunicator
from .solver.decomposition import DECOMPOSITIONS, FRAMES_PER_RANK, assign_frames, join_parts
from .solver.metrics import fourier_r_factor_sums
from .solver.pages import prefer_ordinary_pages
from .solver.reconstructor import with_data_defocus

# the GPU (its number) a rank computes on, where the launcher's local rank should not choose it
GPU_VARIABLE = "BLUESKY_PTYCHO_GPU"
# the R-factor at the end reads a rank's frames again this many at a time, beside the solver's amplitudes
PIECE_FRAMES = 256
# frames are modelled for the R-factor this many pixels at a time (8 MB of complex64 per array)
R_FACTOR_PIXELS = 2**20
# a rank's last word on stderr (rank_error_line): the exception it stopped on
RANK_ERROR = re.compile(r"error on rank \d+ of \d+: (?P<kind>\w+): ")


def reconstruct_on_ranks(
    frame_files: list[Path],
    settings: ReconstructionSettings,
    comm: Communicator,
    decomposition: str = "stripes",
    previous: ReconstructionResult | None = None,
    iterations: int | None = None,
    progress=None,
    fit_ranks: bool = False,
) -> ReconstructionResult | None:
    """Reconstruct the frames of CXI files with every rank of ``comm`` (a collective call): the result on rank 0, None on the others.

    ``frame_files`` hold the scan's frames in order (one file, or the chunk
    files a scan was staged in); the geometry, mask, initial probe and
    defocus come from the first. ``previous``: a result of this scan to
    continue from (its frames keep its refined positions). ``iterations``:
    default ``settings.iterations``. ``fit_ranks``: a scan with fewer than
    ``FRAMES_PER_RANK`` frames a rank (a live scan's first preview) runs on
    as many of the first ranks as it fills, the others idle; otherwise it is
    an error naming the ranks and frames.

    The result's positions are every frame's, in the files' order; its
    ``extra["distributed"]`` records the ranks (and ``ranks_idle``), the decomposition, bytes
    each rank sent per iteration, each rank's frames, its peak memory and
    its memory before it read its frames (the interpreter and libraries),
    and the R-factor over every frame.
    """
    positions, starts = _scan_positions(frame_files)
    given = comm.size
    if fit_ranks:
        comm = comm.first(max(1, len(positions) // FRAMES_PER_RANK))
        if comm is None:
            return None
    if settings.fft_workers is None:
        settings = replace(settings, fft_workers=max(1, default_workers() // comm.node()[1]))
    # what the rank holds before its frames: interpreter, libraries, the kernels and the FFT library loaded
    backend = make_backend(settings.device, settings.fft_library, settings.fft_workers)
    backend.fft2(backend.xp.zeros((1, 8, 8), np.complex64))
    before = _peak_memory()
    mine = assign_frames(positions, comm.size, decomposition)[comm.rank]
    first = read_cxi(frame_files[0], np.arange(1))  # the scan's geometry, mask, probe and defocus
    reconstructor, positions = Reconstructor.start_or_resume(
        first.geometry,
        with_data_defocus(settings, first),
        positions,
        mask=first.mask,
        probe=first.probe,
        previous=previous,
        communicator=comm,
    )
    _add_rank_frames(reconstructor, frame_files, starts, mine, positions)
    sent_before, collectives_before = comm.bytes_sent, comm.collectives
    reconstructor.iterate(iterations, progress=progress)
    result = reconstructor.result()
    done = max(reconstructor.iteration - (0 if previous is None else previous.iterations), 1)
    del reconstructor  # its amplitudes and work arrays, before the R-factor reads the frames again
    r_factor = _r_factor(result, frame_files, starts, mine, comm)
    joined = join_parts(comm, result.object, result.object_origin, result.pixel_size)
    ranks = comm.gather(
        {
            "frames": mine,
            "per_frame": {name: getattr(result, name) for name in result.PER_FRAME},
            "peak_memory_bytes": _peak_memory(),
            "memory_before_bytes": before,
            "bytes_sent_per_iteration": (comm.bytes_sent - sent_before) / done,
            "collectives_per_iteration": (comm.collectives - collectives_before) / done,
        }
    )
    if comm.rank != 0:
        return None
    per_frame = {}
    for name in result.PER_FRAME:
        mine_here = getattr(result, name)
        if mine_here is not None:
            per_frame[name] = np.empty((len(positions), *mine_here.shape[1:]), mine_here.dtype)
            for rank in ranks:
                per_frame[name][rank["frames"]] = rank["per_frame"][name]
    record = {
        "ranks": comm.size,
        "ranks_idle": given - comm.size,
        "decomposition": decomposition,
        "communicator": comm.describe(),
        "r_factor": r_factor,
        "frames_per_rank": [len(rank["frames"]) for rank in ranks],
        "peak_memory_bytes": [rank["peak_memory_bytes"] for rank in ranks],
        "memory_before_bytes": [rank["memory_before_bytes"] for rank in ranks],
        "bytes_sent_per_iteration": [rank["bytes_sent_per_iteration"] for rank in ranks],
        "collectives_per_iteration": [rank["collectives_per_iteration"] for rank in ranks],
    }
    obj, origin = joined
    return replace(
        result,
        object=obj,
        object_origin=origin,
        **per_frame,
        extra={**result.extra, "distributed": record},
    )


def _scan_positions(frame_files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's (x, y) metres, in order, and the index of each file's first frame (one more: the total)."""
    parts = [read_positions(path) for path in frame_files]
    return np.concatenate(parts), np.cumsum([0, *map(len, parts)])


def _add_rank_frames(
    reconstructor: Reconstructor, frame_files: list[Path], starts: np.ndarray, mine: np.ndarray, positions
) -> None:
    """Add this rank's frames ``mine``, each file's part as read.

    The first prepare builds the probe from them as one array; the counts go
    once the solver holds its amplitudes (nothing here keeps them).
    """
    for index, part in _rank_parts(frame_files, starts, mine):
        reconstructor.add_frames(part.frames, positions[index])


def _rank_parts(frame_files: list[Path], starts: np.ndarray, mine: np.ndarray, most: int | None = None):
    """``(indices, data)`` of this rank's frames ``mine`` (sorted), file by file, up to ``most`` at a time (None: a file's)."""
    for path, first, end in zip(frame_files, starts[:-1], starts[1:], strict=True):
        index = mine[(mine >= first) & (mine < end)]
        pieces = 1 if most is None else -(-len(index) // most)
        for piece in np.array_split(index, pieces) if len(index) else []:
            yield piece, read_cxi(path, piece - first)


def _r_factor(result, frame_files, starts, mine, comm: Communicator) -> float:
    """The R-factor of ``result`` over every rank's frames (read again, a file at a time)."""
    sums, offset = np.zeros(2), 0
    for index, part in _rank_parts(frame_files, starts, mine, PIECE_FRAMES):
        piece = slice(offset, offset + len(index))
        sums += fourier_r_factor_sums(
            result.of_frames(piece), part, batch=max(1, R_FACTOR_PIXELS // part.frames[0].size)
        )
        offset += len(index)
    return comm.total(sums[0]) / comm.total(sums[1])


def _peak_memory() -> int:
    """This process's peak resident memory so far, bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def use_rank_gpu(comm: Communicator) -> int:
    """Make this rank's GPU CuPy's current device (``GPU_VARIABLE``, else its rank on the node modulo the GPUs); its number."""
    import cupy

    number = int(os.environ.get(GPU_VARIABLE, comm.node()[0] % cupy.cuda.runtime.getDeviceCount()))
    cupy.cuda.Device(number).use()
    return number


def main(argv: list[str] | None = None) -> int:
    prefer_ordinary_pages()
    parser = argparse.ArgumentParser(
        prog="python -m bluesky_ptycho.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("frame_files", type=Path, nargs="+", help="the scan's CXI file(s), in order")
    parser.add_argument(
        "--output", "-o", type=Path, required=True, help="the result file (CXI) rank 0 writes"
    )
    parser.add_argument(
        "--settings", default="{}", help="reconstruction settings as JSON (ReconstructionSettings.to_dict)"
    )
    parser.add_argument("--decomposition", choices=DECOMPOSITIONS, default="stripes")
    parser.add_argument(
        "--previous", type=Path, default=None, help="a result file of this scan to continue from"
    )
    parser.add_argument("--iterations", type=int, default=None, help="default: the settings' iterations")
    parser.add_argument(
        "--fit-ranks",
        action="store_true",
        help=f"fewer than {FRAMES_PER_RANK} frames a rank: run on as many ranks as the frames fill, not fail",
    )
    args = parser.parse_args(argv)
    try:
        comm = MPICommunicator()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        settings = ReconstructionSettings.from_dict(json.loads(args.settings))
        if settings.device == "gpu" and gpu_available():  # else the backend names what is missing
            use_rank_gpu(comm)
        start = time.perf_counter()
        previous = None if args.previous is None else read_result(args.previous)
        iterations = settings.iterations if args.iterations is None else args.iterations
        result = reconstruct_on_ranks(
            args.frame_files,
            settings,
            comm,
            args.decomposition,
            previous=previous,
            iterations=args.iterations,
            progress=_printer(comm, iterations + (0 if previous is None else previous.iterations)),
            fit_ranks=args.fit_ranks,
        )
        if result is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            write_result(args.output, result)
            record = result.extra["distributed"]
            print(
                f"{record['communicator']}{_idle(record['ranks_idle'])}: R-factor {record['r_factor']:.4f}, "
                f"{time.perf_counter() - start:.1f} s; wrote {args.output}",
                flush=True,
            )
    except Exception as error:  # any rank's error ends every rank: the others would wait forever
        line = rank_error_line(comm, error)
        keep_rank_error(args.output, comm.rank, line)
        print(line, file=sys.stderr, flush=True)
        comm.abort(1)
    return 0


def rank_error_line(comm: Communicator, error: Exception) -> str:
    """The line a rank prints as it stops on ``error`` (read back with ``RANK_ERROR``)."""
    return f"error on rank {comm.rank} of {comm.size}: {type(error).__name__}: {error}"


def rank_error_path(output: Path, rank: int | str) -> Path:
    """The file beside the result file ``output`` where ``rank`` leaves the line it stopped on (``"*"``: every rank's).

    The abort that ends every rank may end the launcher before it has passed
    on the ranks' last stderr lines (one launch in twenty on a busy machine);
    a file stays.
    """
    return output.with_name(f".{output.name}.rank{rank}.error")


def keep_rank_error(output: Path, rank: int, line: str) -> None:
    """Write ``line`` to :func:`rank_error_path`; where that cannot be written, stderr has it alone."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        rank_error_path(output, rank).write_text(line + "\n")
    except OSError:
        pass


def take_rank_errors(output: Path) -> list[str]:
    """The lines every rank left beside ``output`` (:func:`keep_rank_error`), in rank order, their files removed."""
    found = output.parent.glob(rank_error_path(output, "*").name)
    lines = []
    for path in sorted(found, key=lambda path: int(path.name.rsplit(".rank", 1)[1].removesuffix(".error"))):
        lines.append(path.read_text().strip())
        path.unlink()
    return lines


def _idle(ranks: int) -> str:
    """Words for ``ranks`` left idle (too few frames for them), or nothing."""
    return f" ({ranks} more idle: fewer than {FRAMES_PER_RANK} frames for each)" if ranks else ""


def _printer(comm: Communicator, iterations: int):
    """Rank 0 prints each iteration's cost, numbered up to ``iterations`` (mpiexec forwards it); the others print nothing."""
    if comm.rank != 0:
        return None
    return lambda iteration, cost: print(f"iteration {iteration}/{iterations} cost {cost:.4e}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
