"""RunEngine wall time of a scan with and without PtychoCallback subscribed.

Run ``python benchmarks/callback_overhead.py`` (defaults: 500 frames of
256 x 256, previews every 50 frames). All cases run in this process, one
after the other, each right after a scan without callback, and repeated;
a case's overhead is the median over the repeats of its time over that of
the scan before it (a shared machine's speed drifts within minutes).
Cases: the callback collecting frames only (previews off: its own cost on
the RunEngine thread); previews on a worker thread; previews on a worker
process (``LocalRunner(process=True)``); the RunEngine only publishing
to a 0MQ proxy (``bluesky-0MQ-proxy``) with no reconstruction running
(the service idle: the publisher's own cost); publishing while
``bluesky-ptycho serve`` in another process reconstructs from the proxy;
and, for reference, no callback but a lowest-priority busy process beside
the scan: what any concurrent work costs the RunEngine on this machine. The
work left when the RunEngine returns is waited for but not counted.

Then, with the service, the latencies a scientist sees for a scan of
``--latency-points`` frames of 128 x 128 (previews every 64 frames, rPIE
with one mode, the default 100 iterations for the final): from the event
that completes the first preview's frames to that preview in the catalog,
and from the stop document to the final reconstruction in the catalog
(targets 2 s and 5 s). Twice: with the RunEngine running the scan on this
machine (its simulated detector shares the service's two cores), and with
the RunEngine elsewhere, as deployed (the scan recorded first, then its
documents sent to the proxy at the pace they came). And, to read the final's
latency against, the final's own 100 iterations without the service.

Nothing is polled: the times are the catalog server's own, from Tiled's
streaming of changes over its websocket (the stop document's update as it
happens; the run's table replayed from its first rows once the run is
complete). Polling costs the server about 16 ms of CPU a request: at
10 Hz it added 1.3-1.8 s to the final it measured on this 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from tiled.client.stream import ContainerSubscription, TableSubscription

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import PLAN_NAME, connect
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.service.testing import Service, ZmqProxy, close_publisher, service_config, wait_until
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, simulate


@contextlib.contextmanager
def busy_neighbour():
    """A process spinning at the lowest priority (niceness 19) while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.nice(19))
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


class ServiceOnProxy:
    """A real ``bluesky-0MQ-proxy`` and ``bluesky-ptycho serve`` reading it, into an embedded catalog here."""

    def __init__(self, workdir: Path, preview_every: int, final_iterations: int = 100) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.proxy = ZmqProxy().start()
        self.catalog = connect(None, workdir / "catalog")
        bus = f'kind = "zmq"\naddress = "localhost:{self.proxy.out_port}"\nprefix = "bl99"'
        config = service_config(
            workdir,
            bus,
            process=True,
            preview_every=str(preview_every),
            preview_iterations="20",
            final=f'{{algorithm = "rpie", probe_modes = 1, iterations = {final_iterations}}}',
        )
        self.service = Service(config, workdir)
        self.service.wait_for_log("connected to the document bus")
        self.finals = FinalsWatch(self.catalog)
        address = f"localhost:{self.proxy.in_port}"
        self.publisher = Publisher(address, prefix=b"bl99")
        # the same proxy, a prefix the service does not subscribe to: the service stays idle
        self.idle_publisher = Publisher(address, prefix=b"idle")
        time.sleep(1.0)  # 0MQ's slow joiner

    def close(self) -> None:
        """Stop everything started, even when the service does not stop on SIGTERM in time (then it is killed)."""
        self.finals.close()
        for publisher in (self.publisher, self.idle_publisher):
            close_publisher(publisher)
        try:
            self.service.terminate()
        except subprocess.TimeoutExpired:
            self.service.kill()
        finally:
            self.proxy.stop()


