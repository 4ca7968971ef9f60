"""The service's configuration file: a bad one fails in one line naming the field; Kafka's settings reach the consumer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from bluesky_ptycho.cli import main
from bluesky_ptycho.federation.mpi import PARSL_PREFIX_VARIABLE
from bluesky_ptycho.service.buses import BusHealth, KafkaBus, make_bus
from bluesky_ptycho.service.config import KafkaBusConfig, load_config
from bluesky_ptycho.service.service import make_runner
from bluesky_ptycho.service.testing import free_port

GOOD = """
[bus]
kind = "zmq"
address = "localhost:5578"
[runner]
kind = "dask"
scheduler = "tcp://scheduler:8786"
[reconstruction]
preview_every = 25
final = {algorithm = "lsqml", iterations = 150}
[geometry]
data_key = "det_image"
position_unit = "um"
"""


def check(tmp_path, text: str) -> tuple[int, str]:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["serve", str(path), "--check"])
    return result.exit_code, result.output


def test_a_good_file_is_read_into_the_service_settings(tmp_path):
    code, output = check(tmp_path, GOOD)
    assert code == 0 and "bus zmq, runner dask, catalog embedded: OK" in output, output
    config = load_config(tmp_path / "serve.toml")
    assert config.reconstruction.final_settings().iterations == 150
    assert config.reconstruction.final_settings().probe_modes == 3  # the final defaults fill the rest
    assert make_bus(config.bus).address == "tcp://localhost:5578"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("address = ", "adress = "), "bus.address: Field required"),
        (('kind = "zmq"', 'kind = "mqtt"'), "bus: Input tag 'mqtt' found using 'kind' does not match"),
        (
            ("preview_every = 25", "preview_evry = 25"),
            "reconstruction.preview_evry: Extra inputs are not permitted",
        ),
        (('algorithm = "lsqml"', 'algorithm = "lsqm"'), "reconstruction.final: algorithm must be one of"),
        (('scheduler = "tcp://scheduler:8786"', ""), "runner: a dask runner needs runner.scheduler"),
        (('kind = "dask"', 'kind = "mpi"'), "runner: a mpi runner needs runner.ranks"),
        (('scheduler = "tcp://scheduler:8786"', "ranks = 0"), "runner.ranks: Input should be greater than"),
        (("[geometry]", "[geometry"), "not valid TOML"),
    ],
)
def test_a_bad_file_fails_in_one_line_naming_the_field(tmp_path, change, message):
    code, output = check(tmp_path, GOOD.replace(*change))
    assert code == 1, output
    (line,) = output.strip().splitlines()
    assert message in line and "serve.toml" in line, line


def test_an_api_key_file_readable_by_others_is_refused(tmp_path):
    key = tmp_path / "tiled-key"
    key.write_text("secret\n")
    os.chmod(key, 0o644)
    text = GOOD + f'[catalog]\nuri = "http://tiled:8000"\napi_key_file = "{key}"\n'
    code, output = check(tmp_path, text)
    assert code == 1 and "catalog.api_key_file" in output and "chmod 600" in output, output
    os.chmod(key, 0o600)
    assert check(tmp_path, text)[0] == 0
    assert load_config(tmp_path / "serve.toml").catalog.api_key() == "secret"


OPEN_CATALOG = """
import sys
from bluesky_ptycho.service.config import load_config
from bluesky_ptycho.service.service import open_catalog
print(sorted(open_catalog(load_config(sys.argv[1]).catalog)))
"""


def test_a_catalog_named_by_tiled_profile_takes_the_key_from_the_key_file(tmp_path, tiled_server_factory):
    server = tiled_server_factory()  # it asks for its API key
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "beamline.yml").write_text(f"beamline:\n  uri: {server.uri.split('?')[0]}\n")
    key = tmp_path / "tiled-key"
    key.write_text(server.api_key + "\n")
    os.chmod(key, 0o600)
    config = tmp_path / "serve.toml"
    config.write_text(GOOD + f'[catalog]\nuri = "beamline"\napi_key_file = "{key}"\n')

    def open_catalog():  # Tiled reads TILED_PROFILES when first imported: a process of its own
        environment = {**os.environ, "TILED_PROFILES": str(profiles)}
        command = [sys.executable, "-c", OPEN_CATALOG, str(config)]
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)

    opened = open_catalog()
    assert opened.returncode == 0 and opened.stdout.strip() == "[]", opened.stderr[-2000:]
    key.write_text("not-the-key\n")
    refused = open_catalog()
    assert refused.returncode != 0 and "requires API key" in refused.stderr, refused.stderr[-2000:]


KAFKA = """
[bus]
kind = "kafka"
bootstrap_servers = "broker1:9092,broker2:9092"
topics = ["tst.bluesky.runengine.documents"]
consumer_config = {"security.protocol" = "SASL_SSL", "sasl.mechanisms" = "PLAIN", "sasl.username" = "beamline"}
sasl_password_file = "PASSWORD"
"""


def test_a_kafka_bus_configures_bluesky_kafkas_consumer(tmp_path):
    """No broker runs here: librdkafka itself checks the settings when the consumer is made."""
    pytest.importorskip("bluesky_kafka")
    password = tmp_path / "kafka-password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    kafka = KAFKA.replace("PASSWORD", str(password))
    assert check(tmp_path, kafka)[0] == 0
    bus = make_bus(load_config(tmp_path / "serve.toml").bus)
    assert isinstance(bus, KafkaBus) and not bus.lossy
    consumer = bus.consumer(lambda name, doc: None)  # librdkafka connects lazily: no broker needed
    settings = consumer._consumer_config
    assert settings["bootstrap.servers"] == "broker1:9092,broker2:9092"
    assert settings["group.id"] == "bluesky-ptycho"
    assert settings["security.protocol"] == "SASL_SSL" and settings["auto.offset.reset"] == "latest"
    assert settings["sasl.password"] == "s3cret"
    consumer.close()
    code, output = check(
        tmp_path, kafka.replace('"security.protocol"', '"group.id" = "x", "security.protocol"')
    )
    assert code == 1 and "bus.consumer_config: give 'group.id' as bus.group_id" in output, output


def test_a_kafka_bus_with_no_broker_reports_an_outage_and_never_says_connected(tmp_path):
    pytest.importorskip("bluesky_kafka")
    port = free_port()  # nothing listens there
    config = KafkaBusConfig(kind="kafka", bootstrap_servers=f"127.0.0.1:{port}", topics=["bl99.documents"])
    causes = []
    health = BusHealth("kafka", causes.append)
    stopping = threading.Event()
    follower = threading.Thread(target=KafkaBus(config).run, args=(lambda name, doc: None, health, stopping))
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while not causes and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stopping.set()
        follower.join(30)
    assert len(causes) == 1 and str(port) in causes[0], causes  # once per outage, naming the broker
    assert not health.ever_connected and not follower.is_alive()


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")
def test_an_mpi_runner_stages_every_job_for_the_ranks_named(tmp_path):
    runner_table = f'[runner]\nkind = "mpi"\nranks = 2\nstaging_directory = "{tmp_path / "staging"}"\n'
    (tmp_path / "serve.toml").write_text(GOOD.split("[runner]")[0] + runner_table)
    runner = make_runner(load_config(tmp_path / "serve.toml").runner)
    try:
        assert runner.location == "2 MPI ranks"
        assert runner.staging_directory == tmp_path / "staging"
        assert runner.executor.submit(os.getenv, PARSL_PREFIX_VARIABLE).result(60).endswith("mpiexec -n 2")
    finally:
        runner.shutdown()
