"""Globus Flows: the shipped definition, deploy, and live scans reconstructed through flow runs.

The Globus web services cannot be reached here, so they are simulated at the
HTTP layer (``responses`` / ``globus_sdk.testing``). The simulated Flows
service validates each run's input against the shipped schema and, when the
run is polled, does what the real flow does: copies the frames to the
"facility" directory (Transfer), runs the real ``reconstruct_files`` there
(Compute) and copies the result back (Transfer).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import globus_sdk
import jsonschema
import numpy as np
import pytest
from bluesky import RunEngine
from globus_sdk.config import get_service_url
from globus_sdk.testing import get_last_request, load_response
from helpers import (
    Documents,
    assert_previews_then_final,
    named_block,
    result_of,
    scan_positions,
    store_tokens,
)

from bluesky_ptycho import __version__
from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.federation import ReconstructionJob
from bluesky_ptycho.federation.flows import (
    FlowRunError,
    GlobusFlowRunner,
    deploy,
    flow_definition,
    flow_input,
    flow_input_schema,
    flow_run_timeout,
)
from bluesky_ptycho.federation.globus_settings import load_globus_settings, read_deployment, write_deployment
from bluesky_ptycho.federation.staging import ScanStaging
from bluesky_ptycho.federation.testing import (
    LocalAuthConsents,
    LocalFlowsService,
    local_flow_settings,
    serve_flow_validation,
    token_clients,
)
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, object_error, simulate

FLOWS = get_service_url("flows").rstrip("/")
STATE_TYPES = {"Action", "Pass", "Choice", "Wait", "Fail", "ExpressionEval"}


@pytest.fixture
def globus_home(tmp_path, monkeypatch):
    settings_file = tmp_path / "config" / "globus.toml"
    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_SETTINGS", str(settings_file))
    return settings_file


@pytest.fixture
def settings(globus_home, tmp_path, compute):
    """A deployment on the local services, the functions registered as `globus deploy` registers them."""
    return local_flow_settings(tmp_path, compute, poll_interval_s=0.01, run_timeout_s=60)


# --- the definition ----------------------------------------------------------


def json_path_value(document, path: str):
    assert path.startswith("$."), path
    value = document
    for key in path[2:].split("."):
        value = value[key]
    return value


def parameter_paths(parameters):
    """Every (key, value) of a Parameters block, nested ones included."""
    if isinstance(parameters, dict):
        for key, value in parameters.items():
            yield key, value
            yield from parameter_paths(value)
    elif isinstance(parameters, list):
        for value in parameters:
            yield from parameter_paths(value)


def example_input(settings, tmp_path):
    sim = simulate(n_frames=20, frame_size=32, seed=0)
    staging = ScanStaging(settings.local_staging_directory, "scan-uid-1")
    staging.add_chunk(sim.data.frames, sim.data.positions, sim.data.geometry)
    job = ReconstructionJob(
        "scan-uid-1",
        sim.data.geometry,
        ReconstructionSettings(),
        sim.data.frames[:0],
        sim.data.positions[:0],
        5,
    )
    return flow_input(settings, staging, job, staging.next_result(), None)


def test_transfer_states_use_the_sync_levels_the_transfer_service_takes():
    """The Transfer action provider takes sync_level as an integer 0-3 (exists, size, mtime, checksum), not a name."""
    transfers = [
        state["Parameters"]
        for state in flow_definition()["States"].values()
        if state.get("ActionUrl", "").startswith("https://transfer.actions.globus.org/")
    ]
    assert transfers
    for parameters in transfers:
        if "sync_level" in parameters:
            assert type(parameters["sync_level"]) is int and 0 <= parameters["sync_level"] <= 3, parameters


def test_the_flow_definition_is_a_well_formed_state_machine(settings, tmp_path):
    definition = flow_definition()
    states = definition["States"]
    assert definition["StartAt"] in states
    reachable, frontier = set(), [definition["StartAt"]]
    while frontier:
        name = frontier.pop()
        reachable.add(name)
        state = states[name]
        assert state["Type"] in STATE_TYPES
        assert ("Next" in state) != (state.get("End") is True), f"{name}: exactly one of Next / End: true"
        if "Next" in state:
            assert state["Next"] in states, f"{name}: Next names a missing state"
            frontier += [state["Next"]] if state["Next"] not in reachable else []
        if state["Type"] == "Action":
            assert state["ActionUrl"].startswith("https://") and isinstance(state["Parameters"], dict)
            assert state["ResultPath"].startswith("$.")
    assert reachable == set(states), "every state is reachable"
    assert [
        states[s]["ActionUrl"].split("/")[2] for s in ("TransferFrames", "Reconstruct", "TransferResult")
    ] == [
        "transfer.actions.globus.org",
        "compute.actions.globus.org",
        "transfer.actions.globus.org",
    ]
    document = example_input(settings, tmp_path)
    for state in states.values():
        for key, value in parameter_paths(state.get("Parameters", {})):
            if key.endswith(".$"):
                json_path_value(document, value)  # every JSONPath resolves in a real input
            else:
                assert not (isinstance(value, str) and value.startswith("$.")), (
                    f"{key} holds a path but lacks .$"
                )


def test_the_input_schema_accepts_a_real_input_and_names_what_is_wrong(settings, tmp_path):
    schema = flow_input_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    document = example_input(settings, tmp_path)
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())
    kwargs = document["compute"]["kwargs"]
    assert kwargs["frame_files"] == [f"{settings.facility_filesystem_path}/scan-uid-1/frames/chunk_00000.cxi"]
    assert document["transfer_in"]["source_path"] == "/ptycho/staging/scan-uid-1/frames/"
    assert (
        document["transfer_out"]["destination_path"] == "/ptycho/staging/scan-uid-1/results/result_00000.cxi"
    )
    del document["compute"]["function_id"]
    with pytest.raises(jsonschema.ValidationError, match="'function_id' is a required property"):
        jsonschema.validate(document, schema)


# --- deploy --------------------------------------------------------------------


def flow_on_service(http, flow_id: str, status: int = 200) -> None:
    """The Flows service's answer to GET /flows/<flow_id>: the flow, or 404 once it expired or was deleted."""
    flows = get_service_url("flows").rstrip("/")
    body = {"id": flow_id} if status == 200 else {"error": {"code": "NOT_FOUND", "detail": "flow not found"}}
    http.replace("GET", f"{flows}/flows/{flow_id}", json=body, status=status) if any(
        call.url == f"{flows}/flows/{flow_id}" for call in http.registered()
    ) else http.add("GET", f"{flows}/flows/{flow_id}", json=body, status=status)


