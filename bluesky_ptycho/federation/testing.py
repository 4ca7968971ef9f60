"""A local stand-in for the Globus Flows service, for tests and benchmarks without the internet."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import globus_sdk
import jsonschema
from globus_sdk.config import get_service_url

from .auth import GlobusClients
from .flows import DEFAULT_WAIT_TIME_S, flow_definition, flow_input_schema
from .globus_settings import GlobusSettings


def local_flow_settings(
    workdir: Path,
    compute: LocalComputeService | None = None,
    *,
    serialization: str = "reference",
    **overrides,
) -> GlobusSettings:
    """Settings of a made-up deployment whose two collections are ``workdir``/beamline and ``workdir``/facility.

    With ``compute``, its endpoint is the deployment's, and the functions are
    registered with it as ``globus deploy`` registers them (``serialization``).
    """
    from .flows import register_functions

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
        "function_serialization": serialization,
    }
    if compute is not None:
        values["compute_endpoint_id"] = compute.endpoint_id
        values.update(register_functions(token_clients(None), serialization))
    return GlobusSettings(**{**values, **overrides})


#: The access token each stand-in service accepts: Globus Auth issues one per resource server, and a
#: request carrying another service's token is refused (401), as the real services refuse it.
def access_token(resource_server: str) -> str:
    """The access token the stand-ins accept for ``resource_server``."""
    return f"access-{resource_server}"


AUTH_TOKEN = access_token(globus_sdk.AuthClient.resource_server)
COMPUTE_TOKEN = access_token(globus_sdk.ComputeClientV3.resource_server)
FLOWS_TOKEN = access_token(globus_sdk.FlowsClient.resource_server)


def flow_token(flow_id: uuid.UUID | str) -> str:
    """The access token for running one flow (its own resource server: the flow's id)."""
    return access_token(str(flow_id))


def token_clients(flow_id: uuid.UUID | str | None) -> GlobusClients:
    """Globus clients with fixed access tokens, one per resource server (no Globus Auth), for mocked services."""

    def token(value: str) -> globus_sdk.AccessTokenAuthorizer:
        return globus_sdk.AccessTokenAuthorizer(value)

    return GlobusClients(
        flows=globus_sdk.FlowsClient(authorizer=token(FLOWS_TOKEN)),
        compute=globus_sdk.ComputeClientV3(authorizer=token(COMPUTE_TOKEN)),
        flow=None
        if flow_id is None
        else globus_sdk.SpecificFlowClient(flow_id, authorizer=token(flow_token(flow_id))),
        auth=globus_sdk.AuthClient(authorizer=token(AUTH_TOKEN)),
    )


def refused_token(request, expected: str):
    """A 401 response, as the service gives, when ``request`` does not carry ``expected``; else None."""
    if request.headers.get("Authorization") == f"Bearer {expected}":
        return None
    body = {"code": "AUTHENTICATION_ERROR", "error": "invalid_token",
            "message": "the access token is not valid for this resource server"}  # fmt: skip
    return 401, {}, json.dumps(body)


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


# What the Flows service accepts to start a run (its POST /flows/{id}/run body).
RUN_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["body"],
    "properties": {
        "body": {"type": "object"},
        "label": {"type": "string", "minLength": 1, "maxLength": 64},
        "tags": {"type": "array", "items": {"type": "string"}},
        "run_monitors": {"type": "array", "items": {"type": "string"}},
        "run_managers": {"type": "array", "items": {"type": "string"}},
        "activity_notification_policy": {"type": "object"},
    },
}


class ActionFailed(Exception):
    """An action ended FAILED (or its provider refused the request): the reason."""


class ActionTimedOut(ActionFailed):
    """An action still running when its state's ``WaitTime`` ran out."""


class ComputeTaskFailed(RuntimeError):
    """A task the local Compute endpoint refused (payload over the limit) or whose function raised."""


