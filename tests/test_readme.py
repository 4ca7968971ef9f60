"""Every Python example in the README runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
# what each example is checked by, run after it in the same process
CHECKS = {
    "latest_final_reconstruction(catalog, uid)": "print('CHECK', result.n_frames == 200 and result.extra['final'])",
    "object_error(result, sim)": "print('CHECK', object_error(result, sim) < 0.1)",
    "bp.rel_spiral_fermat": "print('CHECK', documents[-1][0] == 'stop' and documents[-1][1]['exit_status'] == 'success')",
    'options={"relaxation": 0.9}': "print('CHECK', type(settings.options).__name__ == 'DMOptions')",
    "fly_motion=0.5": "print('CHECK', position_error(worn.data.positions, worn.true_positions, pixel) > 7 "
    "and fly.fly_path.shape[1] == 300 and drifting.true_probes.shape[0] == 16)",
}


def test_the_readme_has_the_examples_this_test_checks():
    assert len(EXAMPLES) == len(CHECKS)
    for marker in CHECKS:
        assert sum(marker in example for example in EXAMPLES) == 1, marker


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(example, tmp_path):
    check = next(check for marker, check in CHECKS.items() if marker in example)
    environment = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(
        [sys.executable, "-c", example + "\n" + check],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CHECK True" in done.stdout, done.stdout + done.stderr
