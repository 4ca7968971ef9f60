"""A local stand-in for the Globus Flows service, for tests and benchmarks without the internet."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import globus_sdk
import jsonschema
from globus_sdk.config import get_service_url

from .auth import GlobusClients
from .flows import flow_definition, flow_input_schema
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


TRANSFER_ACTION_URL = "https://transfer.actions.globus.org/transfer"
COMPUTE_ACTION_URL = "https://compute.actions.globus.org/v3"
_UUID = {"type": "string", "format": "uuid"}
# The input the Transfer action provider accepts (what its introspection, GET
# https://transfer.actions.globus.org/transfer, publishes; the fields of the
# Transfer API's transfer document that the provider passes on). sync_level is
# the Transfer API's integer 0-3, as globus-sdk sends it.
TRANSFER_INPUT_SCHEMA = {
    "type": "object",
    "required": ["source_endpoint", "destination_endpoint", "DATA"],
    "additionalProperties": False,
    "properties": {
        "source_endpoint": _UUID,
        "destination_endpoint": _UUID,
        "DATA": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["source_path", "destination_path"],
                "additionalProperties": False,
                "properties": {
                    "source_path": {"type": "string"},
                    "destination_path": {"type": "string"},
                    "recursive": {"type": "boolean"},
                    "external_checksum": {"type": "string"},
                    "checksum_algorithm": {"type": "string"},
                },
            },
        },
        "label": {"type": "string", "maxLength": 128},
        "sync_level": {"type": "integer", "enum": [0, 1, 2, 3]},
        "verify_checksum": {"type": "boolean"},
        "preserve_timestamp": {"type": "boolean"},
        "encrypt_data": {"type": "boolean"},
        "delete_destination_extra": {"type": "boolean"},
        "skip_source_errors": {"type": "boolean"},
        "fail_on_quota_errors": {"type": "boolean"},
        "store_base_path_info": {"type": "boolean"},
        "notify_on_succeeded": {"type": "boolean"},
        "notify_on_failed": {"type": "boolean"},
        "notify_on_inactive": {"type": "boolean"},
        "deadline": {"type": "string"},
        "source_local_user": {"type": "string"},
        "destination_local_user": {"type": "string"},
        "filter_rules": {"type": "array"},
    },
}
# The input of the Globus Compute action provider v3, as globus-compute's
# documentation and the flows built for it (gladier's ComputeFlowBuilderv3,
# ptychodus's flow) give it: the endpoint, and tasks of a registered function
# with its args and kwargs.
COMPUTE_V3_INPUT_SCHEMA = {
    "type": "object",
    "required": ["endpoint_id", "tasks"],
    "additionalProperties": False,
    "properties": {
        "endpoint_id": _UUID,
        "user_endpoint_config": {"type": "object"},
        "resource_specification": {"type": "object"},
        "user_runtime": {"type": "object"},
        "tasks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["function_id"],
                "additionalProperties": False,
                "properties": {"function_id": _UUID, "args": {"type": "array"}, "kwargs": {"type": "object"}},
            },
        },
    },
}


class ActionFailed(Exception):
    """An action ended FAILED (or its provider refused the request): the reason."""


class ComputeTaskFailed(RuntimeError):
    """A task the local Compute endpoint refused (payload over the limit) or whose function raised."""


class LocalComputeEndpoint:
    """A Globus Compute endpoint on this machine: the SDK's serialisation, the endpoint's real engine.

    A task is packed as the SDK packs it (``ComputeSerializer``: the
    function, then its args and kwargs), refused when it exceeds the
    service's payload limit (10 MB, as is a result), run on
    ``globus_compute_endpoint``'s ``ProcessPoolEngine`` (a separate worker
    process that unpacks and calls it as the facility does), and its result
    unpacked as the SDK does. Only the web service that relays the bytes is
    missing. Use as a context manager, or call :meth:`shutdown`.
    """

    def __init__(self, run_dir: str | Path, *, payload_limit: int | None = None) -> None:
        from globus_compute_endpoint.engines import ProcessPoolEngine
        from globus_compute_sdk.serialize import ComputeSerializer

        from .executor import GLOBUS_COMPUTE_PAYLOAD_LIMIT

        self.endpoint_id = uuid.uuid4()
        self.serializer = ComputeSerializer()
        self.payload_limit = GLOBUS_COMPUTE_PAYLOAD_LIMIT if payload_limit is None else payload_limit
        self.task_bytes: list[int] = []  # the serialised size of every task submitted
        self._engine = ProcessPoolEngine(max_workers=1)
        self._engine.start(endpoint_id=self.endpoint_id, run_dir=str(run_dir))

    def run(self, function, *args, **kwargs):
        """Run ``function(*args, **kwargs)`` on the engine; its return value, or :class:`ComputeTaskFailed`."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Result, Task
        from globus_compute_endpoint.engines.base import GCFuture

        serde = self.serializer
        arguments = serde.pack_buffers([serde.serialize(args), serde.serialize(kwargs)])
        self.task_bytes.append(len(arguments))
        if len(arguments) > self.payload_limit:
            raise ComputeTaskFailed(
                f"413 task payload of {len(arguments)} bytes exceeds the limit of {self.payload_limit}"
            )
        task_id = uuid.uuid4()
        packed = messagepack.pack(
            Task(task_id=task_id, task_buffer=serde.pack_buffers([serde.serialize(function)]) + arguments)
        )
        future = GCFuture(task_id)
        self._engine.submit(future, packed, resource_specification={})
        result = messagepack.unpack(future.result(timeout=600))
        if not isinstance(result, Result):
            raise ComputeTaskFailed(f"the engine returned {type(result).__name__}")
        if result.is_error:
            raise ComputeTaskFailed(result.data)
        if len(result.data) > self.payload_limit:
            raise ComputeTaskFailed(
                f"task result of {len(result.data)} bytes exceeds the limit of {self.payload_limit}"
            )
        return serde.deserialize(result.data)

    def executor(self) -> LocalComputeExecutor:
        """A ``concurrent.futures.Executor`` on this endpoint, as ``globus_compute_sdk.Executor`` is one."""
        return LocalComputeExecutor(self)

    def shutdown(self) -> None:
        self._engine.shutdown()

    def __enter__(self) -> LocalComputeEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


