"""One reconstruction over MPI ranks, started from a process that is not one of them (the CLI, a worker).

Runs ``mpiexec -n N python -m bluesky_ptycho.distributed`` (:mod:`..distributed`)
on a CXI file and reads back the result file rank 0 writes. The MPICH wheel
that ``pip install 'bluesky-ptycho[mpi]'`` brings puts ``mpiexec`` beside
this Python; a site's own MPI (``module load``) is found on the PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..io import read_result
from ..solver import ReconstructionResult, ReconstructionSettings
from ..solver.communicator import MPI_MISSING

# stderr lines kept for the error message of a failed run
ERROR_LINES = 20


def mpiexec_path() -> str:
    """The ``mpiexec`` beside this Python (the MPICH wheel's), else the PATH's.

    Raises
    ------
    RuntimeError
        Where there is none, saying how to get one.
    """
    beside = Path(sys.executable).with_name("mpiexec")
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise RuntimeError(f"no mpiexec found: {MPI_MISSING}")
    return found


def reconstruct_with_mpiexec(
    input_path: Path,
    output_path: Path,
    settings: ReconstructionSettings,
    ranks: int,
    decomposition: str = "stripes",
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
) -> ReconstructionResult:
    """Reconstruct ``input_path`` on ``ranks`` MPI ranks, write ``output_path`` and return its result.

    Rank 0's progress lines go to ``echo`` as they come.

    Raises
    ------
    RuntimeError
        Naming the exit status and the ranks' last error lines, when mpiexec
        fails (any rank's error ends every rank), or it ran past ``timeout`` seconds.
    """
    command = [
        mpiexec_path(),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "bluesky_ptycho.distributed",
        str(input_path),
        str(output_path),
        "--settings",
        json.dumps(settings.to_dict()),
        "--decomposition",
        decomposition,
    ]
    errors: deque[str] = deque(maxlen=ERROR_LINES)
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
            raise RuntimeError(f"mpiexec -n {ranks} ran past {timeout:g} s and was stopped") from None
        finally:
            for reader in readers:
                reader.join(timeout=10)
    if process.returncode != 0:
        reasons = [line for line in errors if line.startswith("error")] or list(errors)
        raise RuntimeError(
            f"mpiexec -n {ranks} failed (exit status {process.returncode}): " + " | ".join(reasons)
        )
    return read_result(output_path)


def _drain(stream, sink: Callable[[str], None]) -> threading.Thread:
    """A thread that hands each line of ``stream`` to ``sink`` until it ends."""

    def read() -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread
