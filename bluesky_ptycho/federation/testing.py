"""A local stand-in for the Globus Flows service, for tests and benchmarks without the internet."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import globus_sdk
import jsonschema
from globus_sdk.config import get_service_url

from .auth import GlobusClients
from .flows import flow_input_schema
from .globus_settings import GlobusSettings
from .remote import reconstruct_files


def local_flow_settings(workdir: Path, **overrides) -> GlobusSettings:
    """Settings of a made-up deployment whose two collections are ``workdir``/beamline and ``workdir``/facility."""
    workdir = Path(workdir)
    for side in ("beamline", "facility"):
        (workdir / side).mkdir(parents=True, exist_ok=True)
    values = {
        "client_id": uuid.uuid4(),
        "beamline_collection_id": uuid.uuid4(),
        "beamline_collection_path": "/ptycho/staging",
        "local_staging_directory": workdir / "beamline",
        "facility_collection_id": uuid.uuid4(),
        "facility_collection_path": "/projects/ptycho",
        "facility_filesystem_path": str(workdir / "facility"),
        "compute_endpoint_id": uuid.uuid4(),
        "function_id": uuid.uuid4(),
        "flow_id": uuid.uuid4(),
        "poll_interval_s": 0.05,
    }
    return GlobusSettings(**{**values, **overrides})


def token_clients(flow_id: uuid.UUID | str | None) -> GlobusClients:
    """Globus clients with a fixed access token (no Globus Auth), for a mocked service."""
    token = globus_sdk.AccessTokenAuthorizer("test-access-token")
    return GlobusClients(
        flows=globus_sdk.FlowsClient(authorizer=token),
        compute=globus_sdk.ComputeClientV3(authorizer=token),
        flow=None if flow_id is None else globus_sdk.SpecificFlowClient(flow_id, authorizer=token),
    )


class LocalFlowsService:
    """The Flows service and the deployed flow's three actions, played locally at the HTTP layer.

    Register it on a ``responses.RequestsMock``: starting a run validates its
    input against the shipped schema (as the service does); polling a run
    the second time performs the flow's steps as the real actions would,
    with two local directories playing the collections: Transfer (copy the
    frames), Globus Compute (:func:`reconstruct_files`, the function the
    facility runs), Transfer (copy the result back). ``outcome`` "fail"
    fails each run, "stall" leaves runs active forever.
    """

    def __init__(self, http, settings: GlobusSettings, outcome: str = "succeed") -> None:
        flows = get_service_url("flows").rstrip("/")
        self.settings = settings
        self.outcome = outcome
        self.runs: dict[str, dict] = {}
        self.bodies: list[dict] = []
        self.cancelled: list[str] = []
        http.add_callback("POST", f"{flows}/flows/{settings.flow_id}/run", callback=self.start)
        http.add_callback("GET", re.compile(rf"{flows}/runs/[-0-9a-f]+$"), callback=self.status)
        http.add_callback("POST", re.compile(rf"{flows}/runs/[-0-9a-f]+/cancel$"), callback=self.cancel)

    def local(self, collection_path: str, side: str) -> Path:
        settings = self.settings
        if side == "beamline":
            root, base = settings.beamline_collection_path, Path(settings.local_staging_directory)
        else:
            root, base = settings.facility_collection_path, Path(settings.facility_filesystem_path)
        return base / Path(collection_path).relative_to(root)

    def start(self, request):
        payload = json.loads(request.body)
        body = payload["body"]
        jsonschema.validate(body, flow_input_schema())  # the service validates the input
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {
            "run_id": run_id,
            "status": "ACTIVE",
            "label": payload["label"],
            "polls": 0,
            "body": body,
        }
        self.bodies.append(body)
        return (
            201,
            {},
            json.dumps({"run_id": run_id, "status": "ACTIVE", "flow_id": str(self.settings.flow_id)}),
        )

    def status(self, request):
        run = self.runs[request.url.rstrip("/").split("/")[-1]]
        run["polls"] += 1
        if run["status"] == "ACTIVE" and run["polls"] >= 2 and self.outcome != "stall":
            self.execute(run)
        shown = {k: v for k, v in run.items() if k not in ("polls", "body")}
        return 200, {}, json.dumps(shown)

    def execute(self, run):
        body = run["body"]
        if self.outcome == "fail":
            run.update(
                status="FAILED", details={"code": "ActionFailedException", "description": "endpoint offline"}
            )
            return
        transfer_in, transfer_out = body["transfer_in"], body["transfer_out"]
        shutil.copytree(
            self.local(transfer_in["source_path"], "beamline"),
            self.local(transfer_in["destination_path"], "facility"),
            dirs_exist_ok=True,
        )
        reconstruct_files(**body["compute"]["kwargs"])
        destination = self.local(transfer_out["destination_path"], "beamline")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.local(transfer_out["source_path"], "facility"), destination)
        run.update(status="SUCCEEDED", details={"code": "FlowSucceeded"})

    def cancel(self, request):
        run_id = request.url.split("/")[-2]
        self.cancelled.append(run_id)
        self.runs[run_id]["status"] = "ENDED"
        return 202, {}, json.dumps({"run_id": run_id, "status": "ENDED"})
