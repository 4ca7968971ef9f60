"""Scans of real size at detector rate: ingest, previews, final latency, memory and quality.

Run ``python benchmarks/scale.py`` (defaults: 1,000 and 10,000 frames of
128² and 256², inline frames and a bitshuffle-LZ4 HDF5 file as an Eiger file
writer leaves it, at 1 kHz and as fast as possible; ``--frames``,
``--sizes``, ``--sources``, ``--rates``, 0 for as fast as possible;
``--iterations`` of the final, 20).

Each scan's documents are composed in advance (event-model's ``compose_run``:
a start document with ``start["ptycho"]``, one event per frame with its
position, and for HDF5 a StreamResource and a StreamDatum every 100 frames
ahead of their events) and replayed into a :class:`PtychoCallback` with
``LocalRunner(process=True)``, previews every fifth of the scan, a final of
20 rPIE iterations. Prints:

- frames/s absorbed: frames over the seconds spent inside the callback;
- callback CPU: the CPU time of this process (the callback and its threads,
  not the memory sampling) over the scan's wall time, in cores (target at
  1 kHz: 0.25);
- previews: recorded while the scan ran / planned, the delay of each after
  its last frame was sent (target: the first within 2 s, four of five of a
  10,000-frame scan at 1 kHz) / the seconds of it the worker spent taking
  the frames in and iterating (the rest: reading or receiving the frames,
  returning and recording the result), and the frames each visited;
- final: seconds from the stop document to the final result;
- peak memory of this process beyond the scan's own data (the frames it
  replays) and of the worker, against the scan's 16-bit counts;
- the final's object error.

With ``--bus``, the documents go instead through a real 0MQ proxy
(bluesky's ``Publisher``) to ``bluesky-ptycho serve`` in a process of its own
(a worker process, its catalog embedded), as a beamline deploys the service.
Then frames/s is the frames over the CPU seconds the service's process spent
during the scan (its worker's not counted), cores that CPU over the scan's
wall time, the previews and their delays are read from the service's log
(delay only), the final is the seconds to its stop document in the catalog,
the memory is the service's and its worker's peak, and the last column
gives the frames the final reconstructed (all of them, unless the bus
dropped some) instead of the object error.
"""

from __future__ import annotations

import argparse
import itertools
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import h5py
import hdf5plugin
import psutil
from callback_overhead import ServiceOnProxy
from event_model import StreamRange, compose_run, compose_stream_resource
from peak_memory import PeakMemory

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog.documents import frames_visited
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.solver import ReconstructionSettings, object_error, simulate
from bluesky_ptycho.solver.data import ELECTRON_VOLT

DATASET = "/entry/data/data"
FRAMES_PER_DATUM = 100
PREVIEWS = 5


