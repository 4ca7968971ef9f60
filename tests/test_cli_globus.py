"""`bluesky-ptycho globus ...` with real Globus apps and token files; the services simulated at the HTTP layer."""

from __future__ import annotations

import json
import os
import uuid

import globus_sdk
import pytest
from click.testing import CliRunner
from globus_sdk.config import get_service_url
from globus_sdk.testing import load_response
from helpers import store_tokens

from bluesky_ptycho.cli import main
from bluesky_ptycho.federation.auth import make_app
from bluesky_ptycho.federation.globus_settings import load_globus_settings, token_file
from bluesky_ptycho.federation.testing import serve_flow_validation

SECRET = "s3cr3t-client-value-never-shown"


@pytest.fixture
def globus_home(tmp_path, monkeypatch):
    settings_file = tmp_path / "config" / "globus.toml"
    settings_file.parent.mkdir()
    flow_id = uuid.uuid4()
    settings_file.write_text(f'client_id = "{uuid.uuid4()}"\nflow_id = "{flow_id}"\n')
    monkeypatch.setenv("BLUESKY_PTYCHO_GLOBUS_SETTINGS", str(settings_file))
    monkeypatch.delenv("BLUESKY_PTYCHO_GLOBUS_CLIENT_SECRET", raising=False)
    return settings_file


def globus(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["globus", *args], env=env, catch_exceptions=False)


def test_token_file_is_private_and_a_readable_one_is_refused(globus_home):
    store_tokens(3600)
    assert oct(os.stat(token_file()).st_mode & 0o777) == "0o600"
    os.chmod(token_file(), 0o644)
    result = globus("whoami")
    assert result.exit_code == 1
    assert "readable by others (mode 0644)" in result.output and f"chmod 600 {token_file()}" in result.output


def test_status_of_a_run_with_stored_tokens(globus_home, http):
    store_tokens(3600)
    run = load_response(globus_sdk.FlowsClient.get_run, requests_mock=http)
    result = globus("status", run.metadata["run_id"])
    assert result.exit_code == 0, result.output
    assert run.metadata["run_id"] in result.output and run.responses[0].json["status"] in result.output
    assert http.calls[-1].request.headers["Authorization"] == "Bearer access-flows.globus.org"


def test_expired_tokens_ask_for_a_login_instead_of_hanging(globus_home, http):
    store_tokens(-60, refresh=False)
    result = globus("status", str(uuid.uuid4()))
    assert result.exit_code == 1
    assert "run `bluesky-ptycho globus login`" in result.output
    assert not http.calls  # nothing was sent with an expired token


def test_a_rejected_token_gives_an_actionable_message(globus_home, http):
    store_tokens(3600)
    run_id = str(uuid.uuid4())
    http.add(
        "GET",
        f"{get_service_url('flows')}runs/{run_id}",
        status=401,
        json={
            "code": "AUTHENTICATION_ERROR",
            "error": {"code": "AUTHENTICATION_ERROR", "detail": "bad token"},
        },
    )
    # the SDK then tries its refresh token, which was revoked too
    http.add("POST", f"{get_service_url('auth')}v2/oauth2/token", status=400, json={"error": "invalid_grant"})
    result = globus("status", run_id)
    assert result.exit_code == 1 and "tokens expired or were revoked" in result.output


def test_missing_settings_are_named_with_how_to_set_them(globus_home):
    store_tokens(3600)
    result = globus("run", str(globus_home))  # any existing file: settings are checked first
    assert result.exit_code == 1
    assert (
        "compute_endpoint_id" in result.output
        and "BLUESKY_PTYCHO_GLOBUS_COMPUTE_ENDPOINT_ID" in result.output
    )


