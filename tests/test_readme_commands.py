"""The README's two commands, run in order in one fresh venv, and then the CLI.

The first installs the package (not editable) and runs the demo; the second
installs it editable with the test extra. What this guards against: a first
install leaving files (compiled caches, say) that shadow the editable one,
which broke every CLI call once. The second command's test run is a subset
here (the whole suite would run this test again).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# the first two fenced commands, under "## Two commands"
COMMANDS = re.findall(r"```bash\n([^\n]+)\n```", README.split("## Two commands")[1])[:2]


def test_the_readme_has_two_commands():
    assert COMMANDS == [
        "python -m pip install . && bluesky-ptycho demo",
        'python -m pip install -e ".[test]" && python -m pytest',
    ]


@pytest.mark.skipif(os.environ.get("BLUESKY_PTYCHO_IN_FRESH_VENV") == "1", reason="already in the fresh venv")
def test_the_two_commands_in_a_fresh_venv_then_the_cli(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    source = tmp_path / "checkout"  # a copy, so that the build leaves nothing in the working tree
    subprocess.run(["git", "clone", "-q", str(ROOT), str(source)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(source),
            "checkout",
            "-q",
            subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True).strip(),
        ],
        check=True,
    )
    for path in subprocess.check_output(
        ["git", "-C", str(ROOT), "ls-files", "-m", "-o", "--exclude-standard"], text=True
    ).split():
        if (ROOT / path).is_file():  # uncommitted work is tested too
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            (source / path).write_bytes((ROOT / path).read_bytes())
    environment = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "home" / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "home" / "cache"),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        "MPLBACKEND": "Agg",
        "BLUESKY_PTYCHO_IN_FRESH_VENV": "1",
    }
    environment.pop("PYTHONPATH", None)

    def run(command: str, timeout: float = 1200) -> str:
        done = subprocess.run(
            command, shell=True, cwd=source, env=environment, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    first, second = COMMANDS
    demo = run(first)
    assert "final" in demo and "object error" in demo
    assert (source / "demo_reconstruction.png").exists()
    run(second.replace("python -m pytest", "python -m pytest -q -p no:cacheprovider tests/test_cli.py"))
    # the editable install is the one that runs, and nothing of the first shadows it
    where = run("python -c 'import bluesky_ptycho; print(bluesky_ptycho.__file__)'")
    assert Path(where.strip()).is_relative_to(source)
    assert "Usage" in run("bluesky-ptycho --help")
    listing = run("bluesky-ptycho catalog ls")
    assert "success" in listing
    assert "ptycho" in run("bluesky-ptycho catalog ls --raw")
    assert not list((venv / "lib").rglob("bluesky_ptycho/**/*.nbi")), (
        "numba's cache belongs in the user cache"
    )