def test_deploy_creates_then_does_nothing_then_updates(globus_home, http):
    clients = token_clients(None)
    settings = load_globus_settings(
        subscription_id=str(uuid.uuid4()), flow_starters=["urn:globus:groups:id:" + str(uuid.uuid4())]
    )
    function = load_response(globus_sdk.ComputeClientV3.register_function, requests_mock=http)
    serve_flow_validation(http)
    created = load_response(globus_sdk.FlowsClient.create_flow, requests_mock=http)
    first = deploy(clients, settings)
    assert first.function_registered and first.flow_action == "created"
    assert first.function_id == function.metadata["function_id"] and first.flow_id == created.json["id"]
    registered = json.loads(http.calls[0].request.body)
    assert registered["public"] is True  # another identity running the flow can use the function
    from globus_compute_sdk.serialize import DillCode

    # by reference: the facility runs its installed copy (`function_serialization = "source"` to change it)
    assert registered["meta"]["serde_identifier"] == DillCode.identifier.strip()
    sent = json.loads(get_last_request(requests_mock=http).body)
    assert sent["definition"] == flow_definition() and sent["input_schema"] == flow_input_schema()
    assert sent["subscription_id"] == str(settings.subscription_id)
    assert sent["flow_starters"] == settings.flow_starters

    flow_on_service(http, first.flow_id)
    calls = len(http.calls)
    again = deploy(clients, settings)
    assert (again.function_registered, again.flow_action) == (False, "unchanged")
    assert [call.request.method for call in http.calls[calls:]] == ["GET"]  # only: is the flow still there?

    record = read_deployment()  # as after upgrading to a package with a new flow definition
    write_deployment({**record, "flow_checksum": "from an older version"})
    serve_flow_validation(http)
    updated = load_response(globus_sdk.FlowsClient.update_flow, requests_mock=http)
    assert updated.metadata["flow_id"] == first.flow_id
    third = deploy(clients, settings)
    assert third.flow_action == "updated" and not third.function_registered
    request = get_last_request(requests_mock=http)
    assert request.method == "PUT" and request.url.endswith(f"/flows/{first.flow_id}")

    starters = settings.model_copy(update={"flow_starters": ["all_authenticated_users"]})
    assert deploy(clients, starters).flow_action == "updated"  # who may run it changed
    assert json.loads(get_last_request(requests_mock=http).body)["flow_starters"] == [
        "all_authenticated_users"
    ]


