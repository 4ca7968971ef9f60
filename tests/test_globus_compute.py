"""The remote reconstruction functions, through Globus Compute's own serialisation and a real local engine.

The Globus Compute web service only relays the serialised task; what runs at
the facility is ``globus_compute_endpoint``'s engine unpacking it. This test
packs the task as the SDK does, runs it on a real ``ProcessPoolEngine`` (a
separate worker process) and unpacks the result as the SDK does, so the
function tested here is the one the facility runs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bluesky_ptycho.federation import (
    ExecutorRunner,
    FrameChunk,
    ReconstructionJob,
    RemoteJobError,
    RemoteRequest,
    reconstruct_files,
    reconstruct_remote,
)
from bluesky_ptycho.federation.executor import PayloadTooLargeError, payload_size
from bluesky_ptycho.federation.staging import ScanStaging
from bluesky_ptycho.federation.testing import ComputeTaskFailed
from bluesky_ptycho.io import read_result
from bluesky_ptycho.solver import ReconstructionSettings, object_error, simulate

pytest.importorskip("globus_compute_endpoint")


@pytest.fixture(scope="module")
def sim():
    return simulate(n_frames=80, frame_size=32, overlap=0.7, photons=None, seed=4)


def test_the_executor_function_runs_on_a_compute_engine(compute_endpoint, sim):
    settings = ReconstructionSettings(iterations=100)
    half = len(sim.data) // 2
    chunks = [
        FrameChunk(sim.data.frames[:half], sim.data.positions[:half]),
        FrameChunk(sim.data.frames[half:], sim.data.positions[half:]),
    ]
    first = compute_endpoint.run(
        reconstruct_remote, RemoteRequest("s", sim.data.geometry, settings, 10, chunks[:1])
    )
    request = RemoteRequest("s", sim.data.geometry, settings, 100, chunks, previous=first)
    remote = compute_endpoint.run(reconstruct_remote, request)
    assert (remote.n_frames, remote.iterations) == (80, 110)
    local = reconstruct_remote(request)  # the same function here gives the same answer
    assert remote.cost_history == pytest.approx(local.cost_history, rel=1e-4)
    assert object_error(remote, sim) <= 0.10


def test_the_flow_function_reads_staged_files_and_writes_the_result_file(compute_endpoint, sim, tmp_path):
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
    summary = compute_endpoint.run(reconstruct_files, **kwargs)
    assert summary == {
        "result_file": str(first),
        "n_frames": 40,
        "iterations": 10,
        "final_cost": pytest.approx(summary["final_cost"]),
    }
    kwargs.update(frame_files=[str(p) for p in staging.chunks], result_file=str(second), iterations=100)
    summary = compute_endpoint.run(reconstruct_files, previous_file=str(first), **kwargs)
    result = read_result(second)
    assert (summary["n_frames"], summary["iterations"]) == (80, 110) == (result.n_frames, result.iterations)
    assert object_error(result, sim) <= 0.10


def test_a_failing_job_comes_back_as_an_error_naming_the_problem(compute_endpoint, tmp_path):
    with pytest.raises(ComputeTaskFailed, match="no such CXI file"):
        compute_endpoint.run(
            reconstruct_files,
            frame_files=[str(tmp_path / "missing.cxi")],
            result_file="r.cxi",
            iterations=1,
        )


def _jobs(sim, parts: int, iterations: int) -> list[ReconstructionJob]:
    """The scan of ``sim`` as ``parts`` jobs of new frames, the last one final."""
    bounds = np.linspace(0, len(sim.data), parts + 1).astype(int)
    return [
        ReconstructionJob(
            "scan-1",
            sim.data.geometry,
            ReconstructionSettings(iterations=iterations),
            sim.data.frames[start:stop],
            sim.data.positions[start:stop],
            iterations,
            final=stop == len(sim.data),
        )
        for start, stop in itertools.pairwise(bounds)
    ]


def test_the_payload_is_measured_as_globus_compute_serialises_it(compute, compute_endpoint, sim):
    executor = compute.executor()
    frames = np.ones((128, 128, 128), np.float32)  # 8 MiB raw, the old documented inline limit
    job = ReconstructionJob("big", sim.data.geometry, ReconstructionSettings(), frames, np.zeros((128, 2)), 1)
    assert frames.nbytes == 8 * 2**20 and payload_size(executor, job) > 11e6
    runner = ExecutorRunner(executor, retries=0)
    assert runner.payload_limit == 10e6
    sent = len(compute_endpoint.task_bytes)
    with pytest.raises(PayloadTooLargeError, match=r"serialises to 11\.\d MB .* staging_directory"):
        runner.submit(job).result(60)
    assert len(compute_endpoint.task_bytes) == sent  # refused here, before it was sent
    runner.shutdown()
    executor.shutdown()


def test_the_service_stand_in_refuses_what_the_service_refuses(compute, sim):
    """A runner that did not measure would send 11 MB: the stand-in refuses it, as the service's 10 MB limit does."""
    frames = np.ones((128, 128, 128), np.float32)
    job = ReconstructionJob("big", sim.data.geometry, ReconstructionSettings(), frames, np.zeros((128, 2)), 1)
    unchecked = ExecutorRunner(compute.executor(), payload_limit=10**9, retries=0)
    with pytest.raises(RemoteJobError, match=r"(?s)413.*over 10 MB"):
        unchecked.submit(job).result(60)
    unchecked.shutdown()


