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
import inspect
import json
import logging
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import globus_sdk

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


def flow_definition() -> dict[str, Any]:
    """The flow definition shipped with the package (a new copy each time: callers may change theirs)."""
    return json.loads(files(__package__).joinpath("flow/definition.json").read_text())


def flow_input_schema() -> dict[str, Any]:
    """The JSON schema of the flow's input (a new copy each time)."""
    return json.loads(files(__package__).joinpath("flow/input_schema.json").read_text())


def _checksum(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def function_checksum() -> str:
    """Changes whenever the code the facility runs (``federation/remote.py``) or the package version does."""
    return _checksum(__version__, inspect.getsource(remote))


def flow_checksum() -> str:
    """Changes whenever the flow definition or input schema does."""
    return _checksum(
        FLOW_TITLE, json.dumps(flow_definition(), sort_keys=True), json.dumps(flow_input_schema())
    )


@dataclass
class Deployment:
    """What :func:`deploy` did: the ids in use and which were (re)registered."""

    function_id: str
    flow_id: str
    function_registered: bool
    flow_action: str  # "created", "updated" or "unchanged"


def deploy(clients: GlobusClients) -> Deployment:
    """Register the reconstruction function and create or update the flow, when they changed.

    The ids and checksums are kept in the deployment record, so running this
    again without changes contacts no service.
    """
    try:
        from globus_compute_sdk.sdk.client import FunctionRegistrationData
    except ImportError:
        raise ImportError(
            "deploying needs the Globus Compute SDK: pip install 'bluesky-ptycho[globus]'"
        ) from None

    record = read_deployment()
    function_registered = False
    if record.get("function_checksum") != function_checksum() or not record.get("function_id"):
        registration = FunctionRegistrationData(function=remote.reconstruct_files)
        response = clients.compute.register_function(registration.to_dict())
        record.update(function_id=response["function_uuid"], function_checksum=function_checksum())
        function_registered = True
        write_deployment(record)
    flow_action = "unchanged"
    if not record.get("flow_id"):
        response = clients.flows.create_flow(
            FLOW_TITLE,
            flow_definition(),
            flow_input_schema(),
            subtitle="Transfer, Globus Compute, Transfer",
            keywords=["ptychography", "bluesky"],
        )
        record.update(flow_id=response["id"], flow_checksum=flow_checksum())
        flow_action = "created"
    elif record.get("flow_checksum") != flow_checksum():
        clients.flows.update_flow(
            record["flow_id"],
            title=FLOW_TITLE,
            definition=flow_definition(),
            input_schema=flow_input_schema(),
        )
        record.update(flow_checksum=flow_checksum())
        flow_action = "updated"
    write_deployment(record)
    return Deployment(record["function_id"], record["flow_id"], function_registered, flow_action)


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
            "kwargs": {
                "frame_files": [facility_file(path) for path in staging.chunks],
                "result_file": facility_file(result),
                "iterations": job.iterations,
                "settings": job.settings.to_dict(),
                "previous_file": None if previous is None else facility_file(previous),
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


class FlowRunError(RemoteJobError):
    """A flow run failed, ended or timed out; the message names the run id and the cause."""


def _run_failure(run: dict[str, Any]) -> str:
    details = run.get("details") or {}
    cause = details.get("description") or details.get("code") or json.dumps(details)[:500]
    return f"flow run {run.get('run_id')} {run.get('status')}: {cause}"


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
        sent = 0
        if len(job.frames):
            chunk = staging.add_chunk(job.frames, job.positions, job.geometry, job.mask, job.probe)
            sent = chunk.stat().st_size  # the transfer syncs only this new chunk
        staged = time.perf_counter()
        if not staging.chunks:
            raise ValueError(f"scan {job.scan_uid}: no frames to reconstruct")
        previous = staging.results[-1] if staging.results else None
        result_file = staging.next_result()
        body = flow_input(self.settings, staging, job, result_file, previous)
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
                f"scan {job.scan_uid}: {_run_failure(finished)}; staged files kept in {staging.root}"
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
        result.extra["bytes_moved"] = {
            "sent": sent + len(json.dumps(body)),
            "received": result_file.stat().st_size,
        }
        return result

    def wait(self, run_id: str) -> dict[str, Any]:
        """Poll run ``run_id`` until it finishes or ``settings.run_timeout_s`` passes (then cancel it)."""
        deadline = time.monotonic() + self.settings.run_timeout_s
        while True:
            run = self._call(f"flow run {run_id}: status", lambda: self.clients.flows.get_run(run_id)).data
            if run["status"] in FINISHED:
                return run
            if run["status"] == "INACTIVE":  # stopped for consent or a failed action: it needs a person
                description = f"the run is waiting for action ({json.dumps(run.get('details'))[:300]})"
                return {**run, "details": {"description": description}}
            if time.monotonic() > deadline:
                self._call(f"flow run {run_id}: cancel", lambda: self.clients.flows.cancel_run(run_id))
                return {
                    **run,
                    "status": "TIMED OUT",
                    "details": {
                        "description": f"no result within {self.settings.run_timeout_s} s; run cancelled"
                    },
                }
            time.sleep(self.settings.poll_interval_s)

    def forget_scan(self, staging: ScanStaging, succeeded: bool) -> None:
        if succeeded:
            staging.remove()