def timed_scan(points: int, size: int, case: str, service: ServiceOnProxy | None = None) -> float:
    RE = RunEngine()
    stage, detector = simulated_beamline(frame_size=size)
    callback = None
    if case in ("collecting only", "worker thread", "worker process"):
        callback = PtychoCallback(
            lambda name, doc: None,
            runner=LocalRunner(process=case == "worker process"),
            settings=ReconstructionSettings(iterations=5),
            preview_every=None if case == "collecting only" else 50,
        )
        RE.subscribe(callback)
    if case == "publisher only":
        RE.subscribe(service.idle_publisher)
    elif case == "publisher+service":
        RE.subscribe(service.publisher)
    step = 0.3 * 64 / size  # the probe is a fixed fraction of the frame
    with busy_neighbour() if case == "busy neighbour" else contextlib.nullcontext():
        start = time.perf_counter()
        (uid,) = RE(fermat_spiral_ptycho_scan(detector, stage, n_points=points, step_um=step))
        elapsed = time.perf_counter() - start
    if callback is not None:
        callback.wait()
        callback.runner.shutdown()
    if case == "publisher+service":
        service.finals.wait(uid)
    return elapsed


POLL_S = 0.1
WAIT_S = 300.0  # a service that has not written by then has failed: the benchmark stops, naming what


class FinalsWatch:
    """When each reconstruction run's stop document reached ``catalog``, as its server tells as it happens."""

    def __init__(self, catalog) -> None:
        self._stored: dict[str, tuple[float, str]] = {}  # raw scan uid: (when, reconstruction run uid)
        self._subscription = ContainerSubscription(catalog.context, catalog.path_parts)
        self._subscription.child_metadata_updated.add_callback(self._updated)  # held weakly: a method
        self._subscription.start_in_thread()

    def _updated(self, update) -> None:
        start = update.metadata.get("start", {})
        if update.metadata.get("stop") and start.get("plan_name") == PLAN_NAME:
            self._stored.setdefault(start["raw_uid"], (server_time(update), update.key))

    def wait(self, raw_uid: str) -> tuple[float, str]:
        """Wait until the final reconstruction of ``raw_uid`` is in the catalog; return when, and its run's uid."""
        return wait_until(
            lambda: self._stored.get(raw_uid), WAIT_S, f"the final reconstruction of {raw_uid}", POLL_S
        )

    def close(self) -> None:
        self._subscription.disconnect()


def server_time(update) -> float:
    """When the catalog server stored what ``update`` tells (its clock is this machine's; naive times are local)."""
    return update.timestamp.timestamp()


def first_event_stored(catalog, run_uid: str) -> float:
    """When the catalog stored the first event (a preview) of the run ``run_uid``: its table's first rows.

    Tiled's stream of the table is replayed from its beginning, so this is
    asked once the run is complete, with nothing polled while it is written.
    """
    first: list[float] = []

    def rows(update) -> None:
        first.append(server_time(update))

    subscription = TableSubscription(catalog.context, [*catalog.path_parts, run_uid, "primary", "internal"])
    subscription.new_data.add_callback(rows)
    subscription.start_in_thread(start=1)
    try:
        return wait_until(lambda: first and first[0], WAIT_S, f"the first event of {run_uid}", POLL_S)
    finally:
        subscription.disconnect()


DocumentCallback = Callable[[str, dict], None]


def latency_scan(points: int, callbacks: list[DocumentCallback]) -> None:
    """A scan of ``points`` frames of 128 x 128 on the simulated beamline, run here."""
    RE = RunEngine()
    for callback in callbacks:
        RE.subscribe(callback)
    stage, detector = simulated_beamline(frame_size=128)
    RE(fermat_spiral_ptycho_scan(detector, stage, n_points=points, step_um=0.15))


