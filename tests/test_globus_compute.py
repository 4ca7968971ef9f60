"""The remote reconstruction functions, through Globus Compute's own serialisation and a real local engine.

The Globus Compute web service only relays the serialised task; what runs at
the facility is ``globus_compute_endpoint``'s engine unpacking it. This test
packs the task as the SDK does, runs it on a real ``ProcessPoolEngine`` (a
separate worker process) and unpacks the result as the SDK does, so the
function tested here is the one the facility runs.
"""

from __future__ import annotations

import uuid

import pytest

from bluesky_ptycho.federation import FrameChunk, RemoteRequest, reconstruct_files, reconstruct_remote
from bluesky_ptycho.federation.staging import ScanStaging
from bluesky_ptycho.io import read_result
from bluesky_ptycho.solver import ReconstructionSettings, object_error, simulate

pytest.importorskip("globus_compute_endpoint")
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines import ProcessPoolEngine
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = ProcessPoolEngine(max_workers=1)
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path_factory.mktemp("endpoint")))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def sim():
    return simulate(n_frames=80, frame_size=32, overlap=0.7, photons=None, seed=4)


def run_on_endpoint(engine, function, *args, **kwargs):
    """Serialise a call as the SDK does, run it on the engine, deserialise the result as the SDK does."""
    serde = ComputeSerializer()
    function_buffer = serde.pack_buffers([serde.serialize(function)])  # Client.register_function
    arguments_buffer = serde.pack_buffers([serde.serialize(args), serde.serialize(kwargs)])  # Batch.add
    task_id = uuid.uuid4()
    packed = messagepack.pack(Task(task_id=task_id, task_buffer=function_buffer + arguments_buffer))
    future = GCFuture(task_id)
    engine.submit(future, packed, resource_specification={})
    result = messagepack.unpack(future.result(timeout=120))
    assert isinstance(result, Result)
    if result.is_error:
        raise RuntimeError(result.data)
    return serde.deserialize(result.data)


def test_the_executor_function_runs_on_a_compute_engine(engine, sim):
    settings = ReconstructionSettings(iterations=100)
    half = len(sim.data) // 2
    chunks = [
        FrameChunk(sim.data.frames[:half], sim.data.positions[:half]),
        FrameChunk(sim.data.frames[half:], sim.data.positions[half:]),
    ]
    first = run_on_endpoint(
        engine, reconstruct_remote, RemoteRequest("s", sim.data.geometry, settings, 10, chunks[:1])
    )
    request = RemoteRequest("s", sim.data.geometry, settings, 100, chunks, previous=first)
    remote = run_on_endpoint(engine, reconstruct_remote, request)
    assert (remote.n_frames, remote.iterations) == (80, 110)
    local = reconstruct_remote(request)  # the same function here gives the same answer
    assert remote.cost_history == pytest.approx(local.cost_history, rel=1e-4)
    assert object_error(remote, sim) <= 0.10


def test_the_flow_function_reads_staged_files_and_writes_the_result_file(engine, sim, tmp_path):
    staging = ScanStaging(tmp_path, "scan-1")
    for part in (slice(0, 40), slice(40, 80)):
        staging.add_chunk(sim.data.frames[part], sim.data.positions[part], sim.data.geometry)
    first, second = staging.next_result(), staging.next_result()
    assert (first.name, second.name) == ("result_00000.cxi", "result_00001.cxi")
    kwargs = {
        "frame_files": [str(p) for p in staging.chunks[:1]],
        "result_file": str(first),
        "iterations": 10,
        "settings": {"iterations": 100},
    }
    summary = run_on_endpoint(engine, reconstruct_files, **kwargs)
    assert summary == {
        "result_file": str(first),
        "n_frames": 40,
        "iterations": 10,
        "final_cost": pytest.approx(summary["final_cost"]),
    }
    kwargs.update(frame_files=[str(p) for p in staging.chunks], result_file=str(second), iterations=100)
    summary = run_on_endpoint(engine, reconstruct_files, previous_file=str(first), **kwargs)
    result = read_result(second)
    assert (summary["n_frames"], summary["iterations"]) == (80, 110) == (result.n_frames, result.iterations)
    assert object_error(result, sim) <= 0.10


def test_a_failing_job_comes_back_as_an_error_naming_the_problem(engine, tmp_path):
    with pytest.raises(RuntimeError, match="no such CXI file"):
        run_on_endpoint(
            engine,
            reconstruct_files,
            frame_files=[str(tmp_path / "missing.cxi")],
            result_file="r.cxi",
            iterations=1,
        )
