"""Globus Compute Executors as a long-lived runner needs them.

A ``globus_compute_sdk.Executor`` shuts itself down for good when one
submission fails (a network reset, a 413, an expired token): every later
``submit`` raises. A beamline session lasts days, so the runner makes a new
one with the same settings and function ids (:func:`revive`). Errors a task
raised at the facility all arrive as ``TaskExecutionFailed``; those of the
data, the settings or the facility's software would fail again and are told
apart from lost workers (:func:`remote_failure`).
"""

from __future__ import annotations

import re
from concurrent.futures import Executor
from typing import Any

from .lanes import NOT_RETRIED

#: Exceptions a remote task raises because of what it was given or what the facility has installed:
#: the same task would fail again, so it is not retried (a lost worker, by contrast, is).
DATA_ERRORS = frozenset(
    {cls.__name__ for cls in NOT_RETRIED}
    | {
        "VersionMismatchError",
        "RankDataError",
        "CXIFormatError",
        "FileNotFoundError",
        "NameError",
        "ImportError",
        "ModuleNotFoundError",
        "AttributeError",
        "InvalidResourceSpecification",
    }
)
_RAISED = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?::\s*(?P<message>.*))?$")


class RemoteTaskError(ValueError):
    """A remote task failed because of its data, its settings or the facility's software; not retried."""


def is_compute_executor(executor: Executor) -> bool:
    """Whether ``executor`` is a Globus Compute Executor (or a subclass, as the test stand-in is)."""
    try:
        from globus_compute_sdk import Executor as ComputeExecutor
    except ImportError:
        return False
    return isinstance(executor, ComputeExecutor)


def revive(executor: Any, function_ids: dict[Any, str]) -> Any:
    """A new Executor with the settings of ``executor`` (shut down), its functions known by their ids."""
    fresh = type(executor)(
        endpoint_id=executor.endpoint_id,
        client=executor.client,
        task_group_id=executor.task_group_id,
        resource_specification=executor.resource_specification,
        user_endpoint_config=executor.user_endpoint_config,
        label=executor.label,
        batch_size=executor.batch_size,
        amqp_port=executor.amqp_port,
        serializer=executor.serializer,
        result_serializers=executor.result_serializers,
    )
    for function, function_id in function_ids.items():
        fresh.register_function(function, function_id=function_id)
    return fresh


def remote_failure(error: BaseException) -> BaseException:
    """``error`` as the runner should treat it: a remote data error becomes :class:`RemoteTaskError`.

    A ``TaskExecutionFailed`` carries the remote traceback as text; its last
    line names the exception the task raised.
    """
    try:
        from globus_compute_sdk.errors import TaskExecutionFailed
    except ImportError:
        return error
    if not isinstance(error, TaskExecutionFailed):
        return error
    lines = [line for line in str(error.remote_data).strip().splitlines() if line.strip()]
    raised = _RAISED.match(lines[-1].strip()) if lines else None
    if raised is None or raised["name"].rsplit(".", 1)[-1] not in DATA_ERRORS:
        return error
    name, message = raised["name"].rsplit(".", 1)[-1], raised["message"] or ""
    hint = ""
    if "numpy._core" in message:
        hint = (
            "; the facility's numpy is older than the beamline's 2.x, which cannot read its arrays: "
            "install numpy>=2 in the facility's environment"
        )
    elif name == "NameError":
        hint = "; the registered function is not self-contained: run `bluesky-ptycho globus deploy` again"
    return RemoteTaskError(f"the task failed at the facility with {name}: {message}{hint}")


def deployed_function_ids(settings) -> dict[str, str]:
    """The function ids ``globus deploy`` registered, by function name, for :class:`~.executor.ExecutorRunner`."""
    from .flows import DEPLOYED_FUNCTIONS

    return {
        name: str(getattr(settings, setting))
        for setting, name in DEPLOYED_FUNCTIONS.items()
        if getattr(settings, setting) is not None
    }


def compute_executor(settings=None, **options: Any):
    """A ``globus_compute_sdk.Executor`` on the settings' endpoint that uses this package's Globus login.

    Without it an Executor logs in on its own (a second browser login, a
    second token file). ``options`` go to the Executor (e.g. ``amqp_port=443``
    where a firewall blocks AMQPS on 5671). Pass it to
    :class:`~.executor.ExecutorRunner` with ``function_ids=deployed_function_ids(settings)``.
    """
    from globus_compute_sdk import Client, Executor

    from .auth import make_app
    from .globus_settings import load_globus_settings

    settings = settings or load_globus_settings()
    settings.require("compute_endpoint_id")
    return Executor(
        endpoint_id=settings.compute_endpoint_id,
        client=Client(app=make_app(settings)),
        user_endpoint_config=settings.compute_user_endpoint_config or None,
        resource_specification=settings.compute_resource_specification or None,
        **options,
    )