def replayed_scan(points: int, callbacks: list[DocumentCallback]) -> None:
    """The same scan recorded first, then its documents sent at the pace they came.

    What the service host sees of a RunEngine on another machine: the
    documents and their rate, without the scan's own work (here the
    simulated detector's) on the service's cores.
    """
    recorded: list[tuple[float, str, dict]] = []
    latency_scan(points, [lambda name, doc: recorded.append((time.perf_counter(), name, doc))])
    began, start = recorded[0][0], time.perf_counter()
    for at, name, doc in recorded:
        time.sleep(max(0.0, (at - began) - (time.perf_counter() - start)))
        for callback in callbacks:
            callback(name, doc)


def latencies(
    service: ServiceOnProxy, scan: Callable, points: int, preview_every: int
) -> tuple[float, float]:
    """(first preview, final) latencies in seconds, for one ``scan`` published to the service."""
    sent: dict[str, float] = {}

    def watch(name: str, doc: dict) -> None:
        if name == "start":
            sent["uid"] = doc["uid"]
        elif name == "event" and doc["seq_num"] == preview_every:
            sent["frames"] = time.time()
        elif name == "stop":
            sent["stop"] = time.time()

    scan(points, [service.publisher, watch])
    final, run_uid = service.finals.wait(sent["uid"])
    return first_event_stored(service.catalog, run_uid) - sent["frames"], final - sent["stop"]


def bare_final_seconds(points: int, repeats: int) -> float:
    """The final's own work without the service: 100 rPIE iterations on as many simulated 128 x 128 frames.

    The fastest of ``repeats``, continuing one reconstruction, as the final
    continues the previews; measured in the same run as the latencies, which
    it is to be read against (a shared machine's speed drifts).
    """
    data = simulate(n_frames=points, frame_size=128, seed=0).data
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(algorithm="rpie", probe_modes=1))
    reconstructor.add_frames(data.frames, data.positions).iterate(5)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reconstructor.iterate(100)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-points", type=int, default=516)
    args = parser.parse_args()
    cases = [
        "collecting only",
        "worker thread",
        "worker process",
        "publisher only",
        "publisher+service",
        "busy neighbour",
    ]
    pairs: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}  # (without callback, case)
    workdir = Path(tempfile.mkdtemp(prefix="ptycho-overhead-"))
    service = ServiceOnProxy(workdir, preview_every=50)
    try:
        for _ in range(args.repeats):
            for case in cases:
                without = timed_scan(args.points, args.size, "without callback", service)
                pairs[case].append((without, timed_scan(args.points, args.size, case, service)))
        print(
            f"{args.points} frames of {args.size}x{args.size}, {args.repeats} repeats, each case right after "
            "a scan without callback (median of the pairs' ratios)"
        )
        without = statistics.median(b for measured in pairs.values() for b, _ in measured)
        print(f"RunEngine wall time, {'without callback':17s}: {without:6.2f} s")
        for name, measured in pairs.items():
            median = statistics.median(c for _, c in measured)
            overhead = statistics.median(c / b - 1 for b, c in measured)
            print(f"RunEngine wall time, {name:17s}: {median:6.2f} s ({100 * overhead:+.1f} %)")
    finally:
        service.close()
    for label, scan in (("RunEngine on this machine", latency_scan), ("RunEngine elsewhere", replayed_scan)):
        service = ServiceOnProxy(workdir / label.replace(" ", "-"), preview_every=64)
        try:
            first, final = zip(
                *(latencies(service, scan, args.latency_points, 64) for _ in range(args.repeats)), strict=True
            )
        finally:
            service.close()
        print(
            f"service latency, {label} ({args.latency_points} frames of 128x128, median of {args.repeats}): "
            f"first preview {statistics.median(first):.2f} s after its frames (target <= 2 s); final (rPIE, "
            f"100 iterations) {statistics.median(final):.2f} s after the stop document (target <= 5 s)"
        )
    print(
        f"the final's 100 rPIE iterations alone, without the service (fastest of {args.repeats}): "
        f"{bare_final_seconds(args.latency_points, args.repeats):.2f} s"
    )


if __name__ == "__main__":
    main()
