"""``bluesky-ptycho globus check``: is the deployment ready for a scan, before the scan?

Each check asks the service that knows (Globus Compute, Flows, Auth) and
answers one line: what is right, or what is wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import globus_sdk

from .auth import GlobusClients, GlobusLoginRequired, explain
from .flows import DEPLOYED_FUNCTIONS, example_flow_input, missing_consents
from .globus_settings import GlobusSettings


@dataclass
class Check:
    """One preflight check: its name, whether it passed, and what was found (or how to fix it)."""

    name: str
    ok: bool
    detail: str


class CheckFailed(Exception):
    """A check found something wrong; the message says what to do."""


def _endpoint_online(settings: GlobusSettings, clients: GlobusClients) -> str:
    endpoint = settings.compute_endpoint_id
    status = clients.compute.get(f"/v2/endpoints/{endpoint}/status").data
    if status.get("status") != "online":
        raise CheckFailed(
            f"endpoint {endpoint} is {status.get('status', 'unknown')}: start it at the facility "
            "(`globus-compute-endpoint start <name>` on its login node)"
        )
    return f"endpoint {endpoint} is online"


def _functions_runnable(settings: GlobusSettings, clients: GlobusClients) -> str:
    allowlist = clients.compute.get_endpoint_allowlist(settings.compute_endpoint_id).data
    found = []
    for setting, name in DEPLOYED_FUNCTIONS.items():
        function_id = getattr(settings, setting)
        if function_id is None:
            raise CheckFailed(f"{name} is not registered: run `bluesky-ptycho globus deploy`")
        try:
            clients.compute.get(f"/v2/functions/{function_id}")
        except globus_sdk.GlobusAPIError as error:
            if error.http_status == 404:
                raise CheckFailed(
                    f"{name} ({function_id}) is not registered with Globus Compute: "
                    "run `bluesky-ptycho globus deploy`"
                ) from None
            raise
        if allowlist.get("restricted") and str(function_id) not in map(str, allowlist.get("functions", [])):
            raise CheckFailed(
                f"{name} ({function_id}) is not in the endpoint's allowed_functions: add it to the "
                "endpoint's config.yaml and restart the endpoint"
            )
        found.append(f"{name} {function_id}")
    return "registered and allowed: " + ", ".join(found)


def _input_valid(settings: GlobusSettings, clients: GlobusClients) -> str:
    try:
        clients.flow.validate_run(example_flow_input(settings), label="bluesky-ptycho check")
    except globus_sdk.GlobusAPIError as error:
        if error.http_status in (400, 422):
            raise CheckFailed(
                f"the flow refuses the input this version sends ({explain(error)}): run "
                "`bluesky-ptycho globus deploy` to update the flow"
            ) from None
        raise
    return f"flow {settings.flow_id} accepts this version's input"


def _consents(settings: GlobusSettings, clients: GlobusClients, app: globus_sdk.GlobusApp) -> str:
    if isinstance(app, globus_sdk.ClientApp):
        return "a service account: no consents to give"
    needed = [str(scope) for scope in app.scope_requirements.get(str(settings.flow_id), [])]
    missing = missing_consents(clients, app, needed)
    if missing:
        raise CheckFailed(
            f"no consent yet to {', '.join(missing)}: run `bluesky-ptycho globus login --force` and consent"
        )
    return "consents given for running the flow and its collections"


def preflight(settings: GlobusSettings, app: globus_sdk.GlobusApp, clients: GlobusClients) -> list[Check]:
    """Every check, in the order a scan needs them; a failed one does not stop the others."""
    checks: list[tuple[str, Callable[[], str]]] = [
        ("compute endpoint", lambda: _endpoint_online(settings, clients)),
        ("functions", lambda: _functions_runnable(settings, clients)),
        ("flow input", lambda: _input_valid(settings, clients)),
        ("consents", lambda: _consents(settings, clients, app)),
    ]
    done = []
    for name, check in checks:
        try:
            done.append(Check(name, True, check()))
        except CheckFailed as failure:
            done.append(Check(name, False, str(failure)))
        except GlobusLoginRequired as error:
            done.append(Check(name, False, str(error)))
        except globus_sdk.GlobusAPIError as error:
            done.append(Check(name, False, explain(error)))
        except globus_sdk.NetworkError as error:
            done.append(Check(name, False, f"could not reach Globus: {error}"))
    return done