def test_with_a_staging_directory_each_frame_crosses_once(compute, compute_endpoint, sim, tmp_path):
    runner = ExecutorRunner(compute.executor(), staging_directory=tmp_path)
    sent = len(compute_endpoint.task_bytes)
    results = [runner.submit(job).result(120) for job in _jobs(sim, parts=4, iterations=40)]
    runner.shutdown()
    # each job continued the previous one from its result file, and frames went once, as files
    assert [(r.n_frames, r.iterations) for r in results] == [(20, 40), (40, 80), (60, 120), (80, 160)]
    task_bytes = compute_endpoint.task_bytes[sent:]
    assert len(task_bytes) == 4 and max(task_bytes) < 20_000 < sim.data.frames[:20].nbytes
    assert object_error(results[-1], sim) <= 0.10
    assert not (tmp_path / "scan-1").exists()  # removed after the final result came back


def _scan(sim, uid: str, iterations: int = 5) -> ReconstructionJob:
    return ReconstructionJob(uid, sim.data.geometry, ReconstructionSettings(), sim.data.frames,
                             sim.data.positions, iterations, final=True)  # fmt: skip


def test_a_failed_submission_fails_one_job_not_the_session(compute, sim):
    """The SDK's Executor shuts down for good when a batch_run fails; the runner goes on with a new one."""
    runner = ExecutorRunner(compute.executor(), retries=0)
    compute.failing_submissions = [401]  # a token that expired (the app refreshes it for the next request)
    with pytest.raises(RemoteJobError, match="401"):
        runner.submit(_scan(sim, "first")).result(60)
    assert runner.submit(_scan(sim, "second")).result(120).n_frames == len(sim.data)
    compute.failing_submissions = [401]
    retried = ExecutorRunner(compute.executor(), retries=1, backoff=0.01)
    assert retried.submit(_scan(sim, "third")).result(120).n_frames == len(sim.data)
    for each in (runner, retried):
        each.shutdown()


def test_a_task_that_fails_for_its_data_at_the_facility_is_not_retried(compute, sim, tmp_path):
    """Every remote error arrives as TaskExecutionFailed; one of the data fails at once, naming it."""
    runner = ExecutorRunner(compute.executor(), retries=2, backoff=0.01)
    bad = _scan(sim, "bad")
    bad.settings = ReconstructionSettings(device="tpu")  # refused by the worker, not here
    submitted = len(compute.submissions)
    with pytest.raises(ValueError, match="failed at the facility with ValueError: device must be one of"):
        runner.submit(bad).result(60)
    assert len(compute.submissions) == submitted + 1  # tried once
    runner.shutdown()


def test_jobs_of_several_scans_each_go_in_a_request_of_their_own(compute, sim):
    """The 10 MB limit holds for a request: inline jobs coalesced into one could pass it together."""
    big = simulate(n_frames=90, frame_size=128, photons=None, seed=1).data
    frames = big.frames.astype(np.float32)  # 5.9 MB each, serialised 8 MB: two in one request are 16
    runner = ExecutorRunner(compute.executor(), retries=0, max_in_flight=2)
    jobs = [ReconstructionJob(uid, big.geometry, ReconstructionSettings(), frames, big.positions, 1, final=True)
            for uid in ("a", "b")]  # fmt: skip
    submitted = len(compute.submissions)
    futures = [runner.submit(job) for job in jobs]
    assert [f.result(120).n_frames for f in futures] == [90, 90]
    assert compute.submissions[submitted:] == [1, 1]
    runner.shutdown()


def test_the_deployed_function_ids_pass_an_endpoint_restricted_to_them(compute, sim, tmp_path):
    from bluesky_ptycho.federation.compute import deployed_function_ids
    from bluesky_ptycho.federation.testing import local_flow_settings

    settings = local_flow_settings(tmp_path, compute)
    compute.allowed_functions = [str(settings.function_id), str(settings.inline_function_id)]
    registered = len(compute.functions)
    unknown = ExecutorRunner(compute.executor(), retries=0)  # registers a function of its own
    with pytest.raises(RemoteJobError, match=r"(?s)403.*allowed_functions"):
        unknown.submit(_scan(sim, "unknown")).result(60)
    runner = ExecutorRunner(compute.executor(), retries=0, function_ids=deployed_function_ids(settings))
    assert runner.submit(_scan(sim, "known")).result(60).n_frames == len(sim.data)
    assert len(compute.functions) == registered + 1  # only the first runner's
    for each in (unknown, runner):
        each.shutdown()