def documents(sim, source: str, directory: Path) -> list[tuple[str, dict]]:
    """The documents of one scan of ``sim``'s frames: inline, or in an HDF5 file written here first."""
    data = sim.data
    n_frames, h, w = data.frames.shape
    positions = data.positions * 1e6
    (x_min, y_min), (x_max, y_max) = positions.min(axis=0), positions.max(axis=0)
    run = compose_run(
        metadata={
            "plan_name": "scale",
            "num_points": n_frames,
            "ptycho": {
                "data_key": "det_image",
                "x_key": "x",
                "y_key": "y",
                "position_unit": "um",
                "photon_energy_ev": data.geometry.energy / ELECTRON_VOLT,
                "detector_distance_m": data.geometry.detector_distance,
                "detector_pixel_size_m": data.geometry.detector_pixel_size,
                # as a plan records it: results stored on one canvas, regular arrays in a catalog
                "scan_area": [float(x_min), float(x_max), float(y_min), float(y_max)],
            },
        }
    )
    image_key = {"source": "sim", "dtype": "array", "shape": [h, w], "dtype_numpy": "<u2"}
    if source == "hdf5":
        image_key["external"] = "STREAM:"
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={
            "det_image": image_key,
            "x": {"source": "sim", "dtype": "number", "shape": []},
            "y": {"source": "sim", "dtype": "number", "shape": []},
        },
    )
    docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    if source == "hdf5":
        path = directory / "frames.h5"
        with h5py.File(path, "w") as file:
            file.create_dataset(
                DATASET, data=data.frames, chunks=(1, h, w), **hdf5plugin.Bitshuffle(cname="lz4")
            )
        stream = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=path.absolute().as_uri(),
            data_key="det_image",
            parameters={"dataset": DATASET, "chunk_shape": [1, h, w]},
            start=run.start_doc,
        )
        docs.append(("stream_resource", stream.stream_resource_doc))
    for first in range(0, n_frames, FRAMES_PER_DATUM):
        last = min(n_frames, first + FRAMES_PER_DATUM)
        if source == "hdf5":
            datum = stream.compose_stream_datum(
                indices=StreamRange(start=first, stop=last),
                seq_nums=StreamRange(start=first + 1, stop=last + 1),
                descriptor=descriptor.descriptor_doc,
            )
            docs.append(("stream_datum", datum))
        for i in range(first, last):
            values = {"x": float(positions[i, 0]), "y": float(positions[i, 1])}
            if source == "inline":
                values["det_image"] = data.frames[i]
            event = descriptor.compose_event(data=values, timestamps=dict.fromkeys(values, time.time()))
            docs.append(("event", event))
    docs.append(("stop", run.compose_stop()))
    return docs


class Replay:
    """Sends documents into a callback at a frame rate, timing what the callback costs."""

    def __init__(self, callback) -> None:
        self.callback = callback
        self.inside = 0.0  # seconds spent in the callback
        self.sent: list[float] = []  # time.monotonic() each frame's event went in

    def __call__(self, docs: list[tuple[str, dict]], rate: float) -> float:
        """Replay ``docs`` at ``rate`` frames/s (0: as fast as possible); the wall time of the scan."""
        start = time.monotonic()
        for name, doc in docs:
            if name == "event" and rate:
                delay = start + len(self.sent) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            before = time.perf_counter()
            self.callback(name, doc)
            self.inside += time.perf_counter() - before
            if name == "event":
                self.sent.append(time.monotonic())
        return time.monotonic() - start


def prepared(n_frames: int, size: int, source: str, directory: Path):
    """The simulated scan, its documents, and its 16-bit counts' bytes; for HDF5 the frames stay in the file only."""
    sim = simulate(n_frames=n_frames, frame_size=size, photons=3e5, seed=0)
    counts = sim.data.frames.size * 2
    docs = documents(sim, source, directory)
    if source == "hdf5":  # the file holds the frames: this process need not (50,000 x 256² is 6.5 GB)
        sim.data.frames = sim.data.frames[:0]
    return sim, docs, counts


