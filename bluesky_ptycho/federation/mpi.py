"""One reconstruction over MPI ranks, started from a process that is not one of them (the CLI, a worker).

Runs ``mpiexec -n N python -m bluesky_ptycho.distributed`` (:mod:`..distributed`)
on a scan's CXI file(s) and reads back the result file rank 0 writes; at a
facility, the launcher Globus Compute's MPI engine gives the task. The MPICH wheel
that ``pip install 'bluesky-ptycho[mpi]'`` brings puts ``mpiexec`` beside
this Python; a site's own MPI (``module load``) is found on the PATH.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..distributed import RANK_ERROR, take_rank_errors
from ..io import read_result
from ..solver import ReconstructionResult, ReconstructionSettings
from ..solver.communicator import MPI_MISSING
from .lanes import NOT_RETRIED

# stderr lines kept for the error message of a failed run
ERROR_LINES = 20
# what Parsl's MPI executor (Globus Compute's GlobusMPIEngine) tells a task's worker
PARSL_PREFIX_VARIABLE = "PARSL_MPI_PREFIX"


class RankDataError(ValueError):
    """The ranks stopped on the data or the settings (a ValueError, a divergence): trying again fails the same way."""


def mpiexec_path() -> str:
    """The ``mpiexec`` beside this Python (the MPICH wheel's), else the PATH's.

    Raises
    ------
    RuntimeError
        Where there is none, saying how to get one.
    """
    found = _beside_python("mpiexec")
    if shutil.which(found) is None:
        raise RuntimeError(f"no mpiexec found: {MPI_MISSING}")
    return found


def _beside_python(program: str) -> str:
    """``program`` beside this Python where it is there (a virtual environment's, not on the PATH), else as named."""
    if os.sep in program:
        return program
    beside = Path(sys.executable).with_name(program)
    return str(beside) if beside.exists() else program


def parsl_launcher() -> list[str] | None:
    """The MPI launcher a Globus Compute ``GlobusMPIEngine`` worker was given for this task, or None.

    Parsl's MPI executor sets ``PARSL_MPI_PREFIX`` (e.g. ``mpiexec -n 8 -ppn 4
    --hosts a,b``) from the task's ``resource_specification`` (``num_nodes``,
    ``ranks_per_node``) in the environment of the task's worker, for Python
    functions as for an ``MPIFunction``.
    """
    prefix = os.environ.get(PARSL_PREFIX_VARIABLE, "").strip()
    return shlex.split(prefix) if prefix else None


def use_launcher(launcher: str) -> None:
    """Give this process (a worker) ``launcher`` as :func:`parsl_launcher`'s: its staged jobs run on those ranks."""
    os.environ[PARSL_PREFIX_VARIABLE] = launcher


def reconstruct_with_mpiexec(
    input_path: Path,
    output_path: Path,
    settings: ReconstructionSettings,
    ranks: int,
    decomposition: str = "stripes",
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
) -> ReconstructionResult:
    """Reconstruct ``input_path`` on ``ranks`` MPI ranks of this machine (:func:`run_ranks` with ``mpiexec -n ranks``)."""
    launcher = [mpiexec_path(), "-n", str(ranks)]
    return run_ranks(
        launcher, [input_path], output_path, settings, decomposition=decomposition, timeout=timeout, echo=echo
    )


def run_ranks(
    launcher: list[str],
    frame_files: list[Path],
    output_path: Path,
    settings: ReconstructionSettings,
    *,
    iterations: int | None = None,
    previous_file: Path | None = None,
    decomposition: str = "stripes",
    fit_ranks: bool = False,
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
) -> ReconstructionResult:
    """Reconstruct the scan in ``frame_files`` on the ranks ``launcher`` starts; write ``output_path`` and return its result.

    ``launcher``: the MPI launcher and its arguments (``mpiexec -n 4``,
    :func:`parsl_launcher`). ``iterations`` (default: the settings') and
    ``previous_file`` (a result of this scan to continue from) as for
    :func:`~bluesky_ptycho.distributed.reconstruct_on_ranks`, and
    ``fit_ranks`` (a scan too small for the ranks runs on fewer). Rank 0's
    progress lines go to ``echo`` as they come.

    Raises
    ------
    RankDataError
        Naming the ranks' errors, when each was an error of the data or the
        settings (too few frames for the ranks, a divergence).
    RuntimeError
        Naming the exit status and the ranks' last error lines, when the
        launcher fails otherwise (any rank's error ends every rank), or it
        ran past ``timeout`` seconds.
    """
    command = [
        _beside_python(launcher[0]),
        *launcher[1:],
        sys.executable,
        "-m",
        "bluesky_ptycho.distributed",
        *map(str, frame_files),
        "--output",
        str(output_path),
        "--settings",
        json.dumps(settings.to_dict()),
        "--decomposition",
        decomposition,
        *([] if iterations is None else ["--iterations", str(iterations)]),
        *([] if previous_file is None else ["--previous", str(previous_file)]),
        *(["--fit-ranks"] if fit_ranks else []),
    ]
    name = " ".join(launcher)
    errors: deque[str] = deque(maxlen=ERROR_LINES)
    take_rank_errors(output_path)  # a launch stopped before it read its own
    # the ranks share the cores out among their FFT threads (distributed.py): no OpenMP threads beside them
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    ) as process:
        readers = [_drain(process.stdout, echo), _drain(process.stderr, errors.append)]
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise RuntimeError(f"{name} ran past {timeout:g} s and was stopped") from None
        finally:
            for reader in readers:
                reader.join(timeout=10)
    if process.returncode != 0:
        errors = list(dict.fromkeys([*take_rank_errors(output_path), *errors]))
        reasons = [line for line in errors if line.startswith("error")] or errors
        message = f"{name} failed (exit status {process.returncode}): " + " | ".join(reasons)
        raised = {found["kind"] for found in map(RANK_ERROR.match, reasons) if found}
        if raised and raised <= {kind.__name__ for kind in NOT_RETRIED}:
            raise RankDataError(message)
        raise RuntimeError(message)
    return read_result(output_path)


def _drain(stream, sink: Callable[[str], None]) -> threading.Thread:
    """A thread that hands each line of ``stream`` to ``sink`` until it ends."""

    def read() -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread
