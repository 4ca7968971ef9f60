"""Latency and throughput of federated reconstruction: a Dask cluster, and a Globus Flow played locally.

Run ``python benchmarks/federation.py`` (defaults: a 516-frame 128 x 128 scan,
then 4 scans of 200 x 64² for throughput). First, for a scan with a preview
(50 rPIE iterations) every 64 frames, it prints the bytes each path moved (sent to
the workers and results back) against the scan's raw frames: the target is at
most 1.1 x the raw frames plus the results, met when frames travel once as
staged files (Dask with a staging directory, the Flow) and missed by design
inline (every job carries the scan so far). Then for each path it prints,
for the product's default final reconstruction (``ReconstructionSettings.final()``:
LSQML, 3 probe modes, 200 iterations; ``--final rpie`` for 50 rPIE iterations),
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
from bluesky_ptycho.catalog.table_storage import serialize_duckdb_connections
from bluesky_ptycho.federation import ExecutorRunner
from bluesky_ptycho.federation.flows import GlobusFlowRunner
from bluesky_ptycho.federation.testing import (
    LocalComputeEndpoint,
    LocalComputeService,
    LocalFlowsService,
    local_flow_settings,
    token_clients,
)
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings


class StopTimes:
    """Records when each run's stop document passes (after the callbacks before it in the list)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "stop":
            self.at[doc["run_start"]] = time.perf_counter()


def run_scans(
    runner, catalog, sizes, settings: ReconstructionSettings, preview_every: int | None = None
) -> tuple[list[dict], float]:
    """Scan ``sizes`` = [(points, frame size), ...]; return per-scan timings and the total wall time.

    Each row also holds the bytes the runner sent and received over all of
    the scan's jobs (previews and final), and the scan's raw frame bytes.
    """
    raw_stops, recon_stops = StopTimes(), StopTimes()
    results, moved = {}, {}

    def on_result(uid, result, final):
        results[uid] = result
        total = moved.setdefault(uid, {"sent": 0, "received": 0})
        for key in total:
            total[key] += result.extra["bytes_moved"][key]

    callback = PtychoCallback(
        [TiledWriter(catalog, batch_size=50), recon_stops],
        runner=runner,
        settings=settings,
        preview_every=preview_every,
        preview_iterations=50,
        queue_previews=True,
        on_result=on_result,
    )
    RE = RunEngine()
    RE.subscribe(callback)
    RE.subscribe(raw_stops)
    started = time.perf_counter()
    uids, raw_bytes = [], []
    for points, size in sizes:
        stage, det = simulated_beamline(frame_size=size)
        uids += RE(fermat_spiral_ptycho_scan(det, stage, n_points=points, step_um=0.3 * 64 / size))
        raw_bytes.append(points * det.image.get().nbytes)
    callback.wait()
    total = time.perf_counter() - started
    recon_of = {doc["raw_uid"]: doc["uid"] for doc in _starts(catalog, uids)}
    rows = []
    for uid, raw in zip(uids, raw_bytes, strict=True):
        timings = results[uid].extra["timings"]
        latency = recon_stops.at[recon_of[uid]] - raw_stops.at[uid]
        write_back = latency - sum(timings.values())
        rows.append(
            {**timings, "write_back_s": write_back, "latency_s": latency, **moved[uid], "raw_bytes": raw}
        )
    return rows, total


def _starts(catalog, raw_uids):
    from bluesky_ptycho.catalog import reconstructions_of

    return [run.metadata["start"] for uid in raw_uids for run in reconstructions_of(catalog, uid)]


def report(path: str, row: dict) -> None:
    overhead = row["latency_s"] - row["compute_s"]
    print(
        f"{path:12s} latency {row['latency_s']:6.2f} s = staging {row['staging_s']:.2f} + transfer "
        f"{row['transfer_s']:.2f} + compute {row['compute_s']:.2f} + write-back {row['write_back_s']:.2f}; "
        f"overhead {overhead:.2f} s = {100 * overhead / row['compute_s']:.1f} % of compute (target <= 10 %)"
    )


def report_bytes(path: str, row: dict) -> None:
    raw, sent, received = row["raw_bytes"], row["sent"], row["received"]
    print(
        f"{path:12s} bytes moved over the scan: sent {sent / 1e6:.1f} MB ({sent / raw:.2f} x the raw frames "
        f"{raw / 1e6:.1f} MB), results back {received / 1e6:.1f} MB; moved / (raw + results) "
        f"{(sent + received) / (raw + received):.2f} (target <= 1.1)"
    )


@contextlib.contextmanager
def dask_runner(workdir: Path, staged: bool = True):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield ExecutorRunner(client.get_executor(), staging_directory=workdir / "staging" if staged else None)


@contextlib.contextmanager
def dask_inline_runner(workdir: Path):
    with dask_runner(workdir, staged=False) as runner:
        yield runner


@contextlib.contextmanager
def flow_runner(workdir: Path):
    with (
        responses.RequestsMock(assert_all_requests_are_fired=False) as http,
        LocalComputeEndpoint(workdir / "endpoint") as endpoint,
    ):
        compute = LocalComputeService(http, endpoint)
        settings = local_flow_settings(workdir, compute)
        LocalFlowsService(http, settings, compute)
        yield GlobusFlowRunner(settings, clients=token_clients(settings.flow_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=516)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--final",
        choices=("default", "rpie"),
        default="default",
        help="final reconstruction of the latency scan",
    )
    parser.add_argument("--preview-every", type=int, default=64, help="frames between previews (bytes moved)")
    parser.add_argument("--scans", type=int, default=4, help="scans of 200 x 64^2 for throughput (0: skip)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ptycho-federation-"))
    serialize_duckdb_connections()
    server = SimpleTiledServer(workdir / "catalog")
    catalog = from_uri(server.uri)
    preview = ReconstructionSettings(iterations=50)
    final = ReconstructionSettings.final() if args.final == "default" else preview
    print(
        f"one scan of {args.points} x {args.size}^2; final: {final.algorithm}, {final.probe_modes} mode(s), "
        f"{final.iterations} iterations; catalog: embedded Tiled"
    )
    scan = [(args.points, args.size)]
    for path, make in (("dask", dask_runner), ("dask-inline", dask_inline_runner), ("flow", flow_runner)):
        with make(workdir / path) as runner:
            (row,), _ = run_scans(runner, catalog, scan, preview, preview_every=args.preview_every)
            report_bytes(path, row)
            if path == "dask-inline":
                runner.shutdown()
                continue
            (row,), _ = run_scans(runner, catalog, scan, final)
            report(path, row)
            if args.scans:
                rows, total = run_scans(
                    runner, catalog, [(200, 64)] * args.scans, ReconstructionSettings(iterations=20)
                )
                print(
                    f"{path:10s} {args.scans} scans of 200 x 64^2 back to back: {total:.1f} s from first start "
                    f"to last reconstruction, {60 * args.scans / total:.1f} scans/min; "
                    f"latency after stop {min(r['latency_s'] for r in rows):.2f}-{max(r['latency_s'] for r in rows):.2f} s"
                )
            runner.shutdown()
    server.close()


if __name__ == "__main__":
    main()
