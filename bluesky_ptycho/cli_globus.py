"""``bluesky-ptycho globus ...``: log in, deploy the flow, run and follow reconstructions at a facility."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import click
from rich.table import Table

from .cli_options import console, make_settings, settings_options


def _globus_errors(command):
    """Turn configuration, login and service errors into one clear line (exit status 1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import globus_sdk

        from .federation.auth import GlobusLoginRequired, explain
        from .federation.globus_settings import GlobusConfigError
        from .federation.lanes import RemoteJobError

        try:
            return command(*args, **kwargs)
        except (
            GlobusConfigError,
            GlobusLoginRequired,
            PermissionError,
            RemoteJobError,
            ImportError,
        ) as error:
            raise click.ClickException(str(error)) from None
        except globus_sdk.GlobusAPIError as error:
            raise click.ClickException(explain(error)) from None
        except globus_sdk.NetworkError as error:
            raise click.ClickException(f"could not reach Globus: {error}") from None

    return wrapper


def _app_and_clients(interactive: bool = False):
    from .federation.auth import make_app, make_clients
    from .federation.globus_settings import load_globus_settings

    settings = load_globus_settings()
    app = make_app(settings, interactive=interactive)
    return settings, app, make_clients(settings, app)


@click.group("globus")
def globus_group() -> None:
    """Reconstruct at a computing facility through Globus (Auth, Transfer, Compute, Flows).

    Settings come from globus.toml in the config directory (see `globus config`)
    and BLUESKY_PTYCHO_GLOBUS_* environment variables.
    """


@globus_group.command("config")
@_globus_errors
def config_command() -> None:
    """Show the settings in use and where they come from (secrets masked)."""
    from .federation.globus_settings import deployment_file, load_globus_settings, settings_file, token_file

    settings = load_globus_settings()
    table = Table(box=None, show_header=False)
    for name, value in settings.public_dict().items():
        table.add_row(name, "[dim]not set[/dim]" if value is None else str(value))
    console.print(table)
    console.print(
        f"settings file {settings_file()}\ndeployment    {deployment_file()}\ntokens        {token_file()}"
    )


@globus_group.command("login")
@click.option("--force", is_flag=True, help="Log in again even if the stored tokens are still good.")
@click.option(
    "--run",
    "run_id",
    default=None,
    help="Log in as the paused flow run RUN_ID needs: its consents, session policy or MFA.",
)
@_globus_errors
def login_command(force: bool, run_id: str | None) -> None:
    """Log in to Globus (people: a browser login; service accounts: the client secret)."""
    from .federation.flows import authorization_parameters
    from .federation.globus_settings import token_file

    _, app, clients = _app_and_clients(interactive=True)
    if run_id is None:
        app.login(force=force)
    else:
        run = clients.flows.get_run(run_id).data
        parameters = authorization_parameters(run) if run["status"] == "INACTIVE" else None
        if parameters is None:
            raise click.ClickException(f"run {run_id} is {run['status']} and waits for no login")
        app.login(auth_params=parameters)
    console.print(f"logged in; tokens kept in {token_file()} (mode 0600)")


@globus_group.command("logout")
@_globus_errors
def logout_command() -> None:
    """Revoke and forget the stored Globus tokens."""
    _, app, _ = _app_and_clients()
    app.logout()
    console.print("logged out")


@globus_group.command("whoami")
@_globus_errors
def whoami_command() -> None:
    """Show the Globus identity the stored tokens belong to."""
    _, _, clients = _app_and_clients()
    info = clients.auth.userinfo()
    name = info.get("preferred_username") or info.get("name") or info.get("email") or "?"
    console.print(f"{name} ({info['sub']})")


@globus_group.command("deploy")
@_globus_errors
def deploy_command() -> None:
    """Register the reconstruction function and create or update the flow (only what changed)."""
    from .federation.flows import deploy
    from .federation.globus_settings import deployment_file

    settings, _, clients = _app_and_clients()
    done = deploy(clients, settings)
    function = "registered" if done.function_registered else "unchanged"
    console.print(
        f"function {done.function_id} ({function}; the flow's)\n"
        f"function {done.inline_function_id} ({function}; the Executor path's, frames inline)\n"
        f"flow     {done.flow_id} ({done.flow_action})"
    )
    console.print(f"ids kept in {deployment_file()}")
    if done.flow_action in ("created", "recreated"):
        console.print("next: `bluesky-ptycho globus login` again, to consent to running the new flow")
    elif done.flow_action == "updated":
        console.print(
            "next: `bluesky-ptycho globus login --force`: the updated flow may ask for new consents"
        )
    if settings.subscription_id is None:
        console.print(
            "[yellow]no subscription_id set: Globus deletes a flow without a subscription after 30 days "
            "(`globus deploy` then creates it again)[/yellow]"
        )


@globus_group.command("check")
@_globus_errors
def check_command() -> None:
    """Check the deployment before a scan: endpoint online, functions registered and allowed, input, consents."""
    from rich.markup import escape

    from .federation.flows import RUN_SETTINGS
    from .federation.preflight import preflight

    settings, app, clients = _app_and_clients()
    settings.require(*RUN_SETTINGS)
    checks = preflight(settings, app, clients)
    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name}: {escape(check.detail)}", soft_wrap=True)
    if not all(check.ok for check in checks):
        raise SystemExit(1)


