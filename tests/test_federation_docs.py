"""The configuration examples in docs/federation.md are the ones the tools accept."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from bluesky_ptycho.federation.globus_settings import load_globus_settings

DOC = (Path(__file__).parents[1] / "docs" / "federation.md").read_text()


def block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", DOC, re.S).group(1)


def test_the_polaris_endpoint_config_loads_with_one_worker_per_gpu():
    utils = pytest.importorskip("globus_compute_endpoint.endpoint.config.utils")
    # the cluster's network interface does not exist here; everything else is parsed for real
    config = utils.load_config_yaml(block("yaml").replace("ifname: bond0", "ifname: lo"))
    executor = config.engine.executor
    assert type(config.engine).__name__ == "GlobusComputeEngine"
    assert type(executor.provider).__name__ == "PBSProProvider"
    assert executor.max_workers_per_node == 4 and len(executor.available_accelerators) == 4


def test_the_settings_example_is_valid(tmp_path, monkeypatch):
    text = re.sub(
        r"^(\s*\S+ = )\"\.\.\.\"", lambda m: f'{m.group(1)}"{uuid.uuid4()}"', block("toml"), flags=re.M
    )
    path = tmp_path / "globus.toml"
    path.write_text(text)
    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_SETTINGS", str(path))
    settings = load_globus_settings()
    from bluesky_ptycho.federation.flows import RUN_SETTINGS

    missing = [name for name in RUN_SETTINGS if getattr(settings, name) is None]
    assert missing == ["function_id", "flow_id"]  # set by `globus deploy`
    assert settings.facility_filesystem_path == "/eagle/YOUR_PROJECT/ptycho" and settings.max_in_flight == 8
