"""What the solver keeps between runs (compiled kernels, FFTW's measured plans) lives in the user cache directory,
never inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bluesky_ptycho.solver.kernels as kernels
from bluesky_ptycho.solver.backend import FFTW_INSTALLED, default_workers


def test_the_kernel_cache_is_written_to_the_user_cache_directory(tmp_path):
    package_cache = Path(kernels.__file__).parent / "__pycache__"
    started = time.time()
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    script = "from bluesky_ptycho.solver import warm_up; warm_up()"
    subprocess.run([sys.executable, "-c", script], env=environment, check=True, timeout=600)
    written = list((tmp_path / "cache" / "bluesky-ptycho" / "numba").rglob("kernels*.nbi"))
    assert written, "the kernels' index files should be in the user cache directory"
    touched = [p for p in package_cache.glob("kernels*.nb[ic]") if p.stat().st_mtime >= started]
    assert not touched, "nothing may be cached inside the installed package"


@pytest.mark.skipif(not FFTW_INSTALLED, reason="needs pyFFTW (the fftw extra)")
def test_fftw_measures_a_frame_size_once_per_machine(tmp_path):
    """The plans measured for 256 x 256 frames are kept: a later process plans them from the kept wisdom alone."""
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    measure = "import numpy as np; from bluesky_ptycho.solver.backend import fft2; fft2(np.ones((8, 256, 256), np.complex64))"
    wisdom_only = (
        "import numpy as np, pyfftw; from bluesky_ptycho.solver.backend import _pyfftw; _pyfftw(); "
        "a = pyfftw.empty_aligned((8, 256, 256), np.complex64); "
        "pyfftw.FFTW(a, a, axes=(-2, -1), flags=('FFTW_MEASURE', 'FFTW_WISDOM_ONLY'), threads={threads})"
    )
    threads = default_workers()
    fresh = subprocess.run(
        [sys.executable, "-c", wisdom_only.format(threads=threads)],
        env=environment,
        capture_output=True,
        timeout=600,
    )
    assert fresh.returncode != 0, "a fresh cache holds no wisdom: FFTW_WISDOM_ONLY must refuse to plan"
    subprocess.run([sys.executable, "-c", measure], env=environment, check=True, timeout=600)
    assert list((tmp_path / "cache" / "bluesky-ptycho").glob("fftw-wisdom-*.json"))
    subprocess.run(
        [sys.executable, "-c", wisdom_only.format(threads=threads)], env=environment, check=True, timeout=600
    )
