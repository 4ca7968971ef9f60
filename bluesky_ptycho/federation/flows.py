"""Reconstructions through a Globus Flow: Transfer in, Globus Compute, Transfer out.

The flow definition and its input schema ship with the package
(``federation/flow/*.json``). :func:`deploy` registers the compute function
and creates or updates the flow, only when either changed.
:class:`GlobusFlowRunner` stages each job's new frames as a CXI chunk file in
the beamline's collection, starts a run, polls it, and reads the result file
the flow brought back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import globus_sdk
import numpy as np

from .. import __version__
from ..io.cxi import read_result
from ..solver.data import ReconstructionResult
from . import remote
from .auth import GlobusClients, explain, make_app, make_clients
from .globus_settings import GlobusSettings, load_globus_settings, read_deployment, write_deployment
from .jobs import ReconstructionJob
from .lanes import LaneRunner, RemoteJobError, job_timings, with_retries
from .staging import ScanStaging

logger = logging.getLogger(__name__)

FLOW_TITLE = "bluesky-ptycho reconstruction"
#: Settings a flow run needs.
RUN_SETTINGS = (
    "beamline_collection_id",
    "beamline_collection_path",
    "local_staging_directory",
    "facility_collection_id",
    "facility_collection_path",
    "facility_filesystem_path",
    "compute_endpoint_id",
    "function_id",
    "flow_id",
)
#: Flow run statuses that will not change any more.
FINISHED = ("SUCCEEDED", "FAILED", "ENDED")
#: The Flows service's WaitTime for an Action state that gives none (seconds).
DEFAULT_WAIT_TIME_S = 300


def flow_definition() -> dict[str, Any]:
    """The flow definition shipped with the package (a new copy each time: callers may change theirs)."""
    return json.loads(files(__package__).joinpath("flow/definition.json").read_text())


def flow_input_schema() -> dict[str, Any]:
    """The JSON schema of the flow's input (a new copy each time)."""
    return json.loads(files(__package__).joinpath("flow/input_schema.json").read_text())