def test_the_client_secret_comes_from_the_environment_and_is_never_shown(globus_home, http):
    result = globus("config", env={"BLUESKY_PTYCHO_GLOBUS_CLIENT_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    assert "********" in result.output and SECRET not in result.output
    settings = load_globus_settings(client_secret=SECRET)
    assert isinstance(make_app(settings), globus_sdk.ClientApp)
    assert SECRET not in repr(settings) and SECRET not in json.dumps(settings.public_dict())

    globus_home.write_text(globus_home.read_text() + f'client_secret = "{SECRET}"\n')
    result = globus("config")
    assert result.exit_code == 1 and "secrets do not belong in files" in result.output
    assert SECRET not in result.output


def test_deploy_through_the_command(globus_home, http):
    load_response(globus_sdk.ComputeClientV3.register_function, requests_mock=http)
    serve_flow_validation(http)
    created = load_response(globus_sdk.FlowsClient.create_flow, requests_mock=http)
    globus_home.write_text(f'client_id = "{uuid.uuid4()}"\n')  # not deployed yet
    store_tokens(3600)
    result = globus("deploy")
    assert result.exit_code == 0, result.output
    assert f"flow     {created.json['id']} (created)" in result.output
    assert "`bluesky-ptycho globus login` again, to consent to running the new flow" in result.output
    assert "no subscription_id set" in result.output
    flows = get_service_url("flows").rstrip("/")
    http.add("GET", f"{flows}/flows/{created.json['id']}", json={"id": created.json["id"]})
    again = globus("deploy")
    assert "(unchanged)" in again.output and "function" in again.output


def test_a_login_made_before_deploy_asks_to_log_in_again_for_the_new_flow(globus_home, http):
    from bluesky_ptycho.federation.auth import GlobusLoginRequired, make_clients

    flow_line = next(line for line in globus_home.read_text().splitlines() if line.startswith("flow_id"))
    globus_home.write_text(globus_home.read_text().replace(flow_line + "\n", ""))
    store_tokens(3600)  # `globus login` as the docs' first steps did, before the flow existed
    globus_home.write_text(globus_home.read_text() + flow_line + "\n")  # then `globus deploy`
    settings = load_globus_settings()
    clients = make_clients(settings, make_app(settings))
    with pytest.raises(
        GlobusLoginRequired, match=r"run `bluesky-ptycho globus login` again to consent to the new flow"
    ):
        clients.flow.run_flow({})
    assert not http.calls  # nothing was sent without the flow's token


def test_a_flow_that_needs_a_new_consent_says_to_log_in_again(globus_home, http):
    """After `deploy` updated the flow with new action providers, its runs are refused 403 MISSING_SCOPE."""
    store_tokens(3600)
    run_id = str(uuid.uuid4())
    body = {
        "code": "MISSING_SCOPE",
        "error": {"code": "MISSING_SCOPE", "detail": "This action is not allowed"},
    }
    http.add("GET", f"{get_service_url('flows')}runs/{run_id}", status=403, json=body)
    result = globus("status", run_id)
    assert result.exit_code == 1 and "`bluesky-ptycho globus login --force`" in result.output


def test_the_compute_executor_uses_this_login(globus_home, http, compute):
    """`compute_executor` gives the SDK's Executor our app: its requests carry our stored Compute token."""
    from bluesky_ptycho.federation.compute import compute_executor
    from bluesky_ptycho.federation.globus_settings import load_globus_settings

    store_tokens(3600)
    http.add(
        "GET", f"{get_service_url('compute')}v2/version", json={"api": "1.0.0", "min_sdk_version": "1.0.0"}
    )
    settings = load_globus_settings(compute_endpoint_id=compute.endpoint_id)
    executor = compute_executor(settings, batch_size=1)
    try:
        assert executor.client.get_endpoint_status(compute.endpoint_id)["status"] == "online"
    finally:
        executor.shutdown()


def test_the_token_file_is_shared_safely_by_the_runners_threads(globus_home):
    """One app, one thread per scan in flight: tokens read and stored at once, none lost, nothing raised."""
    from concurrent.futures import ThreadPoolExecutor

    from globus_sdk.token_storage import TokenStorageData

    store_tokens(3600)
    app = make_app(load_globus_settings())
    storage = app.token_storage
    identity = next(iter(storage.get_token_data_by_resource_server().values())).identity_id

    def refresh(index: int) -> str:
        server = f"server-{index % 4}"
        data = TokenStorageData(server, identity, "scope", f"access-{index}", "refresh", 2**40, "Bearer")
        storage.store_token_data_by_resource_server({server: data})
        return storage.get_token_data(server).access_token

    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(refresh, range(200)))
    assert all(token.startswith("access-") for token in tokens)
    assert {f"server-{i}" for i in range(4)} <= set(storage.get_token_data_by_resource_server())