def test_deploy_creates_the_flow_again_when_it_expired(globus_home, http):
    clients = token_clients(None)
    load_response(globus_sdk.ComputeClientV3.register_function, requests_mock=http)
    write_deployment(
        {"function_id": str(uuid.uuid4()), "inline_function_id": str(uuid.uuid4()),
         "function_version": __version__, "flow_id": str(uuid.uuid4()), "flow_checksum": "x"}
    )  # fmt: skip
    flow_on_service(http, read_deployment()["flow_id"], status=404)
    serve_flow_validation(http)
    created = load_response(globus_sdk.FlowsClient.create_flow, requests_mock=http)
    done = deploy(clients, load_globus_settings())
    assert (done.flow_action, done.flow_id, done.function_registered) == (
        "recreated",
        created.json["id"],
        False,
    )
    assert read_deployment()["flow_id"] == created.json["id"]


def test_the_function_is_registered_once_per_version(globus_home, http):
    clients = token_clients(None)
    load_response(globus_sdk.ComputeClientV3.register_function, requests_mock=http)
    serve_flow_validation(http)
    load_response(globus_sdk.FlowsClient.create_flow, requests_mock=http)
    first = deploy(clients, load_globus_settings())
    flow_on_service(http, first.flow_id)
    assert not deploy(clients, load_globus_settings()).function_registered
    write_deployment({**read_deployment(), "function_version": "0.0.1"})  # deployed by an older release
    assert deploy(clients, load_globus_settings()).function_registered
    assert read_deployment()["function_version"] == __version__


# --- runs ----------------------------------------------------------------------


def live_scan(runner, n_points=120, preview_every=60, catalog_writer=None):
    stage, det = simulated_beamline(seed=1)
    raw, recon = Documents(), Documents()
    settings = ReconstructionSettings(iterations=60)
    callback = PtychoCallback(
        [recon] + ([catalog_writer] if catalog_writer else []),
        runner=runner,
        settings=settings,
        preview_every=preview_every,
        queue_previews=True,
    )
    RE = RunEngine()
    if catalog_writer is not None:
        RE.subscribe(catalog_writer)
    RE.subscribe(raw)
    RE.subscribe(callback)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=n_points))
    assert callback.wait(180)
    runner.shutdown()
    return raw, recon, det, stage, settings


def test_a_live_scan_is_reconstructed_through_flow_runs_into_the_catalog(
    compute, settings, http, simple_tiled_server
):
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from bluesky_ptycho.catalog import latest_final_reconstruction

    service = LocalFlowsService(http, settings, compute)
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    server = simple_tiled_server()
    catalog = from_uri(server.uri)
    raw, recon, det, stage, solver_settings = live_scan(
        runner, catalog_writer=TiledWriter(catalog, batch_size=10)
    )
    stored = latest_final_reconstruction(catalog, raw.named("start")[0]["uid"])
    assert (stored.n_frames, stored.iterations) == (120, 100)
    server.close()
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    assert recon.named("start")[0]["ptycho_solver"]["location"] == runner.location
    events = recon.named("event")
    frames, iterations = ([e["data"][key] for e in events] for key in ("n_frames", "iteration"))
    assert_previews_then_final(frames, iterations, [60, 120], 20, 60)
    assert iterations[-1] == 2 * 20 + 60  # a remote preview runs to its end, recorded or not
    assert (
        object_error(
            result_of(events[-1]["data"], solver_settings), det.sample.truth(scan_positions(raw, stage))
        )
        <= 0.10
    )
    # each run continued from the previous result, left at the facility by the run before
    kwargs = [body["compute"]["kwargs"] for body in service.bodies]
    assert [len(k["frame_files"]) for k in kwargs] == [1, 2, 2]
    assert kwargs[0]["previous_file"] is None and kwargs[2]["previous_file"] == kwargs[1]["result_file"]
    # every file crossed once: two chunks out, three results back
    names = sorted(path.name for path in service.copied)
    assert names == [
        "chunk_00000.cxi",
        "chunk_00001.cxi",
        "result_00000.cxi",
        "result_00001.cxi",
        "result_00002.cxi",
    ]
    uid = raw.named("start")[0]["uid"]
    assert not (Path(settings.local_staging_directory) / uid).exists()  # staged files removed after success