def _checksum(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def flow_sharing(settings: GlobusSettings) -> dict[str, Any]:
    """Who may use the flow, and its subscription: the arguments of ``create_flow`` and ``update_flow``."""
    return {
        "flow_starters": settings.flow_starters,
        "flow_administrators": settings.flow_administrators,
        "flow_viewers": settings.flow_viewers,
        "subscription_id": None if settings.subscription_id is None else str(settings.subscription_id),
    }


def flow_checksum(settings: GlobusSettings) -> str:
    """Changes whenever the flow definition, its input schema, or who may use it does."""
    return _checksum(
        FLOW_TITLE,
        json.dumps(flow_definition(), sort_keys=True),
        json.dumps(flow_input_schema()),
        json.dumps(flow_sharing(settings), sort_keys=True),
    )


def flow_run_timeout(definition: dict[str, Any] | None = None) -> float:
    """Seconds a run may take: the WaitTimes of the definition's states added up, plus 10 %.

    Each state may wait that long for its action (a PBS job queued for hours),
    so a client that gave up sooner would cancel runs the flow itself still
    allows.
    """
    states = (definition or flow_definition())["States"].values()
    return 1.1 * sum(
        state.get("WaitTime", DEFAULT_WAIT_TIME_S) for state in states if state["Type"] == "Action"
    )


@dataclass
class Deployment:
    """What :func:`deploy` did: the ids in use and which were (re)registered."""

    function_id: str
    flow_id: str
    function_registered: bool
    flow_action: str  # "created", "recreated", "updated" or "unchanged"
    inline_function_id: str = ""


def _flow_exists(clients: GlobusClients, flow_id: str) -> bool:
    try:
        clients.flows.get_flow(flow_id)
    except globus_sdk.GlobusAPIError as error:
        if error.http_status == 404:
            return False
        raise
    return True


#: The functions ``globus deploy`` registers, by the setting (and deployment record key) holding their ids:
#: the flow's, and the Executor path's (frames inline).
DEPLOYED_FUNCTIONS = {"function_id": "reconstruct_files", "inline_function_id": "reconstruct_remote"}


def register_functions(clients: GlobusClients, serialization: str = "reference") -> dict[str, str]:
    """Register :data:`DEPLOYED_FUNCTIONS` with Globus Compute; their ids by setting name.

    Public: another identity running the flow (a service account, a
    colleague) must be able to use them. ``serialization`` "reference"
    ships them as references to the installed package (the facility runs
    its own copy), "source" as their source text (both run the same: the
    functions are self-contained).
    """
    try:
        from globus_compute_sdk.sdk.client import FunctionRegistrationData
        from globus_compute_sdk.serialize import ComputeSerializer, PureSourceDill
    except ImportError:
        raise ImportError(
            "deploying needs the Globus Compute SDK: pip install 'bluesky-ptycho[globus]'"
        ) from None
    serializer = ComputeSerializer(strategy_code=PureSourceDill() if serialization == "source" else None)
    ids = {}
    for setting, name in DEPLOYED_FUNCTIONS.items():
        registration = FunctionRegistrationData(
            function=getattr(remote, name), public=True, serializer=serializer
        )
        ids[setting] = clients.compute.register_function(registration.to_dict())["function_uuid"]
    return ids


def deploy(clients: GlobusClients, settings: GlobusSettings | None = None) -> Deployment:
    """Register the reconstruction functions and create or update the flow, when they changed.

    The functions are registered once per released version of the package
    and way of shipping them (``settings.function_serialization``), so an
    endpoint's ``allowed_functions`` (both ids) stays valid until the next
    upgrade. The flow is checked on the service: one that expired or was
    deleted is created again. The flow's subscription, starters,
    administrators and viewers come from ``settings``.
    """
    settings = settings or load_globus_settings()
    record = read_deployment()
    function_registered = False
    registered = (record.get("function_version"), record.get("function_serialization", "reference"))
    if registered != (__version__, settings.function_serialization) or not all(
        record.get(setting) for setting in DEPLOYED_FUNCTIONS
    ):
        record.update(register_functions(clients, settings.function_serialization))
        record.update(function_version=__version__, function_serialization=settings.function_serialization)
        function_registered = True
        write_deployment(record)
    sharing = flow_sharing(settings)
    flow_action = "unchanged"
    existed = bool(record.get("flow_id")) and _flow_exists(clients, record["flow_id"])
    changed = not existed or record.get("flow_checksum") != flow_checksum(settings)
    if changed:  # the service's own check of what it would store, before anything is created or changed
        clients.flows.validate_flow(flow_definition(), flow_input_schema())
    if not existed:
        response = clients.flows.create_flow(
            FLOW_TITLE,
            flow_definition(),
            flow_input_schema(),
            subtitle="Transfer, Globus Compute, Transfer",
            keywords=["ptychography", "bluesky"],
            **sharing,
        )
        flow_action = "recreated" if record.get("flow_id") else "created"
        if flow_action == "recreated":
            logger.warning(
                "flow %s no longer exists (expired or deleted): created %s", record["flow_id"], response["id"]
            )
        record.update(flow_id=response["id"], flow_checksum=flow_checksum(settings))
    elif changed:
        clients.flows.update_flow(
            record["flow_id"],
            title=FLOW_TITLE,
            definition=flow_definition(),
            input_schema=flow_input_schema(),
            **sharing,
        )
        record.update(flow_checksum=flow_checksum(settings))
        flow_action = "updated"
    write_deployment(record)
    return Deployment(
        record["function_id"],
        record["flow_id"],
        function_registered,
        flow_action,
        record["inline_function_id"],
    )


def _collection_path(root: str, *parts: str) -> str:
    return str(PurePosixPath(root, *parts))


def flow_input(
    settings: GlobusSettings,
    staging: ScanStaging,
    job: ReconstructionJob,
    result: Path,
    previous: Path | None,
) -> dict[str, Any]:
    """The input document of one flow run (valid against :func:`flow_input_schema`)."""
    uid = job.scan_uid
    beamline_root, facility_root = settings.beamline_collection_path, settings.facility_collection_path
    relative_result = result.relative_to(staging.root.parent).as_posix()

    def facility_file(path: Path) -> str:
        """Where the compute endpoint sees a staged file."""
        return _collection_path(
            settings.facility_filesystem_path, path.relative_to(staging.root.parent).as_posix()
        )

    return {
        "scan_uid": uid,
        "transfer_in": {
            "source_collection": str(settings.beamline_collection_id),
            "destination_collection": str(settings.facility_collection_id),
            "source_path": _collection_path(beamline_root, uid, "frames") + "/",
            "destination_path": _collection_path(facility_root, uid, "frames") + "/",
            "label": f"ptycho frames {uid[:8]}",
        },
        "compute": {
            "endpoint_id": str(settings.compute_endpoint_id),
            "function_id": str(settings.function_id),
            "user_endpoint_config": settings.compute_user_endpoint_config,
            "resource_specification": settings.compute_resource_specification,
            "kwargs": {
                "frame_files": [facility_file(path) for path in staging.chunks],
                "result_file": facility_file(result),
                "iterations": job.iterations,
                "settings": job.settings.to_dict(),
                "previous_file": None if previous is None else facility_file(previous),
                "client_version": __version__,
                "final": job.final,
            },
        },
        "transfer_out": {
            "source_collection": str(settings.facility_collection_id),
            "destination_collection": str(settings.beamline_collection_id),
            "source_path": _collection_path(facility_root, relative_result),
            "destination_path": _collection_path(beamline_root, relative_result),
            "label": f"ptycho result {uid[:8]}",
        },
    }


def example_flow_input(settings: GlobusSettings) -> dict[str, Any]:
    """The input of a run for a one-chunk preview of a made-up scan, as the runner builds it (nothing is written)."""
    from ..solver.data import Geometry
    from ..solver.settings import ReconstructionSettings

    staging = ScanStaging(settings.local_staging_directory, "preflight-check")
    staging.chunks.append(staging.frames_directory / "chunk_00000.cxi")
    solver = ReconstructionSettings()
    geometry = Geometry(
        wavelength=1.5e-10, detector_distance=2.0, detector_pixel_size=75e-6, frame_shape=(128, 128)
    )
    frames = np.zeros((0, 128, 128), np.float32)
    job = ReconstructionJob("preflight-check", geometry, solver, frames, np.zeros((0, 2)), solver.iterations)
    return flow_input(settings, staging, job, staging.next_result(), None)


class FlowRunError(RemoteJobError):
    """A flow run failed, ended or timed out; the message names the run id and the cause."""


def run_link(run_id: str) -> str:
    """The run's page in the Globus web app, with its log."""
    return f"https://app.globus.org/runs/{run_id}/logs"


def _action_cause(output: Any) -> str | None:
    """The cause an action's status document gives: a Compute exception, a Transfer fault, a description."""
    if not isinstance(output, dict):
        return None
    details = output.get("details")
    if isinstance(details, dict):
        for key in ("exception", "fatal_error", "nice_status_details", "description", "error"):
            if details.get(key):
                value = details[key]
                return value if isinstance(value, str) else json.dumps(value)[:500]
    return output.get("description") or (details if isinstance(details, str) else None)


def run_log(clients: GlobusClients, run_id: str) -> list[dict[str, Any]]:
    """The last 100 entries of a run's log, oldest first: where a run failed or waits is at the end.

    The service pages from the oldest entry, so they are asked for newest first.
    """
    return list(reversed(clients.flows.get_run_logs(run_id, limit=100, reverse_order=True)["entries"]))


def run_cause(clients: GlobusClients, run: dict[str, Any]) -> str:
    """Why a run stopped: the failing state and its action's own error, from the run's log.

    Falls back on the run's top-level description when the log says no more.
    """
    details = run.get("details") or {}
    summary = details.get("description") or details.get("code") or json.dumps(details)[:500]
    try:
        entries = run_log(clients, run["run_id"])
    except globus_sdk.GlobusAPIError as error:
        return f"{summary} (its log could not be read: {explain(error)})"
    for entry in reversed(entries):
        if entry.get("code") in ("ActionFailed", "ActionTimeout", "FlowFailed"):
            entry_details = entry.get("details") or {}
            state = entry_details.get("state_name")
            cause = _action_cause(entry_details.get("output")) or entry.get("description")
            if state and cause:
                return f"state {state}: {cause}"
    return summary


def current_state(clients: GlobusClients, run_id: str) -> str | None:
    """The state a run is in (the last one its log says started), or None."""
    try:
        entries = run_log(clients, run_id)
    except globus_sdk.GlobusAPIError:
        return None
    started = [
        e["details"]["state_name"] for e in entries if e.get("code") == "ActionStarted" and e.get("details")
    ]
    return started[-1] if started else None


def inactive_cause(run: dict[str, Any]) -> str:
    """What an INACTIVE run waits for, and what the user can do."""
    resume = f"`bluesky-ptycho globus resume {run['run_id']}`"
    parameters = authorization_parameters(run)
    if parameters is not None:
        needs = [f"consent to {', '.join(parameters.required_scopes)}"] if parameters.required_scopes else []
        if parameters.session_required_policies or parameters.session_required_identities:
            needs.append("a login that meets the collection's session policy")
        if parameters.session_required_mfa:
            needs.append("a login with multi-factor authentication")
        what = " and ".join(needs) or (parameters.session_message or "a new login")
        return (
            f"the run waits for {what}: run `bluesky-ptycho globus login --run {run['run_id']}` (it asks for "
            f"exactly what the run needs), then {resume}"
        )
    details = run.get("details") or {}
    waits_for = details.get("description") or details.get("code") or "?"
    return f"the run is paused, waiting for action ({waits_for}); then {resume}"


def authorization_parameters(run: dict[str, Any]):
    """What Globus Auth must grant before an INACTIVE run can go on (``GlobusAuthorizationParameters``), or None."""
    from globus_sdk.gare import to_gare

    details = run.get("details")
    gare = to_gare(details) if isinstance(details, dict) else None
    return None if gare is None else gare.authorization_parameters


def required_consents(run: dict[str, Any]) -> list[str]:
    """The scopes an INACTIVE run waits for the user to consent to (none when it waits for something else)."""
    parameters = authorization_parameters(run)
    return list(parameters.required_scopes or []) if parameters is not None else []


def missing_consents(clients: GlobusClients, app: globus_sdk.GlobusApp, scopes: list[str]) -> list[str]:
    """Those of ``scopes`` (dependent scopes included) the logged-in identity has not consented to, per Globus Auth."""
    if not scopes:
        return []
    identity = app.token_storage.identity_id
    if identity is None or clients.auth is None:
        return list(scopes)
    forest = clients.auth.get_consents(identity).to_forest()
    return [scope for scope in scopes if not forest.meets_scope_requirements(scope)]


class GlobusFlowRunner(LaneRunner[ScanStaging]):
    """Runs each job as a run of the deployed flow.

    Parameters
    ----------
    settings
        Globus settings (default: the settings file and environment).
    clients
        Service clients (default: made from the settings' Globus app; tests
        and services may pass their own).
    retries, backoff
        Network errors while starting or polling a run are retried this
        many times, ``backoff * 2**k`` seconds apart.
    """

    def __init__(
        self,
        settings: GlobusSettings | None = None,
        *,
        clients: GlobusClients | None = None,
        retries: int = 3,
        backoff: float = 2.0,
    ) -> None:
        self.settings = settings or load_globus_settings()
        self.settings.require(*RUN_SETTINGS)
        super().__init__(self.settings.max_in_flight)
        self.clients = clients or make_clients(self.settings, make_app(self.settings))
        if self.clients.flow is None:
            raise ValueError("the clients need the flow's SpecificFlowClient (settings.flow_id is set)")
        self.retries = retries
        self.backoff = backoff
        self.location = f"globus-flow:{self.settings.flow_id}@{self.settings.compute_endpoint_id}"

    def new_scan(self, job: ReconstructionJob) -> ScanStaging:
        return ScanStaging(self.settings.local_staging_directory, job.scan_uid)

    def _call(self, what: str, request):
        try:
            return with_retries(
                request,
                retries=self.retries,
                backoff=self.backoff,
                what=what,
                not_retried=(globus_sdk.GlobusAPIError, ValueError, TypeError),
            )
        except globus_sdk.GlobusAPIError as error:
            raise FlowRunError(f"{what}: {explain(error)}") from error

    def run_job(self, staging: ScanStaging, job: ReconstructionJob) -> ReconstructionResult:
        started = time.perf_counter()
        files = staging.stage_job(job)
        staged = time.perf_counter()
        result_file = files.result
        body = flow_input(self.settings, staging, job, result_file, files.previous)
        run = self._call(
            f"scan {job.scan_uid}: starting the flow",
            lambda: self.clients.flow.run_flow(
                body,
                label=f"ptycho {job.scan_uid[:8]} {'final' if job.final else 'preview'}",
                tags=["bluesky-ptycho"],
            ),
        )
        run_id = run["run_id"]
        logger.info("scan %s: flow run %s started", job.scan_uid, run_id)
        finished = self.wait(run_id)
        if finished["status"] != "SUCCEEDED":
            raise FlowRunError(
                f"scan {job.scan_uid}: flow run {run_id} {finished['status']}: {finished['cause']} "
                f"(see {run_link(run_id)}); staged files kept in {staging.root}"
            )
        if not result_file.exists():
            raise FlowRunError(
                f"scan {job.scan_uid}: flow run {run_id} succeeded but its result {result_file} is not here"
            )
        result = read_result(result_file)
        staging.results.append(result_file)
        result.extra["timings"] = job_timings(
            started, staged, time.perf_counter(), result.extra.get("compute_s")
        )
        result.extra["bytes_moved"] = {  # the transfer syncs only the new chunk
            "sent": files.bytes_written + len(json.dumps(body)),
            "received": result_file.stat().st_size,
        }
        return result

    def wait(self, run_id: str) -> dict[str, Any]:
        """Poll run ``run_id`` until it finishes; return the run document, its ``cause`` added when it failed.

        A run still going after ``settings.run_timeout_s`` (default: the flow's
        own WaitTimes, :func:`flow_run_timeout`) is cancelled, naming the state
        it was waiting in. An INACTIVE run waits for a person (a consent, or
        an action that needs one); ``settings.on_inactive`` says what to do:
        "cancel" it (a live scan goes on; the record says how to consent), or
        "wait" for someone to ``bluesky-ptycho globus resume`` it, until the
        timeout.
        """
        timeout = self.settings.run_timeout_s or flow_run_timeout()
        deadline = time.monotonic() + timeout
        told = False
        while True:
            run = self._call(f"flow run {run_id}: status", lambda: self.clients.flows.get_run(run_id)).data
            if run["status"] == "SUCCEEDED":
                return run
            if run["status"] in FINISHED:
                return {**run, "cause": run_cause(self.clients, run)}
            if run["status"] == "INACTIVE":
                cause = inactive_cause(run)
                if self.settings.on_inactive == "cancel":
                    self._call(f"flow run {run_id}: cancel", lambda: self.clients.flows.cancel_run(run_id))
                    return {**run, "cause": f"{cause}; the run was cancelled (on_inactive = 'cancel')"}
                if not told:
                    logger.warning("flow run %s: %s", run_id, cause)
                    told = True
            if time.monotonic() > deadline:
                state = current_state(self.clients, run_id)
                self._call(f"flow run {run_id}: cancel", lambda: self.clients.flows.cancel_run(run_id))
                where = f" waiting in state {state}" if state else ""
                return {
                    **run,
                    "status": "TIMED OUT",
                    "cause": f"no result within {timeout:g} s{where}; run cancelled",
                }
            time.sleep(self.settings.poll_interval_s)

    def forget_scan(self, staging: ScanStaging, succeeded: bool) -> None:
        if succeeded:
            staging.remove()
