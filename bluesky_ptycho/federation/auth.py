"""Globus Auth: a ``UserApp`` for people, a ``ClientApp`` for beamline service accounts.

Tokens live in one SQLite file (created 0600 by globus-sdk; refused when
group or others can read it), which the runner's threads share safely. A
process that runs unattended never starts an interactive login: missing or
expired tokens raise :class:`GlobusLoginRequired` saying which command to run.
"""

from __future__ import annotations

import functools
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import globus_sdk
from globus_sdk import ClientApp, GlobusApp, GlobusAppConfig, UserApp
from globus_sdk.token_storage import SQLiteTokenStorage, TokenValidationError

from .globus_settings import GlobusSettings, token_file

APP_NAME = "bluesky-ptycho"
LOGIN_HINT = "run `bluesky-ptycho globus login`"


class GlobusLoginRequired(RuntimeError):
    """No usable Globus tokens; the message says what to run."""


def check_token_file(path: Path) -> None:
    """Refuse a token file that group or others may read.

    Raises
    ------
    PermissionError
        Naming the file, its mode, and the ``chmod`` that fixes it.
    """
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"{path} holds Globus tokens but is readable by others (mode {mode:04o}); "
                f"run `chmod 600 {path}`, or delete it and {LOGIN_HINT} again"
            )


class SharedTokenStorage(SQLiteTokenStorage):
    """globus-sdk's SQLite token storage, one connection shared by threads, one transaction at a time.

    The runner's threads (one per scan in flight) read and refresh tokens
    at once; a JSON file rewritten by two threads, or one SQLite connection
    entering two transactions, loses tokens or raises.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        super().__init__(path, connect_params={"check_same_thread": False})

    def store_token_data_by_resource_server(self, token_data_by_resource_server) -> None:
        with self._lock:
            super().store_token_data_by_resource_server(token_data_by_resource_server)

    def get_token_data_by_resource_server(self):
        with self._lock:
            return super().get_token_data_by_resource_server()

    def remove_token_data(self, resource_server: str) -> bool:
        with self._lock:
            return super().remove_token_data(resource_server)


def token_storage(path: Path | None = None) -> SharedTokenStorage:
    """The token file (default :func:`token_file`), created private by globus-sdk, refused when others may read it."""
    path = token_file() if path is None else path
    check_token_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SharedTokenStorage(path)


def _login_required(app: GlobusApp, error: TokenValidationError, *, flow_id: UUID | None = None) -> None:
    if flow_id is not None and getattr(error, "resource_server", None) == str(flow_id):
        # a login made before `globus deploy` created the flow cannot have consented to running it
        raise GlobusLoginRequired(
            f"no consent yet to run the flow {flow_id} (deployed after your last login): "
            "run `bluesky-ptycho globus login` again to consent to the new flow"
        ) from None
    raise GlobusLoginRequired(f"Globus login needed ({error}); {LOGIN_HINT}") from None


def make_app(settings: GlobusSettings, *, interactive: bool = False) -> GlobusApp:
    """The Globus app for ``settings``: a ``ClientApp`` when a client secret is set, else a ``UserApp``.

    Parameters
    ----------
    interactive
        True only for ``globus login``: missing tokens start the login flow.
        Otherwise they raise :class:`GlobusLoginRequired`.
    """
    settings.require("client_id")
    config = GlobusAppConfig(
        token_storage=token_storage(),
        request_refresh_tokens=True,
        token_validation_error_handler=None
        if interactive
        else functools.partial(_login_required, flow_id=settings.flow_id),
    )
    if settings.client_secret is not None:
        return ClientApp(
            APP_NAME,
            client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
            config=config,
        )
    return UserApp(APP_NAME, client_id=settings.client_id, config=config)


@dataclass
class GlobusClients:
    """The service clients a flow runner and ``globus deploy`` need, sharing one app (and its scopes)."""

    flows: globus_sdk.FlowsClient
    compute: globus_sdk.ComputeClientV3
    flow: globus_sdk.SpecificFlowClient | None = None
    auth: globus_sdk.AuthClient | None = None


def make_clients(settings: GlobusSettings, app: GlobusApp) -> GlobusClients:
    """Clients for Flows, Compute, Auth and (once deployed) the flow itself, with the scopes they need.

    All are made before the login, so that it asks for every scope at once
    (a client made later adds scopes the stored tokens lack: Auth's profile
    and email, for ``whoami`` and the consent check of ``resume``).

    The flow's scope carries Transfer's ``data_access`` for the collections
    marked as mapped, so a run never stops for consent.
    """
    flow = None
    if settings.flow_id is not None:
        flow = globus_sdk.SpecificFlowClient(settings.flow_id, app=app)
        mapped = [
            collection
            for collection, is_mapped in (
                (settings.beamline_collection_id, settings.beamline_collection_mapped),
                (settings.facility_collection_id, settings.facility_collection_mapped),
            )
            if is_mapped and collection is not None
        ]
        if mapped:
            flow.add_app_transfer_data_access_scope(mapped)
    return GlobusClients(
        flows=globus_sdk.FlowsClient(app=app),
        compute=globus_sdk.ComputeClientV3(app=app),
        flow=flow,
        auth=globus_sdk.AuthClient(app=app),
    )


def explain(error: globus_sdk.GlobusAPIError) -> str:
    """A message for a Globus service error that says what to do about it."""
    body = error.raw_json if isinstance(error.raw_json, dict) else {}
    code = error.code if error.code not in (None, "Error") else body.get("error")
    what = f"{error.http_status} {code}: {error.message or error.text[:300]}"
    if error.http_status == 401 or code == "invalid_grant":
        return f"Globus rejected the login ({what}); the tokens expired or were revoked: {LOGIN_HINT}"
    if code == "MISSING_SCOPE":
        return (
            f"Globus refused the request ({what}): the login lacks a consent the flow now needs (after "
            "`globus deploy` updated the flow, its action providers may ask for new ones): run "
            "`bluesky-ptycho globus login --force`"
        )
    if error.http_status == 403:
        return f"Globus refused access ({what}); check that this identity may use the flow and collections"
    return f"Globus error {what}"