def test_a_failed_flow_run_is_recorded_as_failed_and_the_staged_frames_kept(compute, settings, http):
    LocalFlowsService(http, settings, compute, outcome="fail")
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    raw, recon, *_ = live_scan(runner, n_points=40, preview_every=None)
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "fail"
    assert re.search(r"flow run [-0-9a-f]{36} FAILED: state Reconstruct: endpoint offline", stop["reason"]), (
        stop["reason"]
    )
    uid = raw.named("start")[0]["uid"]
    assert list((Path(settings.local_staging_directory) / uid / "frames").glob("chunk_*.cxi"))


def test_a_stalled_run_is_cancelled_at_the_timeout(compute, settings, http):
    service = LocalFlowsService(http, settings, compute, outcome="stall")
    settings.run_timeout_s = 0.2
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    job = small_job("stalled", iterations=5)
    with pytest.raises(
        FlowRunError,
        match=r"TIMED OUT: no result within 0\.2 s waiting in state TransferFrames; run cancelled",
    ):
        runner.submit(job).result(30)
    assert len(service.cancelled) == 1


def test_an_expired_login_gives_an_actionable_message(settings, http):
    http.add(
        "POST",
        f"{FLOWS}/flows/{settings.flow_id}/run",
        status=401,
        json={
            "code": "AUTHENTICATION_ERROR",
            "error": {"code": "AUTHENTICATION_ERROR", "detail": "token expired"},
        },
    )
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    sim = simulate(n_frames=20, frame_size=32, seed=0)
    job = ReconstructionJob(
        "s", sim.data.geometry, ReconstructionSettings(), sim.data.frames, np.asarray(sim.data.positions), 5
    )
    with pytest.raises(
        FlowRunError, match=r"tokens expired or were revoked: run `bluesky-ptycho globus login`"
    ):
        runner.submit(job).result(30)


