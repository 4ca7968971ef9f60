"""Latency and throughput of federated reconstruction: a Dask cluster, and a Globus Flow played locally.

Run ``python benchmarks/federation.py`` (defaults: a 516-frame 128 x 128 scan,
50 iterations, then 4 scans of 200 x 64² for throughput). For each path it prints
the latency from the raw scan's stop document to its final reconstruction in a
(real, embedded) Tiled catalog, split into staging (frames written here),
transfer (moving data and waiting, measured as the remote round trip minus the
compute), compute (in the worker) and write-back (into the catalog), and the
overhead beyond compute as a fraction of compute (target <= 10 %). The Flow
path runs the real GlobusFlowRunner against ``LocalFlowsService`` (HTTP-level
stand-in: copies between two directories playing the collections, the same
compute function); only the transport differs from production.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import responses
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from distributed import Client, LocalCluster
from tiled.client import from_uri
from tiled.server import SimpleTiledServer

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import ExecutorRunner
from bluesky_ptycho.federation.flows import GlobusFlowRunner
from bluesky_ptycho.federation.testing import LocalFlowsService, local_flow_settings, token_clients
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


class StopTimes:
    """Records when each run's stop document passes (after the callbacks before it in the list)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "stop":
            self.at[doc["run_start"]] = time.perf_counter()


def run_scans(runner, catalog, sizes, iterations: int) -> tuple[list[dict], float]:
    """Scan ``sizes`` = [(points, frame size), ...]; return per-scan timings and the total wall time."""
    raw_stops, recon_stops = StopTimes(), StopTimes()
    results = {}
    callback = PtychoCallback(
        [TiledWriter(catalog, batch_size=50), recon_stops],
        runner=runner,
        settings=ReconstructionSettings(iterations=iterations),
        preview_every=None,
        on_result=lambda uid, result, final: results.__setitem__(uid, result),
    )
    RE = RunEngine()
    RE.subscribe(callback)
    RE.subscribe(raw_stops)
    started = time.perf_counter()
    uids = []
    for points, size in sizes:
        stage, det = simulated_beamline(frame_size=size)
        uids += RE(fermat_spiral_ptycho_scan(det, stage, n_points=points, step_um=0.3 * 64 / size))
    callback.wait()
    total = time.perf_counter() - started
    recon_of = {doc["raw_uid"]: doc["uid"] for doc in _starts(catalog, uids)}
    rows = []
    for uid in uids:
        timings = results[uid].extra["timings"]
        latency = recon_stops.at[recon_of[uid]] - raw_stops.at[uid]
        write_back = latency - sum(timings.values())
        rows.append({**timings, "write_back_s": write_back, "latency_s": latency})
    return rows, total


def _starts(catalog, raw_uids):
    from bluesky_ptycho.catalog import reconstructions_of

    return [run.metadata["start"] for uid in raw_uids for run in reconstructions_of(catalog, uid)]


def report(path: str, row: dict) -> None:
    overhead = row["latency_s"] - row["compute_s"]
    print(
        f"{path:10s} latency {row['latency_s']:6.2f} s = staging {row['staging_s']:.2f} + transfer "
        f"{row['transfer_s']:.2f} + compute {row['compute_s']:.2f} + write-back {row['write_back_s']:.2f}; "
        f"overhead {100 * overhead / row['compute_s']:.1f} % of compute"
    )


@contextlib.contextmanager
def dask_runner(workdir: Path):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield ExecutorRunner(
            client.get_executor(), staging_directory=workdir / "dask-staging", inline_limit=2**20
        )


@contextlib.contextmanager
def flow_runner(workdir: Path):
    settings = local_flow_settings(workdir)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        LocalFlowsService(http, settings)
        yield GlobusFlowRunner(settings, clients=token_clients(settings.flow_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=516)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--scans", type=int, default=4, help="scans of 200 x 64^2 for throughput (0: skip)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ptycho-federation-"))
    server = SimpleTiledServer(workdir / "catalog")
    catalog = from_uri(server.uri)
    print(f"one scan of {args.points} x {args.size}^2, {args.iterations} iterations; catalog: embedded Tiled")
    for path, make in (("dask", dask_runner), ("flow", flow_runner)):
        with make(workdir / path) as runner:
            (row,), _ = run_scans(runner, catalog, [(args.points, args.size)], args.iterations)
            report(path, row)
            if args.scans:
                rows, total = run_scans(runner, catalog, [(200, 64)] * args.scans, 20)
                print(
                    f"{path:10s} {args.scans} scans of 200 x 64^2 back to back: {total:.1f} s from first start "
                    f"to last reconstruction, {60 * args.scans / total:.1f} scans/min; "
                    f"latency after stop {min(r['latency_s'] for r in rows):.2f}-{max(r['latency_s'] for r in rows):.2f} s"
                )
            runner.shutdown()
    server.close()


if __name__ == "__main__":
    main()