class LocalComputeEndpoint:
    """A Globus Compute endpoint on this machine: the SDK's serialisation, the endpoint's real engine.

    A task is packed as the SDK packs it (``ComputeSerializer``: the
    function, then its args and kwargs), refused when it exceeds the
    service's payload limit (10 MB, as is a result), run on
    ``globus_compute_endpoint``'s ``ProcessPoolEngine`` (a separate worker
    process that unpacks and calls it as the facility does), and its result
    unpacked as the SDK does. Put :class:`LocalComputeService` in front of it
    for the web service. Use as a context manager, or call :meth:`shutdown`.
    """

    def __init__(self, run_dir: str | Path, *, payload_limit: int | None = None) -> None:
        from globus_compute_endpoint.engines import ProcessPoolEngine
        from globus_compute_sdk.serialize import ComputeSerializer

        from .executor import GLOBUS_COMPUTE_PAYLOAD_LIMIT

        self.endpoint_id = uuid.uuid4()
        self.serializer = ComputeSerializer()
        self.payload_limit = GLOBUS_COMPUTE_PAYLOAD_LIMIT if payload_limit is None else payload_limit
        self.task_bytes: list[int] = []  # the serialised size of every task's arguments
        self._engine = ProcessPoolEngine(max_workers=1)
        self._engine.start(endpoint_id=self.endpoint_id, run_dir=str(run_dir))

    def start(self, function_code: str, arguments: str) -> Future:
        """Start a task as the endpoint receives it (registered code, packed args); a future of its packed result.

        The resources a task asks for are checked by :class:`LocalComputeService`
        for the engine it plays; this engine takes none.
        """
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task
        from globus_compute_endpoint.engines.base import GCFuture

        self.task_bytes.append(len(arguments))
        task_id = uuid.uuid4()
        future = GCFuture(task_id)
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=function_code + arguments))
        self._engine.submit(future, packed, resource_specification={})
        return future

    def outcome(self, packed: bytes):
        """A finished task's return value, or :class:`ComputeTaskFailed` with its remote traceback."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Result

        result = messagepack.unpack(packed)
        if not isinstance(result, Result):
            raise ComputeTaskFailed(f"the engine returned {type(result).__name__}")
        if result.is_error:
            raise ComputeTaskFailed(result.data)
        if len(result.data) > self.payload_limit:
            raise ComputeTaskFailed(
                f"task result of {len(result.data)} bytes exceeds the limit of {self.payload_limit}"
            )
        return self.serializer.deserialize(result.data)

    def pack_arguments(self, args: tuple, kwargs: dict) -> str:
        """A task's arguments as the SDK packs them, refused over the payload limit."""
        serde = self.serializer
        arguments = serde.pack_buffers([serde.serialize(tuple(args)), serde.serialize(kwargs)])
        if len(arguments) > self.payload_limit:
            raise ComputeTaskFailed(
                f"413 task payload of {len(arguments)} bytes exceeds the limit of {self.payload_limit}"
            )
        return arguments

    def run(self, function, *args, **kwargs):
        """Run ``function(*args, **kwargs)`` on the engine; its return value, or :class:`ComputeTaskFailed`."""
        serde = self.serializer
        code = serde.pack_buffers([serde.serialize(function)])
        future = self.start(code, self.pack_arguments(args, kwargs))
        return self.outcome(future.result(timeout=600))

    def shutdown(self) -> None:
        self._engine.shutdown()

    def __enter__(self) -> LocalComputeEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _engine_resource_check(engine: str):
    """The check an engine makes of a task's ``resource_specification`` (its Parsl executor's own)."""
    if engine == "GlobusMPIEngine":
        from parsl.executors.high_throughput.mpi_prefix_composer import validate_resource_spec

        return lambda spec: validate_resource_spec(dict(spec))
    if engine == "GlobusComputeEngine":
        from parsl.executors import HighThroughputExecutor

        return lambda spec: HighThroughputExecutor.validate_resource_spec(None, spec)
    raise ValueError(f"engine {engine!r}: GlobusComputeEngine or GlobusMPIEngine")