def test_globus_run_sends_a_file_through_the_flow(compute, settings, http, globus_home, tmp_path):
    from click.testing import CliRunner

    from bluesky_ptycho.cli import main
    from bluesky_ptycho.io import read_result, write_cxi

    LocalFlowsService(http, settings, compute)
    values = settings.public_dict()
    globus_home.parent.mkdir(parents=True, exist_ok=True)
    globus_home.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None))
    store_tokens(3600)  # as `globus login` leaves them
    sim = simulate(n_frames=80, frame_size=32, photons=None, seed=5)
    scan = write_cxi(tmp_path / "scan.cxi", sim.data)
    result = CliRunner().invoke(main, ["globus", "run", str(scan), "-n", "120"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    recon = read_result(tmp_path / "scan_recon.cxi")
    assert recon.iterations == 120 and object_error(recon, sim) <= 0.10


def test_the_app_asks_for_the_flow_transfer_data_access_and_compute_scopes(settings):
    from bluesky_ptycho.federation.auth import make_app, make_clients

    settings.facility_collection_mapped = True
    app = make_app(settings)
    make_clients(settings, app)
    scopes = {server: " ".join(map(str, s)) for server, s in app.scope_requirements.items()}
    flow_scope = scopes[str(settings.flow_id)]
    assert f"{settings.flow_id}/flow_{str(settings.flow_id).replace('-', '_')}_user" in flow_scope
    assert "transfer.api.globus.org:all" in flow_scope
    assert f"{settings.facility_collection_id}/data_access" in flow_scope
    assert f"{settings.beamline_collection_id}/data_access" not in flow_scope  # not a mapped collection
    assert "funcx_service" in scopes and "flows.globus.org" in scopes


def small_job(scan_uid: str, iterations: int) -> ReconstructionJob:
    """A final job of 20 simulated frames of 32 x 32."""
    sim = simulate(n_frames=20, frame_size=32, seed=0)
    return ReconstructionJob(
        scan_uid,
        sim.data.geometry,
        ReconstructionSettings(),
        sim.data.frames,
        sim.data.positions,
        iterations,
        final=True,
    )


def _reconstruct(definition: dict) -> dict:
    return definition["States"]["Reconstruct"]


def _rename(parameters: dict, old: str, new: str) -> None:
    parameters[new] = parameters.pop(old)


MUTATIONS = {
    "an ActionUrl of no provider": (
        lambda d: _reconstruct(d).update(ActionUrl="https://compute.actions.globus.org/v4"),
        r"state Reconstruct: https://compute.actions.globus.org/v4 is not an action provider",
    ),
    "a renamed Compute parameter": (
        lambda d: _rename(_reconstruct(d)["Parameters"], "endpoint_id.$", "endpoint.$"),
        r"state Reconstruct: .* refused its input: 'endpoint_id' is a required property",
    ),
    "a renamed task parameter": (
        lambda d: _rename(_reconstruct(d)["Parameters"]["tasks"][0], "kwargs.$", "payload.$"),
        r"state Reconstruct: .* refused its input: Additional properties are not allowed \('payload'",
    ),
    "a sync level as a string": (
        lambda d: d["States"]["TransferFrames"]["Parameters"].update(sync_level="mtime"),
        r"state TransferFrames: .* refused its input: 'mtime' is not of type 'integer'",
    ),
    "frames sent without recursive": (
        lambda d: d["States"]["TransferFrames"]["Parameters"]["DATA"][0].update(recursive=False),
        r"state TransferFrames: Transfer: .*/frames/ is a directory: recursive must be true",
    ),
    "the result sent as a directory": (
        lambda d: d["States"]["TransferResult"]["Parameters"]["DATA"][0].update(recursive=True),
        r"state TransferResult: Transfer: .*result_00000.cxi is a file: recursive must be false",
    ),
    "a WaitTime shorter than the reconstruction": (
        lambda d: _reconstruct(d).update(WaitTime=0.01),
        r"state Reconstruct: Compute task still running after the WaitTime of 0.01 s",
    ),
    "a path the input does not have": (
        lambda d: _reconstruct(d)["Parameters"]["tasks"][0].update({"function_id.$": "$.compute.function"}),
        r"state Reconstruct: \$\.compute\.function is not in the run's state",
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_the_stand_in_runs_the_definition_so_a_broken_one_fails(compute, settings, http, mutation):
    """The stand-in executes definition.json: each of these mistakes fails the run, naming the state."""
    mutate, message = MUTATIONS[mutation]
    definition = flow_definition()
    mutate(definition)
    LocalFlowsService(http, settings, compute, definition=definition)
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    job = small_job("mutant", iterations=3)
    with pytest.raises(FlowRunError, match=message):
        runner.submit(job).result(60)


def test_the_shipped_definition_runs_every_state(compute, settings, http):
    service = LocalFlowsService(http, settings, compute)
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    job = small_job("shipped", iterations=3)
    assert runner.submit(job).result(60).iterations == 3
    (run,) = service.runs.values()
    output = run["details"]["output"]
    assert {"TransferFramesResult", "ReconstructResult", "TransferResultResult"} <= set(output)
    assert (
        output["ReconstructResult"]["details"]["results"][0]["output"]
        == output["ReconstructResult"]["details"]["result"][0]
    )


@pytest.mark.parametrize(
    ("deployed", "message"),
    [
        ("function_id", r"state Reconstruct: Compute task failed: function [-0-9a-f]{36} not found"),
        ("compute_endpoint_id", r"state Reconstruct: Compute: endpoint [-0-9a-f]{36} not found"),
        ("facility_collection_id", r"state TransferFrames: collection [-0-9a-f]{36} not found"),
    ],
)
def test_the_action_stand_ins_know_only_what_was_deployed(compute, settings, http, deployed, message):
    """The runner's settings name another function, endpoint or collection than the deployment has: the run fails."""
    import uuid

    LocalFlowsService(http, settings, compute)
    elsewhere = settings.model_copy(update={deployed: uuid.uuid4()})
    runner = GlobusFlowRunner(elsewhere, clients=token_clients(settings.flow_id), backoff=0.01)
    with pytest.raises(FlowRunError, match=message):
        runner.submit(small_job("elsewhere", iterations=3)).result(60)


def test_the_default_run_timeout_is_the_flows_own_wait_times(globus_home):
    assert load_globus_settings().run_timeout_s is None
    waits = [state["WaitTime"] for state in flow_definition()["States"].values()]
    assert flow_run_timeout() == pytest.approx(1.1 * sum(waits)) and sum(waits) == 14400


def test_a_run_that_stops_for_a_consent_is_cancelled_with_what_to_do(compute, settings, http):
    service = LocalFlowsService(http, settings, compute, outcome="consent")
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    with pytest.raises(FlowRunError) as failure:
        runner.submit(small_job("consent", iterations=3)).result(60)
    message = str(failure.value)
    assert f"https://auth.globus.org/scopes/{settings.facility_collection_id}/data_access]]" in message
    (run_id,) = service.runs
    assert f"`bluesky-ptycho globus login --run {run_id}`" in message and "run was cancelled" in message
    assert service.cancelled == list(service.runs)  # not left hanging on the service
    assert f"https://app.globus.org/runs/{service.cancelled[0]}/logs" in message


def _paused_run(compute, settings, http, globus_home, outcome: str):
    """A run stopped for Globus Auth while a runner waits for it; the CLI's settings and stored tokens."""
    service = LocalFlowsService(http, settings, compute, outcome=outcome)
    waiting = settings.model_copy(update={"on_inactive": "wait"})
    runner = GlobusFlowRunner(waiting, clients=token_clients(settings.flow_id), backoff=0.01)
    future = runner.submit(small_job(outcome, iterations=3))
    deadline = time.monotonic() + 30
    while (
        not any(run["status"] == "INACTIVE" for run in service.runs.values()) and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    (run_id,) = service.runs
    globus_home.parent.mkdir(parents=True, exist_ok=True)
    globus_home.write_text(f'client_id = "{uuid.uuid4()}"\nflow_id = "{settings.flow_id}"\n')
    granted = store_tokens(3600)
    return service, future, run_id, granted


def test_a_run_waiting_for_a_consent_goes_on_after_globus_resume(compute, settings, http, globus_home):
    from click.testing import CliRunner

    from bluesky_ptycho.cli import main

    service, future, run_id, granted = _paused_run(compute, settings, http, globus_home, "consent")
    status = CliRunner().invoke(main, ["globus", "status", run_id], catch_exceptions=False)
    assert "INACTIVE" in status.output and f"bluesky-ptycho globus resume {run_id}" in status.output
    consents = LocalAuthConsents(
        http, granted
    )  # the login's consents, not yet the run's: it would stop again
    early = CliRunner().invoke(main, ["globus", "resume", run_id], catch_exceptions=False)
    assert early.exit_code == 1 and f"`bluesky-ptycho globus login --run {run_id}`" in early.output
    assert service.runs[run_id]["status"] == "INACTIVE"
    consents.granted.append(str(service.required_scope()))  # as `globus login --run` leaves them
    resumed = CliRunner().invoke(main, ["globus", "resume", run_id], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output and "data_access" in resumed.output
    assert future.result(60).n_frames == 20 and not service.cancelled
    again = CliRunner().invoke(main, ["globus", "resume", run_id], catch_exceptions=False)
    assert again.exit_code == 1 and "SUCCEEDED, not INACTIVE" in again.output


@pytest.mark.parametrize("outcome", ["consent", "session"])
def test_globus_login_run_asks_for_what_the_paused_run_needs(compute, settings, http, globus_home, outcome):
    """A session policy (or a consent) is met only by a login that asks for it: `login --force` cannot."""
    from urllib.parse import parse_qs, urlparse

    from click.testing import CliRunner

    from bluesky_ptycho.cli import main

    service, future, run_id, _ = _paused_run(compute, settings, http, globus_home, outcome)
    http.add(
        "POST",
        f"{get_service_url('auth').rstrip('/')}/v2/oauth2/token",
        status=400,
        json={"error": "invalid_grant"},
    )  # fmt: skip  (the code typed here is not a real one)
    login = CliRunner().invoke(main, ["globus", "login", "--run", run_id], input="not-a-real-code\n")
    url = re.search(r"https://auth\.globus\.org/v2/oauth2/authorize\S+", login.output).group(0)
    query = parse_qs(urlparse(url).query)
    assert query["access_type"] == ["offline"]  # refresh tokens: a beamline session outlives an access token
    if outcome == "session":
        assert query["session_required_policies"] == [str(service.session_policy)]
    else:
        assert str(service.required_scope()) in query["scope"][0].split(" ")
    assert login.exit_code == 1 and "invalid_grant" in login.output
    service.runs[run_id]["status"] = "ENDED"
    with pytest.raises(FlowRunError):
        future.result(60)


def test_a_failed_run_shows_the_failing_actions_own_error(compute, settings, http, monkeypatch):
    """A facility with another version of the package: the Compute task's error, from the run's log."""
    import bluesky_ptycho.federation.flows as flows

    LocalFlowsService(http, settings, compute)
    monkeypatch.setattr(flows, "__version__", "9.9.0")
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    with pytest.raises(FlowRunError) as failure:
        runner.submit(small_job("skewed", iterations=3)).result(60)
    message = str(failure.value)
    assert "FAILED: state Reconstruct: Compute task failed" in message
    assert "the beamline runs bluesky-ptycho 9.9.0 but this worker has" in message
    assert "pip install 'bluesky-ptycho[facility]==9.9.0'" in message


def test_the_cause_of_a_failure_is_read_from_the_end_of_a_long_log(compute, settings, http):
    """The service pages a run's log from its start: a run with hundreds of entries failed in the last ones."""
    from bluesky_ptycho.federation.flows import run_cause

    service = LocalFlowsService(http, settings, compute, outcome="fail")
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    with pytest.raises(FlowRunError):
        runner.submit(small_job("long-log", iterations=3)).result(60)
    (run,) = service.runs.values()
    note = {"time": "2026-01-01T00:00:00+00:00", "code": "LogNote", "description": "waiting", "details": {}}
    run["log"][1:1] = [note] * 150  # e.g. a long wait in a queue
    cause = run_cause(token_clients(settings.flow_id), {"run_id": run["run_id"], "details": run["details"]})
    assert cause == "state Reconstruct: endpoint offline"


def test_the_compute_state_passes_the_endpoint_user_options_and_a_final_job_cleans_up(
    compute, settings, http
):
    """The MPI endpoint of docs/federation.md: its schema checks the options, its engine the resources."""
    compute.user_config_schema = json.loads(named_block("user_config_schema.json"))
    compute.engine = "GlobusMPIEngine"
    options = {"account": "PtychoAlloc", "queue": "prod"}
    settings = settings.model_copy(
        update={"compute_user_endpoint_config": options, "compute_resource_specification": {"num_nodes": 1}}
    )
    service = LocalFlowsService(http, settings, compute)
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    sim = simulate(n_frames=40, frame_size=32, seed=0)
    half = ReconstructionJob("tidy", sim.data.geometry, ReconstructionSettings(), sim.data.frames[:20],
                             np.asarray(sim.data.positions[:20]), 3)  # fmt: skip
    runner.submit(half).result(60)
    final = ReconstructionJob("tidy", sim.data.geometry, ReconstructionSettings(), sim.data.frames[20:],
                              np.asarray(sim.data.positions[20:]), 3, final=True)  # fmt: skip
    assert runner.submit(final).result(60).n_frames == 40
    runner.shutdown()
    sent = service.compute_requests
    assert [r["user_endpoint_config"] for r in sent] == [options, options]
    assert sent[-1]["resource_specification"] == {"num_nodes": 1}
    facility = Path(settings.facility_filesystem_path) / "tidy"
    assert sorted(p.name for p in facility.rglob("*.cxi")) == ["result_00001.cxi"]  # only the last result


@pytest.mark.parametrize(
    ("options", "resources", "message"),
    [
        (
            {"acount": "PtychoAlloc"},
            {},
            r"user_endpoint_config refused by the endpoint's schema: 'account' is a",
        ),
        ({"account": "PtychoAlloc"}, {"num_nodes": 1}, r"InvalidResourceSpecification.*\{'num_nodes'\}"),
    ],
)
def test_the_endpoint_refuses_options_its_schema_or_engine_refuses(compute, settings, http, options, resources,
                                                                   message):  # fmt: skip
    """The single-GPU endpoint of docs/federation.md: a misspelt option, or MPI resources its engine refuses."""
    compute.user_config_schema = json.loads(named_block("user_config_schema.json"))
    settings = settings.model_copy(
        update={"compute_user_endpoint_config": options, "compute_resource_specification": resources}
    )
    LocalFlowsService(http, settings, compute)
    runner = GlobusFlowRunner(settings, clients=token_clients(settings.flow_id), backoff=0.01)
    with pytest.raises(FlowRunError, match=message):
        runner.submit(small_job("options", iterations=2)).result(60)
    runner.shutdown()


def _cli_deployment(settings, globus_home, http) -> LocalAuthConsents:
    """The CLI's settings file for ``settings``, the tokens a login leaves, and Auth's consents of them."""
    globus_home.parent.mkdir(parents=True, exist_ok=True)
    values = settings.public_dict()
    globus_home.write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v not in (None, {}))
    )
    return LocalAuthConsents(http, store_tokens(3600))


def _break_consents(service, consents):
    consents.granted = [scope for scope in consents.granted if str(service.settings.flow_id) not in scope]


PREFLIGHT_FAULTS = {
    "endpoint offline": (
        lambda service, consents: setattr(service.compute_service, "offline", True),
        r"FAIL compute endpoint: endpoint [-0-9a-f]{36} is offline: start it at the facility",
    ),
    "function missing": (
        lambda service, consents: service.compute_service.functions.pop(
            str(service.settings.inline_function_id)
        ),
        r"FAIL functions: reconstruct_remote \([-0-9a-f]{36}\) is not registered with Globus Compute: run "
        r"`bluesky-ptycho globus deploy`",
    ),
    "function not allowed": (
        lambda service, consents: setattr(
            service.compute_service, "allowed_functions", [str(service.settings.function_id)]
        ),
        r"FAIL functions: reconstruct_remote \([-0-9a-f]{36}\) is not in the endpoint's allowed_functions",
    ),
    "input invalid": (
        lambda service, consents: service.input_schema["required"].append("beamline"),
        r"FAIL flow input: the flow refuses the input this version sends .*'beamline' is a required property.*"
        r"run `bluesky-ptycho globus deploy`",
    ),
    "consent missing": (
        _break_consents,
        r"FAIL consents: no consent yet to https://auth.globus.org/scopes/[-0-9a-f]{36}/flow_\w+_user: run "
        r"`bluesky-ptycho globus login --force`",
    ),
}


@pytest.mark.parametrize("fault", [None, *PREFLIGHT_FAULTS])
def test_globus_check_names_what_is_not_ready(compute, settings, http, globus_home, fault):
    from click.testing import CliRunner

    from bluesky_ptycho.cli import main

    service = LocalFlowsService(http, settings, compute)
    consents = _cli_deployment(settings, globus_home, http)
    if fault is not None:
        PREFLIGHT_FAULTS[fault][0](service, consents)
    checked = CliRunner().invoke(main, ["globus", "check"], catch_exceptions=False)
    lines = checked.output.splitlines()
    assert len(lines) == 4, checked.output
    if fault is None:
        assert checked.exit_code == 0 and all(line.startswith("ok") for line in lines), checked.output
    else:
        failed = [line for line in lines if line.startswith("FAIL")]
        assert checked.exit_code == 1 and len(failed) == 1, checked.output
        assert re.search(PREFLIGHT_FAULTS[fault][1], failed[0]), failed[0]


def test_deploy_asks_the_service_to_validate_the_flow_first(globus_home, http, monkeypatch):
    """A definition the service would refuse is refused before anything is created."""
    import bluesky_ptycho.federation.flows as flows

    load_response(globus_sdk.ComputeClientV3.register_function, requests_mock=http)
    serve_flow_validation(http)
    broken = flow_definition()
    broken["States"]["Reconstruct"]["Next"] = "TransferResults"  # a typo in a state's name
    monkeypatch.setattr(flows, "flow_definition", lambda: json.loads(json.dumps(broken)))
    with pytest.raises(globus_sdk.GlobusAPIError, match="Next 'TransferResults' is not a state"):
        deploy(token_clients(None), load_globus_settings())
    assert not any(call.request.url.endswith("/flows") for call in http.calls)  # nothing created