def run_case(n_frames: int, size: int, source: str, rate: float, iterations: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        sim, docs, counts = prepared(n_frames, size, source, Path(directory))
        results: list[tuple[float, object, bool]] = []
        runner = LocalRunner(process=True).start_worker()
        callback = PtychoCallback(
            runner=runner,
            settings=ReconstructionSettings(iterations=iterations),
            preview_every=n_frames // PREVIEWS,
            on_result=lambda uid, result, final: results.append((time.monotonic(), result, final)),
        )
        time.sleep(5)  # the worker's warm-up, done before a real scan starts
        replay = Replay(callback)
        memory = PeakMemory(0.01)
        data_bytes = memory.now()
        cpu = time.process_time() - memory.cpu_seconds
        wall = replay(docs[:-1], rate)
        cpu = time.process_time() - memory.cpu_seconds - cpu
        stopped = time.monotonic()
        replay(docs[-1:], 0)
        callback.wait(3600)
        runner.shutdown()
        memory.stop()
    previews = [(when, result) for when, result, final in results if not final and when < stopped]
    (final_time, final, _) = next(item for item in results if item[2])
    delays = [
        f"{when - replay.sent[result.n_frames - 1]:.1f}/{result.extra['preview']['seconds']:.1f}"
        f"+{result.extra['preview']['intake_seconds']:.1f}"
        for when, result in previews
    ]
    visited = " ".join(str(frames_visited(result)) for _, result in previews)
    print_row(
        (n_frames, size, source, rate, n_frames / replay.inside, cpu / wall),
        (len(previews), delays, visited, final_time - stopped),
        (
            (memory.peak - data_bytes) / counts,
            memory.children_peak / counts,
            f"{object_error(final, sim):.3f}",
        ),
    )


# a result line of the service's log: its time, and what it was of how many frames
LOGGED_RESULT = re.compile(
    r"^(\S+ \S+) INFO \S+: scan \S+: (preview|final reconstruction) of (\d+) frames", re.M
)


def run_case_on_bus(n_frames: int, size: int, source: str, rate: float, iterations: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _, docs, counts = prepared(n_frames, size, source, Path(directory))
        on_bus = ServiceOnProxy(Path(directory) / "service", n_frames // PREVIEWS, iterations)
        try:
            time.sleep(5)  # the worker's warm-up, done before a real scan starts
            service = psutil.Process(on_bus.service.process.pid)
            memory = PeakMemory(0.01, pid=service.pid)
            replay = Replay(on_bus.publisher)
            clock = time.time() - time.monotonic()  # the log's times are wall-clock times
            cpu = sum(service.cpu_times()[:2])
            wall = replay(docs[:-1], rate)
            cpu = sum(service.cpu_times()[:2]) - cpu
            stopped = time.time()
            replay(docs[-1:], 0)
            final_time, _ = on_bus.finals.wait(docs[0][1]["uid"])
            memory.stop()
            logged = [
                (datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp(), kind, int(frames))
                for when, kind, frames in LOGGED_RESULT.findall(on_bus.service.log_text())
            ]
        finally:
            on_bus.close()
    delays = [
        f"{when - clock - replay.sent[frames - 1]:.1f}"
        for when, kind, frames in logged
        if kind == "preview" and when < stopped
    ]
    final_frames = next(frames for _, kind, frames in logged if kind != "preview")
    print_row(
        (n_frames, size, f"{source}+0MQ", rate, n_frames / cpu, cpu / wall),
        (len(delays), delays, "-", final_time - stopped),
        (memory.peak / counts, memory.children_peak / counts, f"{final_frames} fr."),
    )


def print_row(scan: tuple, previews: tuple, ends: tuple) -> None:
    """One case's line: (frames, size, source, rate, frames/s, cores), (previews, delays, visited, final s),
    (memory here and in the worker against the counts, the last column)."""
    n_frames, size, source, rate, absorbed, cores = scan
    count, delays, visited, final_s = previews
    here, worker, last = ends
    print(
        f"{n_frames:>7} {size:>4}² {source:>11} {rate or float('inf'):>6.0f} {absorbed:>9.0f} {cores:>6.2f} "
        f"{count}/{PREVIEWS - 1:<3} {' '.join(delays) or '-':>24} {visited or '-':>30} {final_s:>7.1f} "
        f"{here:>6.2f}x {worker:>6.2f}x {last:>7}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--sources", nargs="+", choices=["inline", "hdf5"], default=["inline", "hdf5"])
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 0.0], help="frames/s, 0: unpaced")
    parser.add_argument("--iterations", type=int, default=20, help="of the final")
    parser.add_argument("--bus", action="store_true", help="through a 0MQ proxy to `bluesky-ptycho serve`")
    args = parser.parse_args()
    print(
        f"{'frames':>7} {'size':>5} {'source':>11} {'rate':>6} {'frames/s':>9} {'cores':>6} "
        f"{'prev':<5} {'delay/in job+before (s)':>24} {'frames visited':>30} {'final s':>7} "
        f"{'this':>7} {'worker':>7} {'error':>7}"
    )
    case = run_case_on_bus if args.bus else run_case
    for n_frames, size, source, rate in itertools.product(args.frames, args.sizes, args.sources, args.rates):
        case(n_frames, size, source, rate, args.iterations)


if __name__ == "__main__":
    main()