def default_user_config_schema() -> dict:
    """The ``user_config_schema.json`` that ``globus-compute-endpoint configure`` writes by default."""
    from importlib.resources import files as package_files

    text = package_files("globus_compute_endpoint.endpoint.config").joinpath("user_config_schema.json")
    return json.loads(text.read_text())


class LocalComputeService:
    """The Globus Compute web service at the HTTP layer, in front of a :class:`LocalComputeEndpoint`.

    Register it on a ``responses.RequestsMock``. It answers what the SDKs
    send (``register_function``, ``batch_run``, ``get_endpoint_status``,
    ``get_function``), each request checked for the Compute token. A
    registered function is kept as its serialised code, and a task runs
    *that* code on the engine (deserialised in its worker, as an endpoint
    does), whatever function the caller meant. A submission is refused as
    the service refuses it: over 10 MB in all (413), to an unknown endpoint
    or function (404); a task's ``user_endpoint_config`` is validated
    against the endpoint's schema (default: the one ``configure`` writes)
    and its ``resource_specification`` by the engine's own check, and fails
    as a task; ``allowed_functions`` refuses (403) tasks of other
    functions, as an endpoint restricted to them does. It also answers the
    endpoint's status (``offline``: not connected), its allowlist and the
    version check. ``failing_submissions`` answers the next submissions
    with these HTTP statuses (401 for a token that expired, 413, ...).
    """

    def __init__(
        self,
        http,
        endpoint: LocalComputeEndpoint,
        *,
        engine: str = "GlobusComputeEngine",
        user_config_schema: dict | None = None,
        allowed_functions: list[str] | None = None,
    ) -> None:
        from .executor import GLOBUS_COMPUTE_PAYLOAD_LIMIT

        base = get_service_url("compute").rstrip("/")
        self.endpoint = endpoint
        self.endpoint_id = str(endpoint.endpoint_id)
        self.request_limit = GLOBUS_COMPUTE_PAYLOAD_LIMIT
        _engine_resource_check(engine)
        self.engine = engine
        self.user_config_schema = user_config_schema or default_user_config_schema()
        self.functions: dict[str, dict] = {}  # function id -> the registration as received
        self.results: dict[str, Future] = {}  # task id -> the engine's future of its packed result
        self.submissions: list[int] = []  # the tasks of every accepted submission
        self.allowed_functions = allowed_functions
        self.offline = False
        self.failing_submissions: list[int] = []
        self.watcher = _LocalResultWatcher(self)
        http.add_callback("POST", f"{base}/v3/functions", callback=self._register)
        http.add_callback("GET", re.compile(rf"{base}/v2/functions/[-0-9a-f]+$"), callback=self._function)
        http.add_callback(
            "POST", re.compile(rf"{base}/v3/endpoints/[-0-9a-f]+/submit$"), callback=self._submit
        )
        http.add_callback(
            "GET", re.compile(rf"{base}/v2/endpoints/[-0-9a-f]+/status$"), callback=self._status
        )
        http.add_callback(
            "GET", re.compile(rf"{base}/v3/endpoints/[-0-9a-f]+/allowed_functions$"), callback=self._allowlist
        )
        http.add_callback("GET", re.compile(rf"{base}/v2/version(\?.*)?$"), callback=self._version)

    @staticmethod
    def _error(status: int, code: str, message: str):
        return status, {}, json.dumps({"code": code, "error": code, "message": message, "reason": message})

    def _refusal(self, request, endpoint_id: str | None = None):
        """The service's answer to a request without the Compute token, or about another endpoint; else None."""
        return refused_token(request, COMPUTE_TOKEN) or self._unknown_endpoint(endpoint_id)

    def _unknown_endpoint(self, endpoint_id: str | None):
        if endpoint_id is not None and endpoint_id != self.endpoint_id:
            return self._error(404, "ENDPOINT_NOT_FOUND", f"endpoint {endpoint_id} not found")
        return None

    def function_refusal(self, function_id: str) -> tuple[int, str, str] | None:
        """Why the service refuses a task of ``function_id`` (status, code, message), or None."""
        if function_id not in self.functions:
            return 404, "FUNCTION_NOT_FOUND", f"function {function_id} not found"
        if not self.allows(function_id):
            return (
                403,
                "FUNCTION_NOT_PERMITTED",
                f"function {function_id} is not in the endpoint's allowed_functions",
            )
        return None

    def _register(self, request):
        if refused := self._refusal(request):
            return refused
        body = json.loads(request.body)
        if not body.get("function_code") or not body.get("function_name"):
            return self._error(400, "BAD_REQUEST", "function_name and function_code are required")
        function_id = str(uuid.uuid4())
        self.functions[function_id] = body
        return 200, {}, json.dumps({"function_uuid": function_id})

    def _function(self, request):
        if refused := self._refusal(request):
            return refused
        function_id = request.url.rstrip("/").split("/")[-1]
        if function_id not in self.functions:
            return self._error(404, "FUNCTION_NOT_FOUND", f"function {function_id} not found")
        body = self.functions[function_id]
        return 200, {}, json.dumps({"function_uuid": function_id, "function_name": body["function_name"]})

    def _version(self, request):
        """What the SDK's Client checks itself against (this stand-in accepts the installed SDK)."""
        from globus_compute_sdk import __version__ as sdk_version

        body = {"api": "1.0.0", "min_sdk_version": sdk_version, "min_ep_version": sdk_version}
        return 200, {}, json.dumps(body)

    def _allowlist(self, request):
        endpoint_id = request.url.split("/")[-2]
        if refused := self._refusal(request, endpoint_id):
            return refused
        functions = list(self.allowed_functions or [])
        body = {
            "endpoint_id": endpoint_id,
            "restricted": self.allowed_functions is not None,
            "functions": functions,
        }
        return 200, {}, json.dumps(body)

    def _status(self, request):
        endpoint_id = request.url.split("/")[-2]
        if refused := self._refusal(request, endpoint_id):
            return refused
        return 200, {}, json.dumps({"status": "offline" if self.offline else "online", "details": {}})

    def allows(self, function_id: str) -> bool:
        """Whether the endpoint's ``allowed_functions`` (None: any) admit ``function_id``."""
        return self.allowed_functions is None or function_id in self.allowed_functions

    def task_problem(
        self, user_endpoint_config: dict | None, resource_specification: dict | None
    ) -> str | None:
        """Why the endpoint would fail a task with these options (None: it would run it)."""
        try:
            jsonschema.validate(user_endpoint_config or {}, self.user_config_schema)
        except jsonschema.ValidationError as error:
            return f"user_endpoint_config refused by the endpoint's schema: {error.message}"
        try:
            _engine_resource_check(self.engine)(resource_specification or {})
        except Exception as error:  # Parsl's InvalidResourceSpecification
            return f"{type(error).__name__}: {error}"
        return None

    def _submit(self, request):
        if refused := self._refusal(request):
            return refused
        if len(request.body) > self.request_limit:
            return self._error(
                413, "PAYLOAD_TOO_LARGE", f"request of {len(request.body)} bytes is over 10 MB"
            )
        if self.failing_submissions:
            status = self.failing_submissions.pop(0)
            return self._error(status, "SUBMISSION_FAILED", f"the submission failed ({status})")
        if refused := self._unknown_endpoint(request.url.split("/")[-2]):
            return refused
        body = json.loads(request.body)
        refusals = [refusal for refusal in map(self.function_refusal, body["tasks"]) if refusal]
        if refusals:  # an unknown function (404) before one the endpoint bars (403), as before
            return self._error(*max(refusals, key=lambda refusal: refusal[0]))
        problem = self.task_problem(body.get("user_endpoint_config"), body.get("resource_specification"))
        tasks = {}
        for function_id, payloads in body["tasks"].items():
            tasks[function_id] = [self._start(function_id, payload, problem) for payload in payloads]
        self.submissions.append(sum(map(len, tasks.values())))
        response = {"request_id": str(uuid.uuid4()), "task_group_id": body.get("task_group_id") or str(uuid.uuid4()),
                    "endpoint_id": self.endpoint_id, "tasks": tasks}  # fmt: skip
        return 200, {}, json.dumps(response)

    def _start(self, function_id: str, arguments: str, problem: str | None) -> str:
        if problem is not None:
            from globus_compute_common import messagepack
            from globus_compute_common.messagepack.message_types import Result

            future = Future()
            future.set_result(messagepack.pack(Result(task_id=uuid.uuid4(), data=problem, is_error=True)))
        else:
            future = self.endpoint.start(self.functions[function_id]["function_code"], arguments)
        task_id = str(uuid.uuid4())
        self.results[task_id] = future
        return task_id

    def run(self, function_id: str, args: list, kwargs: dict, *, user_endpoint_config=None,
            resource_specification=None, timeout: float | None = None):  # fmt: skip
        """One task as the Compute action provider runs it: its return value, or :class:`ComputeTaskFailed`.

        ``timeout``: seconds to wait for it (:class:`TimeoutError` after).
        """
        if refusal := self.function_refusal(function_id):
            raise ComputeTaskFailed(refusal[2])
        problem = self.task_problem(user_endpoint_config, resource_specification)
        if problem is not None:
            raise ComputeTaskFailed(problem)
        arguments = self.endpoint.pack_arguments(tuple(args), kwargs)
        future = self.endpoint.start(self.functions[function_id]["function_code"], arguments)
        return self.endpoint.outcome(future.result(timeout=timeout))

    def client(self):
        """A real ``globus_compute_sdk.Client`` that reaches this service (with the Compute token)."""
        from globus_compute_sdk import Client

        return Client(do_version_check=False, authorizer=globus_sdk.AccessTokenAuthorizer(COMPUTE_TOKEN))

    def executor(self, **options):
        """A real ``globus_compute_sdk.Executor`` on this endpoint, through this service.

        Everything is the SDK's own (registration, batching, its submission
        thread, and its shutdown when a submission fails) except where
        results come from: here, not from the service's AMQP queue.
        """
        return _executor_class(self.watcher)(endpoint_id=self.endpoint_id, client=self.client(), **options)


