"""The example IPython profile (profile_collection/startup) runs a scan end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROFILE = Path(__file__).resolve().parents[1] / "profile_collection"


def run_ipython(profile: Path, env: dict, code: str) -> subprocess.CompletedProcess:
    """An IPython session of ``profile`` that runs ``code`` and ends."""
    return subprocess.run(
        [sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--colors=NoColor", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_profile_scans_and_finds_the_reconstruction_in_the_catalog(tmp_path):
    pytest.importorskip("IPython")
    profile = tmp_path / "profile_collection"
    shutil.copytree(PROFILE / "startup", profile / "startup")
    env = {
        **os.environ,
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "BLUESKY_PTYCHO_CATALOG_DIR": str(tmp_path / "catalog"),
        "BLUESKY_PTYCHO_FRAMES_DIR": str(tmp_path / "frames"),
        "BLUESKY_PTYCHO_SPOOL_DIR": str(tmp_path / "spool"),
        "BLUESKY_PTYCHO_MD_DIR": str(tmp_path / "md"),
        "MPLBACKEND": "Agg",
    }
    code = (
        "ptycho.settings = ReconstructionSettings(iterations=10); "
        "(uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=60)); "
        "ptycho.wait(120); tiled_writer.flush(120); "
        "result = latest_final_reconstruction(catalog, uid); "
        "print('FOUND', uid, result.n_frames, len(reconstructions_of(catalog, uid)), "
        "catalog[uid]['primary']['det_image'].read().shape); "
        # Bluesky's own plans: a spiral is reconstructed (geometry from the detector's
        # configuration), a count is left alone
        "(spiral,) = RE(bp.rel_spiral_fermat([det], stage.x, stage.y, 4, 4, 0.35, factor=1)); "
        "(count,) = RE(bp.count([det], 2)); "
        "ptycho.wait(120); tiled_writer.flush(120); "
        "print('SPIRAL', latest_final_reconstruction(catalog, spiral).n_frames, "
        "len(reconstructions_of(catalog, count)))"
    )
    completed = run_ipython(profile, env, code)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    found = [line for line in completed.stdout.splitlines() if line.startswith("FOUND")]
    assert found, completed.stdout + completed.stderr
    _, _, n_frames, n_runs, *shape = found[0].split(maxsplit=4)
    assert int(n_frames) == 60 and int(n_runs) == 1 and "(60, 64, 64)" in shape[0]
    spiral = [line.split() for line in completed.stdout.splitlines() if line.startswith("SPIRAL")]
    assert spiral and int(spiral[0][1]) > 20 and spiral[0][2] == "0", completed.stdout + completed.stderr
    assert list((tmp_path / "frames").glob("*.h5"))
    # a new session goes on counting scans where the last one stopped
    code = "print('SCAN_ID', RE.md.get('scan_id'))"
    completed = run_ipython(profile, env, code)
    assert "SCAN_ID 3" in completed.stdout, completed.stdout + completed.stderr