class LocalComputeExecutor(Executor):
    """Submits to a :class:`LocalComputeEndpoint`; has the ``serializer`` a Globus Compute Executor has."""

    def __init__(self, endpoint: LocalComputeEndpoint) -> None:
        self.endpoint = endpoint
        self.serializer = endpoint.serializer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-compute")

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._pool.submit(self.endpoint.run, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def json_path(state: dict, path: str):
    """The value at ``path`` (``$.a.b``) of a run's state, as the Flows service resolves a ``.$`` parameter."""
    if not isinstance(path, str) or not (path == "$" or path.startswith("$.")):
        raise ActionFailed(f"{path!r} is not a JSONPath into the run's state")
    value = state
    for part in path[2:].split(".") if path != "$" else []:
        if not isinstance(value, dict) or part not in value:
            raise ActionFailed(f"{path} is not in the run's state")
        value = value[part]
    return value


def resolve_parameters(parameters, state: dict):
    """``parameters`` with every ``"key.$": "$.path"`` replaced by ``"key": <the value at path>``."""
    if isinstance(parameters, dict):
        return {
            key[:-2] if key.endswith(".$") else key: json_path(state, value)
            if key.endswith(".$")
            else resolve_parameters(value, state)
            for key, value in parameters.items()
        }
    if isinstance(parameters, list):
        return [resolve_parameters(value, state) for value in parameters]
    return parameters


class LocalFlowsService:
    """The Flows service running the deployed flow's definition locally, at the HTTP layer.

    Register it on a ``responses.RequestsMock``. Starting a run validates its
    input against the shipped input schema, as the service does; polling it
    the second time executes ``definition`` (default: the shipped
    ``definition.json``) as the service would: its states from ``StartAt``
    by ``Next`` to ``End``, each Action state's ``Parameters`` resolved
    against the run's state (``.$`` JSONPaths), sent to the action provider
    its ``ActionUrl`` names, its result stored at ``ResultPath``; a failed
    action fails the run unless ``ExceptionOnActionFailure`` is false. The
    two action providers validate their input against their published
    schemas (:data:`TRANSFER_INPUT_SCHEMA`, :data:`COMPUTE_V3_INPUT_SCHEMA`)
    and then act locally: Transfer copies between two local directories
    that play the collections, Compute calls the registered function
    (:func:`reconstruct_files`) on ``endpoint`` (a real engine) when the
    request names the configured endpoint. ``outcome`` "fail"
    takes the compute endpoint offline, "stall" leaves runs active forever.
    """

    def __init__(
        self,
        http,
        settings: GlobusSettings,
        endpoint: LocalComputeEndpoint,
        outcome: str = "succeed",
        definition: dict | None = None,
    ):
        flows = get_service_url("flows").rstrip("/")
        self.settings = settings
        self.endpoint = endpoint
        self.outcome = outcome
        self.definition = definition or flow_definition()
        self.runs: dict[str, dict] = {}
        self.copied: list[Path] = []  # every file it copied, by destination
        self.compute_requests: list[dict] = []  # the Compute provider's requests, as it received them
        self.bodies: list[dict] = []
        self.cancelled: list[str] = []
        self.providers = {TRANSFER_ACTION_URL: self.transfer, COMPUTE_ACTION_URL: self.compute}
        self.schemas = {
            TRANSFER_ACTION_URL: TRANSFER_INPUT_SCHEMA,
            COMPUTE_ACTION_URL: COMPUTE_V3_INPUT_SCHEMA,
        }
        http.add_callback("POST", f"{flows}/flows/{settings.flow_id}/run", callback=self.start)
        http.add_callback("GET", re.compile(rf"{flows}/runs/[-0-9a-f]+$"), callback=self.status)
        http.add_callback("GET", re.compile(rf"{flows}/runs/[-0-9a-f]+/log(\?.*)?$"), callback=self.log)
        http.add_callback("POST", re.compile(rf"{flows}/runs/[-0-9a-f]+/cancel$"), callback=self.cancel)
        http.add_callback(
            "POST",
            re.compile(rf"{flows}/runs/[-0-9a-f]+/resume$"),
            callback=self.resume,
        )

    def start(self, request):
        payload = json.loads(request.body)
        body = payload["body"]
        jsonschema.validate(body, flow_input_schema())  # the service validates the input
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {
            "run_id": run_id,
            "flow_id": str(self.settings.flow_id),
            "status": "ACTIVE",
            "label": payload["label"],
            "polls": 0,
            "body": body,
            "log": [_log_entry("FlowStarted", "The Flow Instance started execution", input=body)],
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
        if self.outcome == "consent" and run["polls"] == 1 and not run.get("resumed"):
            # as the service stops a run whose action needs a consent the user has not given
            scope = f"https://auth.globus.org/scopes/{self.settings.facility_collection_id}/data_access"
            run.update(
                status="INACTIVE",
                details={
                    "code": "ConsentRequired",
                    "description": f"Missing required consent for state TransferFrames: {scope}",
                    "authorization_parameters": {
                        "session_message": "Missing required data_access consent",
                        "required_scopes": [scope],
                    },
                },
            )
        if self.outcome == "stall" and len(run["log"]) == 1:  # its first action never ends
            first = self.definition["StartAt"]
            run["log"].append(_log_entry("ActionStarted", f"State {first} started", state_name=first))
        if run["status"] == "ACTIVE" and run["polls"] >= 2 and self.outcome != "stall":
            self.execute(run)
        return 200, {}, json.dumps(_run_document(run))

    def log(self, request):
        run = self.runs[request.url.split("?")[0].split("/")[-2]]
        return 200, {}, json.dumps({"limit": 100, "has_next_page": False, "entries": run["log"]})

    def resume(self, request):
        run = self.runs[request.url.split("/")[-2]]
        if run["status"] != "INACTIVE":
            return 409, {}, json.dumps({"error": {"code": "CONFLICT", "detail": f"run is {run['status']}"}})
        run.update(status="ACTIVE", details={}, resumed=True, polls=1)
        return 200, {}, json.dumps(_run_document(run))

    def execute(self, run) -> None:
        """Run the definition's states on the run's input; the run ends SUCCEEDED or FAILED."""
        state, name = json.loads(json.dumps(run["body"])), self.definition["StartAt"]
        while True:
            step = self.definition["States"][name]
            state_details = {"state_name": name, "state_type": step["Type"]}
            run["log"].append(
                _log_entry("ActionStarted", f"State {name} of type Action started", **state_details)
            )
            try:
                if step["Type"] != "Action":
                    raise ActionFailed(f"state type {step['Type']!r} is not played by this stand-in")
                result = self.act(step, state)
            except ActionFailed as failure:
                result = {"status": "FAILED", "details": {"description": str(failure)}}
                run["log"].append(
                    _log_entry("ActionFailed", f"State {name} failed", output=result, **state_details)
                )
                if step.get("ExceptionOnActionFailure", True):
                    description = f"state {name}: {failure}"
                    run.update(
                        status="FAILED",
                        details={"code": "ActionFailedException", "description": "An action failed"},
                    )
                    run["log"].append(_log_entry("FlowFailed", description))
                    return
            else:
                run["log"].append(
                    _log_entry("ActionCompleted", f"State {name} completed", output=result, **state_details)
                )
            if "ResultPath" in step:
                state[json_path_key(step["ResultPath"])] = result
            if step.get("End"):
                run.update(status="SUCCEEDED", details={"code": "FlowSucceeded", "output": state})
                return
            name = step["Next"]

    def act(self, step: dict, state: dict) -> dict:
        """One Action state: the provider its ActionUrl names validates the resolved Parameters and acts."""
        url = step["ActionUrl"]
        if url not in self.providers:
            raise ActionFailed(f"{url} is not an action provider")
        body = resolve_parameters(step.get("Parameters", {}), state)
        checker = jsonschema.Draft202012Validator(
            self.schemas[url], format_checker=jsonschema.FormatChecker()
        )
        errors = sorted(checker.iter_errors(body), key=str)
        if errors:
            raise ActionFailed(f"{url} refused its input: {errors[0].message}")
        return {"action_id": str(uuid.uuid4()), "status": "SUCCEEDED", "details": self.providers[url](body)}

    def collection(self, collection_id: str, path: str) -> Path:
        """The local directory that plays ``path`` of the collection ``collection_id``."""
        settings = self.settings
        sides = {
            str(settings.beamline_collection_id): (
                settings.beamline_collection_path,
                Path(settings.local_staging_directory),
            ),
            str(settings.facility_collection_id): (
                settings.facility_collection_path,
                Path(settings.facility_filesystem_path),
            ),
        }
        if collection_id not in sides:
            raise ActionFailed(f"collection {collection_id} not found")
        root, base = sides[collection_id]
        return base / Path(path).relative_to(root)

    def transfer(self, body: dict) -> dict:
        """Copy as the Transfer service does: with a ``sync_level``, only files the destination lacks or differ."""
        copied = 0
        for item in body["DATA"]:
            source = self.collection(body["source_endpoint"], item["source_path"])
            destination = self.collection(body["destination_endpoint"], item["destination_path"])
            if not source.exists():
                raise ActionFailed(f"Transfer: {item['source_path']} not found (FILE_NOT_FOUND)")
            pairs = (
                [
                    (path, destination / path.relative_to(source))
                    for path in source.rglob("*")
                    if path.is_file()
                ]
                if item.get("recursive")
                else [(source, destination)]
            )
            for source_file, destination_file in pairs:
                if _in_sync(source_file, destination_file, body.get("sync_level")):
                    continue
                destination_file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source_file, destination_file)
                copied += source_file.stat().st_size
                self.copied.append(destination_file)
        return {
            "task_id": str(uuid.uuid4()),
            "status": "SUCCEEDED",
            "label": body.get("label"),
            "bytes_transferred": copied,
        }

    def compute(self, body: dict) -> dict:
        self.compute_requests.append(body)
        if self.outcome == "fail":
            raise ActionFailed("endpoint offline")
        if body["endpoint_id"] != str(self.settings.compute_endpoint_id):
            raise ActionFailed(f"Compute: endpoint {body['endpoint_id']} not found")
        results = []
        for task in body["tasks"]:
            if task["function_id"] != str(self.settings.function_id):
                raise ActionFailed(f"Compute: function {task['function_id']} not found")
            try:
                output = self.endpoint.run(reconstruct_files, *task.get("args", []), **task.get("kwargs", {}))
            except ComputeTaskFailed as error:  # as the provider reports a task's exception
                raise ActionFailed(f"Compute task failed: {error}") from None
            results.append({"task_id": str(uuid.uuid4()), "output": output})
        return {"result": [r["output"] for r in results], "results": results}

    def cancel(self, request):
        run_id = request.url.split("/")[-2]
        self.cancelled.append(run_id)
        self.runs[run_id]["status"] = "ENDED"
        return 202, {}, json.dumps({"run_id": run_id, "status": "ENDED"})


def _run_document(run: dict) -> dict:
    """The run as the service shows it (without what the stand-in keeps for itself)."""
    return {k: v for k, v in run.items() if k not in ("polls", "body", "log", "resumed")}


def _log_entry(code: str, description: str, **details) -> dict:
    """One entry of a run's log, as the Flows service writes it."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "code": code,
        "description": description,
        "details": details,
    }


def _in_sync(source: Path, destination: Path, sync_level: int | None) -> bool:
    """Whether the Transfer service would skip ``source`` at ``sync_level`` (None: always copy)."""
    if sync_level is None or not destination.exists():
        return False
    if sync_level == 0:  # exists
        return True
    if source.stat().st_size != destination.stat().st_size:  # 1: size
        return False
    if sync_level == 1:
        return True
    if sync_level == 2:  # mtime: the source is not newer
        return source.stat().st_mtime <= destination.stat().st_mtime
    return source.read_bytes() == destination.read_bytes()  # 3: checksum


def json_path_key(path: str) -> str:
    """The top-level key a ``ResultPath`` (``$.Name``) names."""
    if not path.startswith("$.") or "." in path[2:]:
        raise ActionFailed(f"ResultPath {path!r} is not $.<name>")
    return path[2:]