class _LocalResultWatcher:
    """In place of the Executor's AMQP result watcher: completes its futures from the service's results."""

    class ShuttingDownError(Exception):
        """Never raised: this watcher does not shut down."""

    def __init__(self, service: LocalComputeService) -> None:
        self.service = service

    def is_alive(self) -> bool:
        return True

    def join(self, timeout: float | None = None) -> None:
        return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None

    def get_open_futures(self, executor=None) -> dict:
        return {}

    def watch_for_task_results(self, executor, futures) -> int:
        for future in futures:
            self.service.results[future.task_id].add_done_callback(
                lambda done, future=future: self._complete(future, done)
            )
        return len(futures)

    def _complete(self, future, done: Future) -> None:
        from globus_compute_sdk.errors import TaskExecutionFailed

        try:
            future.set_result(self.service.endpoint.outcome(done.result()))
        except ComputeTaskFailed as error:
            future.set_exception(TaskExecutionFailed(str(error)))


def _executor_class(watcher: _LocalResultWatcher):
    """``globus_compute_sdk.Executor`` whose results come from ``watcher`` instead of AMQP (its signature kept)."""
    from globus_compute_sdk import Executor

    return type("LocalResultsExecutor", (Executor,), {"_get_result_watcher": lambda self: watcher})


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

    Register it on a ``responses.RequestsMock``. Each request must carry the
    right token (the flow's own for starting and resuming a run, the Flows
    service's for the rest). Starting a run validates its label (1-64
    characters) and its input against the shipped input schema, as the
    service does; polling it
    the second time executes ``definition`` (default: the shipped
    ``definition.json``) as the service would: its states from ``StartAt``
    by ``Next`` to ``End``, each Action state's ``Parameters`` resolved
    against the run's state (``.$`` JSONPaths), sent to the action provider
    its ``ActionUrl`` names, its result stored at ``ResultPath``; a failed
    action fails the run unless ``ExceptionOnActionFailure`` is false. The
    two action providers validate their input against their published
    schemas (:data:`TRANSFER_INPUT_SCHEMA`, :data:`COMPUTE_V3_INPUT_SCHEMA`)
    and then act locally: Transfer copies between two local directories
    that play the collections (a directory only with ``recursive: true``, a
    file only without, as the service insists), Compute runs the function
    registered under the task's ``function_id`` on ``compute`` (a
    :class:`LocalComputeService`: the registered code on a real engine), on
    the configured endpoint only. An action still running when its state's
    ``WaitTime`` runs out ends in ActionTimeout. ``outcome`` "fail" takes the
    compute endpoint offline, "stall" leaves runs active forever, "consent"
    stops a run for a consent and "session" for a session policy, until it
    is resumed.
    """

    def __init__(
        self,
        http,
        settings: GlobusSettings,
        compute: LocalComputeService,
        outcome: str = "succeed",
        definition: dict | None = None,
        input_schema: dict | None = None,
    ):
        flows = get_service_url("flows").rstrip("/")
        self.settings = settings
        self.compute_service = compute
        self.outcome = outcome
        self.definition = definition or flow_definition()
        self.input_schema = input_schema or flow_input_schema()
        self.runs: dict[str, dict] = {}
        self.session_policy = uuid.uuid4()
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
        http.add_callback("POST", f"{flows}/flows/{settings.flow_id}/validate_run", callback=self.validate)
        http.add_callback("GET", re.compile(rf"{flows}/runs/[-0-9a-f]+$"), callback=self.status)
        http.add_callback("GET", re.compile(rf"{flows}/runs/[-0-9a-f]+/log(\?.*)?$"), callback=self.log)
        http.add_callback("POST", re.compile(rf"{flows}/runs/[-0-9a-f]+/cancel$"), callback=self.cancel)
        http.add_callback(
            "POST",
            re.compile(rf"{flows}/runs/[-0-9a-f]+/resume$"),
            callback=self.resume,
        )

    def refusal(self, request):
        """The service's answer to a run request it refuses (wrong token, bad label or input), or None."""
        if refused := refused_token(request, flow_token(self.settings.flow_id)):
            return refused
        payload = json.loads(request.body)
        try:  # the service validates the request, then the input against the flow's schema
            jsonschema.validate(payload, RUN_REQUEST_SCHEMA)
            jsonschema.validate(payload["body"], self.input_schema)
        except jsonschema.ValidationError as error:
            where = "/".join(map(str, error.absolute_path)) or "the request"
            message = f"{where}: {error.message}"
            return 422, {}, json.dumps({"code": "UNPROCESSABLE_ENTITY", "error": message, "message": message})
        return None

    def validate(self, request):
        """``validate_run``: the checks of starting a run, and no run."""
        return self.refusal(request) or (200, {}, json.dumps({"message": "validated"}))

    def start(self, request):
        if refused := self.refusal(request):
            return refused
        payload = json.loads(request.body)
        body = payload["body"]
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
        if refused := refused_token(request, FLOWS_TOKEN):
            return refused
        run = self.runs[request.url.rstrip("/").split("/")[-1]]
        run["polls"] += 1
        if self.outcome in ("consent", "session") and run["polls"] == 1 and not run.get("resumed"):
            # as the service stops a run whose action needs a consent, or a login, the user has not given
            run.update(status="INACTIVE", details=self.authorization_required())
        if self.outcome == "stall" and len(run["log"]) == 1:  # its first action never ends
            first = self.definition["StartAt"]
            run["log"].append(_log_entry("ActionStarted", f"State {first} started", state_name=first))
        if run["status"] == "ACTIVE" and run["polls"] >= 2 and self.outcome != "stall":
            self.execute(run)
        return 200, {}, json.dumps(_run_document(run))

    def authorization_required(self) -> dict:
        """The details of a run stopped for Globus Auth: a consent ("consent") or a session policy ("session")."""
        if self.outcome == "session":
            parameters = {"session_message": "The facility collection requires a login with your institution",
                          "session_required_policies": [str(self.session_policy)]}  # fmt: skip
            code = "AuthorizationRequired"
        else:
            parameters = {"session_message": "Missing required data_access consent",
                          "required_scopes": [str(self.required_scope())]}  # fmt: skip
            code = "ConsentRequired"
        description = f"{code} for state TransferFrames"
        return {"code": code, "description": description, "authorization_parameters": parameters}

    def required_scope(self) -> globus_sdk.Scope:
        """The scope a run needs that stops for consent: the flow's, through Transfer, to the facility's data."""
        data_access = globus_sdk.Scope(
            f"https://auth.globus.org/scopes/{self.settings.facility_collection_id}/data_access",
            optional=True,
        )
        transfer = globus_sdk.TransferClient.scopes.all.with_dependency(data_access)
        flow = globus_sdk.SpecificFlowClient(self.settings.flow_id, authorizer=None)
        return flow.scopes.user.with_dependency(transfer)

    def log(self, request):
        if refused := refused_token(request, FLOWS_TOKEN):
            return refused
        run = self.runs[request.url.split("?")[0].split("/")[-2]]
        query = parse_qs(urlparse(request.url).query)
        limit = int(query.get("limit", ["10"])[0])  # the service's default page
        entries = run["log"][::-1] if query.get("reverse_order") == ["True"] else run["log"]
        page = {"limit": limit, "has_next_page": len(entries) > limit, "entries": entries[:limit]}
        return 200, {}, json.dumps(page)

    def resume(self, request):
        if refused := refused_token(request, flow_token(self.settings.flow_id)):
            return refused
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
                code = "ActionTimeout" if isinstance(failure, ActionTimedOut) else "ActionFailed"
                run["log"].append(_log_entry(code, f"State {name} failed", output=result, **state_details))
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
        wait_time = step.get("WaitTime", DEFAULT_WAIT_TIME_S)
        details = self.providers[url](body, wait_time)
        return {"action_id": str(uuid.uuid4()), "status": "SUCCEEDED", "details": details}

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

    def transfer(self, body: dict, wait_time: float) -> dict:
        """Copy as the Transfer service does: with a ``sync_level``, only files the destination lacks or differ."""
        copied = 0
        for item in body["DATA"]:
            source = self.collection(body["source_endpoint"], item["source_path"])
            destination = self.collection(body["destination_endpoint"], item["destination_path"])
            if not source.exists():
                raise ActionFailed(f"Transfer: {item['source_path']} not found (FILE_NOT_FOUND)")
            if source.is_dir() != bool(item.get("recursive")):
                what = (
                    "a directory: recursive must be true"
                    if source.is_dir()
                    else "a file: recursive must be false"
                )
                raise ActionFailed(f"Transfer: {item['source_path']} is {what}")
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

    def compute(self, body: dict, wait_time: float) -> dict:
        self.compute_requests.append(body)
        if self.outcome == "fail":
            raise ActionFailed("endpoint offline")
        if body["endpoint_id"] != self.compute_service.endpoint_id:
            raise ActionFailed(f"Compute: endpoint {body['endpoint_id']} not found")
        results = []
        for task in body["tasks"]:
            try:
                output = self.compute_service.run(
                    task["function_id"],
                    task.get("args", []),
                    task.get("kwargs", {}),
                    user_endpoint_config=body.get("user_endpoint_config"),
                    resource_specification=body.get("resource_specification"),
                    timeout=wait_time,
                )
            except ComputeTaskFailed as error:  # as the provider reports a task's exception
                raise ActionFailed(f"Compute task failed: {error}") from None
            except TimeoutError:
                raise ActionTimedOut(
                    f"Compute task still running after the WaitTime of {wait_time} s"
                ) from None
            results.append({"task_id": str(uuid.uuid4()), "output": output})
        return {"result": [r["output"] for r in results], "results": results}

    def cancel(self, request):
        if refused := refused_token(request, FLOWS_TOKEN):
            return refused
        run_id = request.url.split("/")[-2]
        self.cancelled.append(run_id)
        self.runs[run_id]["status"] = "ENDED"
        return 202, {}, json.dumps({"run_id": run_id, "status": "ENDED"})