@pytest.mark.parametrize("serialization", ["reference", "source"])
def test_the_registered_functions_run_as_registered(compute, sim, tmp_path, serialization):
    """Registered by source (as an endpoint that admits only source strategies demands), they run the same."""
    from bluesky_ptycho.federation.compute import deployed_function_ids
    from bluesky_ptycho.federation.testing import local_flow_settings

    settings = local_flow_settings(tmp_path, compute, serialization=serialization)
    ids = deployed_function_ids(settings)
    inline = ExecutorRunner(compute.executor(), retries=0, function_ids=ids)
    staged = ExecutorRunner(compute.executor(), retries=0, function_ids=ids, staging_directory=tmp_path / "s")
    for runner in (inline, staged):
        assert runner.submit(_scan(sim, f"scan-{serialization}")).result(60).n_frames == len(sim.data)
        runner.shutdown()


def test_a_function_that_is_not_self_contained_fails_at_the_facility_when_shipped_as_source(compute, sim):
    """The stand-in runs the registered code: shipped as source, a function naming its module's globals fails."""
    from globus_compute_sdk.sdk.client import FunctionRegistrationData
    from globus_compute_sdk.serialize import ComputeSerializer, PureSourceDill

    from bluesky_ptycho.federation.remote import run_inline_job
    from bluesky_ptycho.federation.testing import token_clients

    serializer = ComputeSerializer(strategy_code=PureSourceDill())
    registration = FunctionRegistrationData(function=run_inline_job, serializer=serializer)
    function_id = token_clients(None).compute.register_function(registration.to_dict())["function_uuid"]
    runner = ExecutorRunner(compute.executor(), retries=2, function_ids={"reconstruct_remote": function_id})
    runner_function = "reconstruct_remote"  # the runner's inline function, here mapped to the bad code
    assert runner_function in runner.deployed_ids
    with pytest.raises(ValueError, match="NameError: name 'check_client_version' is not defined"):
        runner.submit(_scan(sim, "source")).result(60)
    runner.shutdown()


def test_the_facility_chooses_the_device(sim, monkeypatch):
    """The beamline asked for a GPU it has; this worker has none, and its environment says so."""
    from bluesky_ptycho.federation.remote import DEVICE_ENV

    request = RemoteRequest("s", sim.data.geometry, ReconstructionSettings(device="gpu"), 2,
                            [FrameChunk(sim.data.frames, sim.data.positions)])  # fmt: skip
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert reconstruct_remote(request).extra["device"] == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="device must be one of"):
        reconstruct_remote(request)


@pytest.mark.parametrize("strategy", ["DillCodeSource", "CombinedCode", "PureSourceDill"])
def test_the_flow_function_runs_when_registered_as_source_by_any_strategy(compute, sim, tmp_path, strategy):
    """gladier and splash register with DillCodeSource or CombinedCode; an endpoint may admit only those."""
    import globus_compute_sdk.serialize as serialize
    from globus_compute_sdk.sdk.client import FunctionRegistrationData

    from bluesky_ptycho.federation.testing import token_clients

    serializer = serialize.ComputeSerializer(strategy_code=getattr(serialize, strategy)())
    registration = FunctionRegistrationData(function=reconstruct_files, serializer=serializer)
    function_id = token_clients(None).compute.register_function(registration.to_dict())["function_uuid"]
    staging = ScanStaging(tmp_path, "source")
    staging.add_chunk(sim.data.frames, sim.data.positions, sim.data.geometry)
    result_file = staging.next_result()
    kwargs = {"frame_files": [str(staging.chunks[0])], "result_file": str(result_file), "iterations": 3}
    assert compute.run(function_id, [], kwargs)["n_frames"] == len(sim.data)
    assert read_result(result_file).iterations == 3


def test_numpy_2_arrays_at_a_numpy_1_worker_are_named_as_such():
    """The worker cannot even unpack the task; the traceback's last line says why, and the runner says what to do."""
    from globus_compute_sdk.errors import TaskExecutionFailed

    from bluesky_ptycho.federation.compute import RemoteTaskError, remote_failure

    remote = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'numpy._core'\n"
    error = remote_failure(TaskExecutionFailed(remote))
    assert isinstance(error, RemoteTaskError) and "install numpy>=2 in the facility's environment" in str(
        error
    )
    lost = "Traceback (most recent call last):\nparsl.executors.high_throughput.errors.WorkerLost: Task failure\n"
    assert isinstance(remote_failure(TaskExecutionFailed(lost)), TaskExecutionFailed)  # retried, not named
