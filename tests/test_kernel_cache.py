"""The compiled kernels' disk cache lives in the user cache directory, never inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import bluesky_ptycho.solver.kernels as kernels


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