def definition_problems(definition: dict, input_schema: dict | None) -> list[str]:
    """What the Flows service's ``validate_flow`` would refuse in a flow: a state machine that does not close."""
    states = definition.get("States", {})
    problems = (
        []
        if definition.get("StartAt") in states
        else [f"StartAt {definition.get('StartAt')!r} is not a state"]
    )
    for name, state in states.items():
        if not state.get("End") and state.get("Next") not in states:
            problems.append(f"state {name}: Next {state.get('Next')!r} is not a state and End is not true")
        if state.get("Type") == "Action" and not state.get("ActionUrl"):
            problems.append(f"state {name}: an Action state needs an ActionUrl")
    if input_schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(input_schema)
        except jsonschema.SchemaError as error:
            problems.append(f"input_schema: {error.message}")
    return problems


def serve_flow_validation(http) -> None:
    """The Flows service's ``POST /flows/validate`` (``validate_flow``), with :func:`definition_problems`."""
    base = get_service_url("flows").rstrip("/")

    def validate(request):
        if refused := refused_token(request, FLOWS_TOKEN):
            return refused
        body = json.loads(request.body)
        problems = definition_problems(body.get("definition", {}), body.get("input_schema"))
        if problems:
            detail = [{"loc": ["definition"], "msg": problem, "type": "value_error"} for problem in problems]
            return 422, {}, json.dumps({"code": "UNPROCESSABLE_ENTITY", "error": {"detail": detail},
                                        "message": "; ".join(problems)})  # fmt: skip
        return 200, {}, json.dumps({"scopes": {"User": []}})

    http.add_callback("POST", f"{base}/flows/validate", callback=validate)


