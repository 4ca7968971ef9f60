"""``bluesky-ptycho serve`` on a real 0MQ proxy: scans reconstructed, bad input and outages recorded, SIGTERM."""

from __future__ import annotations

import time

import pytest
import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from helpers import Documents

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import connect, reconstructions_of, summarize
from bluesky_ptycho.service.testing import Service, ZmqProxy, close_publisher, recorded, service_config
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


@pytest.fixture
def proxy():
    proxy = ZmqProxy()
    yield proxy
    proxy.stop()


@pytest.fixture
def catalog(tmp_path):
    """The embedded catalog in ``tmp_path``, served by this process; the service finds it there."""
    return connect(None, tmp_path / "catalog")


@pytest.fixture
def serve(tmp_path, proxy):
    services = []

    def start(**reconstruction) -> Service:
        bus = f'kind = "zmq"\naddress = "localhost:{proxy.out_port}"\nreconnect_max_s = 1.0'
        services.append(Service(service_config(tmp_path, bus, **reconstruction), tmp_path))
        return services[-1]

    yield start
    for service in services:
        service.kill()


def scan(n_points: int = 60, seed: int = 1) -> Documents:
    """A real scan of the simulated beamline, its documents kept to be published by hand."""
    documents = Documents()
    RE = RunEngine()
    RE.subscribe(documents)
    stage, det = simulated_beamline(seed=seed)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=n_points))
    return documents


@pytest.fixture
def publisher(proxy):
    """Makes Publishers to the proxy; closed at the end without lingering on a proxy that may be gone."""
    made = []

    def make() -> Publisher:
        made.append(Publisher(f"localhost:{proxy.in_port}"))
        time.sleep(1.0)  # 0MQ's slow joiner: the first messages of a new connection are dropped
        return made[-1]

    yield make
    for each in made:
        close_publisher(each)


