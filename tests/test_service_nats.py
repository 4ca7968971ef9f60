"""``bluesky-ptycho serve`` on NATS JetStream: a real nats-server (Debian's), bluesky-nats's publisher."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from bluesky import RunEngine

from bluesky_ptycho.catalog import connect
from bluesky_ptycho.service.testing import Service, free_port, listening, recorded, service_config, wait_until
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline

pytest.importorskip("bluesky_nats")
SUBJECT = "bl99.documents"


class NatsServer:
    """``nats-server -js`` on a fixed loopback port, its stream kept on disk across restarts."""

    def __init__(self, directory) -> None:
        if shutil.which("nats-server") is None:
            pytest.skip("nats-server is not installed (Debian: apt install nats-server)")
        self.port, self.directory, self.process = free_port(), directory, None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: listening(self.port), 30, "nats-server listens")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


def nats_publisher(port: int):
    """bluesky-nats's NATSPublisher, as a beamline subscribes it to its RunEngine, and the stream it writes to."""
    import nats
    from bluesky_nats.nats_publisher import NATSPublisher
    from bluesky_nats.nats_runtime import NatsRuntime
    from bluesky_nats.outbox import Delivery, Outbox

    runtime = NatsRuntime()
    client = runtime.connect(nats.connect(f"nats://127.0.0.1:{port}"))
    jetstream = client.jetstream()
    runtime.setup(jetstream.add_stream(name="bluesky", subjects=[f"{SUBJECT}.>"]))
    return NATSPublisher(Outbox(runtime, client, delivery=Delivery.CRITICAL), jetstream, SUBJECT), runtime


def test_the_service_waits_for_nats_and_a_restarted_service_reconstructs_what_came_meanwhile(
    tmp_path, nats_server
):
    catalog = connect(None, tmp_path / "catalog")
    bus = f'kind = "nats"\nservers = ["nats://127.0.0.1:{nats_server.port}"]\nsubject = "{SUBJECT}"'
    config = service_config(tmp_path, bus)
    service = Service(config, tmp_path)
    try:
        service.wait_for_log("unreachable")  # no server yet, then no stream: it retries
        nats_server.start()
        publisher, runtime = nats_publisher(nats_server.port)
        service.wait_for_log("is back after", timeout=60)
        RE = RunEngine()
        RE.subscribe(publisher)
        stage, det = simulated_beamline(seed=1)
        (first,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
        assert recorded(catalog, first)["exit_status"] == "success"
        assert service.terminate() == 0
        assert service.log_text().count("unreachable") == 1, service.log_text()  # once per outage
        # a scan published while no service runs waits in the stream for the durable consumer
        (second,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
        service = Service(config, tmp_path)
        assert recorded(catalog, second)["exit_status"] == "success"
        assert service.terminate() == 0
        assert "unreachable" not in service.log_text().split("stopped by SIGTERM")[1], service.log_text()
        runtime.close()
    finally:
        service.kill()