class LocalAuthConsents:
    """Globus Auth's consents of this app at the HTTP layer: the scope trees in ``granted`` (scope strings).

    ``AuthClient.get_consents`` of any identity answers them, as Auth
    records them (one consent per scope node, with its dependency path).
    """

    def __init__(self, http, granted: list[str] | None = None) -> None:
        base = get_service_url("auth").rstrip("/")
        self.granted = list(granted or [])
        http.add_callback("GET", re.compile(rf"{base}/v2/api/identities/[-0-9a-f]+/consents(\?.*)?$"),
                          callback=self._consents)  # fmt: skip

    def _consents(self, request):
        if refused := refused_token(request, AUTH_TOKEN):
            return refused
        identity = request.url.split("?")[0].split("/")[-2]
        consents: list[dict] = []

        def add(scope: globus_sdk.Scope, path: list[int]) -> None:
            node = len(consents) + 1
            consents.append({"id": node, "status": "approved", "allows_refresh": True,
                             "dependency_path": [*path, node], "scope_name": scope.scope_string,
                             "scope": str(uuid.uuid4()), "client": str(uuid.uuid4()),
                             "effective_identity": identity, "atomically_revocable": False,
                             "auto_approved": False, "created": "2026-01-01T00:00:00+00:00",
                             "updated": "2026-01-01T00:00:00+00:00", "last_used": "2026-01-01T00:00:00+00:00"})  # fmt: skip
            for dependency in scope.dependencies:
                add(dependency, [*path, node])

        for text in self.granted:
            add(globus_sdk.Scope.parse(text), [])
        return 200, {}, json.dumps({"consents": consents})


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