def test_the_service_reconstructs_from_the_proxy_records_what_it_could_not_and_stops_on_sigterm(
    proxy, serve, catalog, publisher
):
    service = serve()
    service.wait_for_log("unreachable")  # the proxy is not up yet: the service waits for it
    proxy.start()
    service.wait_for_log("is back after")
    send = publisher()

    # garbage on the wire: skipped
    garbage = zmq.Context.instance().socket(zmq.PUB)
    garbage.connect(f"tcp://localhost:{proxy.in_port}")
    time.sleep(0.5)
    garbage.send(b"no-spaces-at-all")
    garbage.send(b" start \x80not-a-pickle")
    time.sleep(0.5)
    garbage.close(linger=0)

    # a scan the service joins after its start: recorded as not reconstructed
    joined = scan(seed=2)
    for name, doc in joined[1:]:
        send(name, doc)
    stop = recorded(catalog, joined.named("start")[0]["uid"])
    assert stop["exit_status"] == "fail" and "start document never came" in stop["reason"], stop

    # a scan published live by a RunEngine, its start and stop delivered twice (a redelivering bus)
    def twice(name, doc):
        send(name, doc)
        if name in ("start", "stop"):
            send(name, doc)

    RE = RunEngine()
    RE.subscribe(twice)
    stage, det = simulated_beamline(seed=1)
    (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    stop = recorded(catalog, uid)
    assert stop["exit_status"] == "success", stop
    (run,) = reconstructions_of(catalog, uid)
    assert run["primary"]["n_frames"].read()[-1] == 60

    # a scan still taking frames when the service is stopped
    open_scan = scan(seed=3)
    for name, doc in open_scan[:32]:
        send(name, doc)
    open_uid = open_scan.named("start")[0]["uid"]
    service.wait_for_log(f"scan {open_uid}: preview")
    assert service.terminate() == 0
    stop = recorded(catalog, open_uid, timeout=10)
    assert stop["exit_status"] == "fail" and "stopped by SIGTERM during the scan" in stop["reason"], stop
    log = service.log_text()
    assert log.count("unreachable") == 1  # one line per outage, not one per attempt
    assert log.count("could not be decoded") == 2
    assert "Traceback" not in log, log
    assert "HTTP Request" not in log  # the catalog client's every request is not the service's news


def test_a_proxy_outage_mid_scan_fails_that_scan_and_the_next_scan_is_reconstructed(
    proxy, serve, catalog, publisher
):
    proxy.start()
    service = serve()
    service.wait_for_log("connected to the document bus")
    send = publisher()
    cut = scan(seed=4)
    for name, doc in cut[:25]:
        send(name, doc)
    cut_uid = cut.named("start")[0]["uid"]
    service.wait_for_log(f"scan {cut_uid}: preview")
    proxy.stop()
    stop = recorded(catalog, cut_uid, timeout=30)
    assert stop["exit_status"] == "fail" and "went down during the scan" in stop["reason"], stop
    proxy.start()
    service.wait_for_log("is back after")
    time.sleep(1.0)  # the publisher's own reconnection
    RE = RunEngine()
    RE.subscribe(send)
    stage, det = simulated_beamline(seed=1)
    (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert recorded(catalog, uid)["exit_status"] == "success"
    for name, doc in cut[25:]:  # the rest of the cut scan, after the outage: dropped, not a second record
        send(name, doc)
    time.sleep(1.0)
    assert service.terminate() == 0
    assert len(reconstructions_of(catalog, cut_uid)) == 1
    assert service.log_text().count("unreachable") == 1


def test_a_scan_whose_stop_the_bus_lost_is_reconstructed_partial_when_the_next_scan_begins(
    proxy, serve, catalog, publisher
):
    proxy.start()
    service = serve()
    service.wait_for_log("connected to the document bus")
    send = publisher()
    unstopped, whole = scan(seed=4), scan(seed=1)
    for name, doc in unstopped[:-1]:
        send(name, doc)
    for name, doc in whole:
        send(name, doc)
    first, second = (documents.named("start")[0]["uid"] for documents in (unstopped, whole))
    stop = recorded(catalog, first, timeout=60)
    assert stop["exit_status"] == "success", stop
    assert stop["reason"].startswith(
        f"partial: the scan's stop document never came here (the document bus lost it; the next scan, {second}, began)"
    )
    (run,) = reconstructions_of(catalog, first)
    assert summarize(run).n_frames == 60
    assert recorded(catalog, second)["reason"] == ""
    assert service.terminate() == 0


def test_a_reconstruction_given_up_while_running_is_recorded_as_failed_and_its_late_result_dropped():
    recon = Documents()
    callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=300), preview_every=None)
    RE = RunEngine()
    RE.subscribe(callback)
    stage, det = simulated_beamline(seed=1)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=60))
    assert callback.abandon("the service was stopped", running=True) == 1
    assert callback.wait(120)  # the final result came back after all...
    callback.runner.shutdown()
    (stop,) = recon.named("stop")
    assert stop["exit_status"] == "fail" and stop["reason"] == "the service was stopped"
    assert recon[-1][0] == "stop" and not recon.named("event")  # ...and was not recorded after the stop
    assert callback.abandon("again", running=True) == 0


def test_the_service_keeps_what_comes_while_it_is_held_up(proxy, publisher):
    """0MQ keeps taking documents off the wire while the service is busy (a result being written holds the
    interpreter): 2,500 frame-sized documents published at 1 kHz while it takes none all arrive, in order."""
    import threading

    from bluesky_ptycho.service.buses import BusHealth, ZmqBus
    from bluesky_ptycho.service.config import ZmqBusConfig

    proxy.start()
    bus = ZmqBus(ZmqBusConfig(kind="zmq", address=f"localhost:{proxy.out_port}"))
    published, stopping, received = threading.Event(), threading.Event(), []

    def deliver(name: str, doc: dict) -> None:
        published.wait(60)  # held up until every document was sent
        received.append(doc["seq_num"])

    reading = threading.Thread(target=bus.run, args=(deliver, BusHealth("0MQ"), stopping), daemon=True)
    reading.start()
    try:
        send = publisher()
        for seq_num in range(2500):
            send("event", {"seq_num": seq_num, "frame": bytes(64 * 1024)})
            time.sleep(0.001)  # at a detector's pace (a burst would overflow the publisher's own queue)
        time.sleep(1.0)  # the last of them on their way through the proxy
        published.set()
        deadline = time.monotonic() + 20
        while len(received) < 2500 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stopping.set()
        reading.join(10)
    assert received == list(range(2500))
