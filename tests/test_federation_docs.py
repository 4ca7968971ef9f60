"""The configuration examples in docs/federation.md are the ones the tools accept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
from helpers import FEDERATION_DOC, named_block

from bluesky_ptycho.federation.globus_settings import GlobusSettings, load_globus_settings


def block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", FEDERATION_DOC, re.S).group(1)


ENDPOINT_FILES = ("config.yaml", "user_config_template.yaml.j2", "user_config_schema.json")
#: What globus-compute's own Polaris config (docs/configs/polaris.yaml, since January 2025) sets that a
#: template for Polaris must set alike: the Slingshot interface (bond0 no longer reaches the login
#: nodes) and the cores PBS is asked for.
POLARIS_UPSTREAM = {"ifname": "hsn0", "cpus_per_node": 32}


def load_rendered_config(rendered: str):
    """The user endpoint's config from a rendered template, loaded as written, then on this machine.

    As written it names the cluster's network interface, which this machine
    lacks: loading fails on that alone. Then only the address is replaced
    by this machine's loopback, and the config is built as the endpoint builds it.
    """
    import click
    import yaml
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    document = yaml.safe_load(rendered)
    address = document["engine"]["address"]
    assert address["type"] == "address_by_interface"
    with pytest.raises(click.ClickException, match="No such device"):
        load_config_yaml(rendered)  # as written: the interface is looked up, here in vain
    here = yaml.safe_load(rendered)
    here["engine"]["address"] = "127.0.0.1"
    return document, load_config_yaml(yaml.safe_dump(here))


def assert_polaris_as_upstream(document: dict) -> None:
    engine = document["engine"]
    assert engine["address"]["ifname"] == POLARIS_UPSTREAM["ifname"]
    assert engine["provider"]["cpus_per_node"] == POLARIS_UPSTREAM["cpus_per_node"]


@pytest.fixture
def endpoint_cli(tmp_path):
    """Run the real ``globus-compute-endpoint`` command with its endpoints kept under ``tmp_path``."""
    pytest.importorskip("globus_compute_endpoint")
    env = {**os.environ, "HOME": str(tmp_path), "GLOBUS_COMPUTE_USER_DIR": str(tmp_path / "endpoints")}
    command = Path(sys.executable).with_name("globus-compute-endpoint")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(command), *args],
            input=stdin,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def configure_documented_endpoint(tmp_path, endpoint_cli, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = endpoint_cli(
        "configure", "ptycho", "--multi-user", "false",
        "--core-config", "config.yaml",
        "--template-config", "user_config_template.yaml.j2",
        "--schema-config", "user_config_schema.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tmp_path / "endpoints" / "ptycho"


def test_the_documented_endpoint_is_configured_started_and_rendered_by_globus_compute(tmp_path, endpoint_cli):
    from globus_compute_endpoint.endpoint.config import CoreEndpointConfig, UserEndpointConfig
    from globus_compute_endpoint.endpoint.config.utils import get_config

    endpoint = configure_documented_endpoint(
        tmp_path, endpoint_cli, {n: named_block(n) for n in ENDPOINT_FILES}
    )
    # what `globus-compute-endpoint start` loads, and the check it makes before starting
    assert isinstance(get_config(endpoint), CoreEndpointConfig)
    rendered = endpoint_cli(
        "render-user-config", "-e", "ptycho", "-o", "-", stdin='{"account": "PtychoAlloc", "queue": "prod"}'
    )
    assert rendered.returncode == 0, rendered.stderr
    document, config = load_rendered_config(rendered.stdout)
    assert_polaris_as_upstream(document)
    assert isinstance(config, UserEndpointConfig)
    executor = config.engine.executor
    config.engine.shutdown()
    provider = executor.provider
    assert type(provider).__name__ == "PBSProProvider"
    assert (provider.account, provider.queue, provider.walltime) == ("PtychoAlloc", "prod", "01:00:00")
    assert "BLUESKY_PTYCHO_DEVICE=gpu" in provider.worker_init
    assert executor.max_workers_per_node == 4 and len(executor.available_accelerators) == 4


def test_the_documented_mpi_endpoint_gives_tasks_the_ranks_the_flow_asks_for(
    tmp_path, endpoint_cli, monkeypatch
):
    """The MPI template as globus-compute-endpoint renders and loads it, and the settings lines that go with it."""
    from globus_compute_endpoint.endpoint.config import UserEndpointConfig
    from parsl.executors.high_throughput.mpi_prefix_composer import validate_resource_spec

    files = {n: named_block(n) for n in ENDPOINT_FILES}
    files["user_config_template.yaml.j2"] = named_block("user_config_template_mpi.yaml.j2")
    configure_documented_endpoint(tmp_path, endpoint_cli, files)
    rendered = endpoint_cli(
        "render-user-config", "-e", "ptycho", "-o", "-", stdin='{"account": "PtychoAlloc", "nodes": 4}'
    )
    assert rendered.returncode == 0, rendered.stderr
    document, config = load_rendered_config(rendered.stdout)
    assert_polaris_as_upstream(document)
    assert isinstance(config, UserEndpointConfig)
    executor = config.engine.executor
    config.engine.shutdown()
    assert type(config.engine).__name__ == "GlobusMPIEngine" and type(executor).__name__ == "MPIExecutor"
    assert executor.mpi_launcher == "mpiexec" and executor.provider.nodes_per_block == 4
    settings_lines = tomllib.loads(named_block("globus.toml").replace('"..."', f'"{uuid.uuid4()}"'))
    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_SETTINGS", str(tmp_path / "none.toml"))
    resources = GlobusSettings(**settings_lines).compute_resource_specification
    validate_resource_spec(dict(resources))  # what the MPI executor checks of each task's resources
    assert resources["num_nodes"] <= settings_lines["compute_user_endpoint_config"]["nodes"]


def test_the_documented_schema_refuses_a_misspelt_user_option(tmp_path, endpoint_cli):
    configure_documented_endpoint(tmp_path, endpoint_cli, {n: named_block(n) for n in ENDPOINT_FILES})
    rendered = endpoint_cli(
        "render-user-config", "-e", "ptycho", "-o", "-", stdin='{"acount": "PtychoAlloc"}'
    )
    assert rendered.returncode != 0 and "account" in rendered.stderr + rendered.stdout


def test_an_engine_in_config_yaml_is_what_globus_compute_refuses(tmp_path, endpoint_cli):
    """The layout the docs used to show: the engine in config.yaml makes an endpoint that will not start."""
    from globus_compute_endpoint.endpoint.config import CoreEndpointConfig
    from globus_compute_endpoint.endpoint.config.utils import get_config

    old = "display_name: ptycho\n" + named_block("user_config_template.yaml.j2").replace(
        "ifname: hsn0", "ifname: lo"
    )
    old = re.sub(r"\{\{ (\w+) .*?\}\}", lambda m: {"max_blocks": "2"}.get(m.group(1), '"X"'), old)
    endpoint = configure_documented_endpoint(
        tmp_path, endpoint_cli, {n: named_block(n) for n in ENDPOINT_FILES}
    )
    (endpoint / "config.yaml").write_text(old)  # edited by hand, as the old docs said
    config = get_config(endpoint)
    config.engine.shutdown()
    assert not isinstance(config, CoreEndpointConfig)  # start: "contains an `engine` field; will not start"


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


def test_the_facility_extra_installs_the_endpoint_at_the_sdk_version():
    import tomllib
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    facility = {Requirement(r).name: Requirement(r) for r in extras["facility"]}
    sdk = next(Requirement(r) for r in extras["globus"] if Requirement(r).name == "globus-compute-sdk")
    endpoint = facility["globus-compute-endpoint"]
    assert "bluesky-ptycho" in facility and "globus" in facility["bluesky-ptycho"].extras
    assert str(endpoint.specifier) == str(sdk.specifier)  # released together: one range for both
    # the endpoint installed here pins the SDK exactly; that pin falls in the range
    pinned = next(
        Requirement(r) for r in requires("globus-compute-endpoint") if r.startswith("globus-compute-sdk")
    )
    assert version("globus-compute-endpoint") in endpoint.specifier
    assert next(iter(pinned.specifier)).version in sdk.specifier
    assert "[facility]" in FEDERATION_DOC