@globus_group.command("run")
@click.argument(
    "input_file", metavar="FILE.cxi", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default FILE_recon.cxi.",
)
@settings_options
@_globus_errors
def run_command(input_file: Path, output: Path | None, **options) -> None:
    """Reconstruct one CXI file at the facility through the flow, and fetch the result."""
    from .federation import ReconstructionJob
    from .federation.flows import GlobusFlowRunner
    from .io import CXIFormatError, read_cxi, write_result

    runner = GlobusFlowRunner()  # settings and login are checked before the file is read
    try:
        data = read_cxi(input_file)
    except CXIFormatError as error:
        raise click.ClickException(str(error)) from None
    settings = make_settings(**options)
    job = ReconstructionJob(
        scan_uid=f"cli-{uuid.uuid4()}",
        geometry=data.geometry,
        settings=settings,
        frames=data.frames,
        positions=data.positions,
        iterations=settings.iterations,
        final=True,
        mask=data.mask,
    )
    with console.status(f"{len(data)} frames: flow run in progress at {runner.location}"):
        result = runner.submit(job).result()
    runner.shutdown()
    output = output or input_file.with_name(f"{input_file.stem}_recon.cxi")
    write_result(output, result)
    console.print(f"{result.iterations} iterations, cost {result.final_cost:.3e}; wrote {output}")


@globus_group.command("status")
@click.argument("run_id", required=False)
@click.option("--limit", type=int, default=10, show_default=True, help="Runs listed without RUN_ID.")
@_globus_errors
def status_command(run_id: str | None, limit: int) -> None:
    """Show one flow run, or the latest runs of the deployed flow."""
    from .federation.flows import inactive_cause, run_cause, run_link

    settings, _, clients = _app_and_clients()
    if run_id is not None:
        run = clients.flows.get_run(run_id).data
        console.print(f"{run['run_id']}  {run['status']}  {run.get('label', '')}")
        if run["status"] in ("FAILED", "ENDED"):
            console.print(run_cause(clients, run), markup=False)
        elif run["status"] == "INACTIVE":
            console.print(inactive_cause(run), markup=False)
        console.print(run_link(run_id), markup=False)
        return
    settings.require("flow_id")
    table = Table("run", "status", "label", "started", box=None)
    for index, run in enumerate(clients.flows.list_runs(filter_flow_id=settings.flow_id)):
        if index == limit:
            break
        table.add_row(run["run_id"], run["status"], run.get("label", ""), run.get("start_time", ""))
    console.print(table)


@globus_group.command("resume")
@click.argument("run_id")
@_globus_errors
def resume_command(run_id: str) -> None:
    """Resume a run of the deployed flow that stopped for a consent (log in again first)."""
    from .federation.flows import missing_consents, required_consents, run_link

    settings, app, clients = _app_and_clients()
    run = clients.flows.get_run(run_id).data
    if run["status"] != "INACTIVE":
        raise click.ClickException(f"run {run_id} is {run['status']}, not INACTIVE: nothing to resume")
    if clients.flow is None or run.get("flow_id") not in (None, str(settings.flow_id)):
        raise click.ClickException(
            f"run {run_id} is a run of flow {run.get('flow_id')}, not the deployed one"
        )
    scopes = required_consents(run)
    missing = missing_consents(clients, app, scopes)
    if missing:  # resumed now, it would stop again at once
        raise click.ClickException(
            f"run {run_id} waits for consent to {', '.join(missing)}, which your login has not given: "
            f"run `bluesky-ptycho globus login --run {run_id}`, consent, then resume it"
        )
    clients.flow.resume_run(run_id)
    if scopes:
        console.print(f"resumed; it needed consent to {', '.join(scopes)}", markup=False, soft_wrap=True)
    else:
        console.print("resumed")
    console.print(f"follow it: bluesky-ptycho globus status {run_id}  ({run_link(run_id)})", markup=False)
