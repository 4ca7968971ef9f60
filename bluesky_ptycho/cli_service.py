"""``bluesky-ptycho serve``: the reconstruction service on a document bus (docs/deploying.md)."""

from __future__ import annotations

import signal
from pathlib import Path

import click


@click.command("serve")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Check the configuration file and exit.")
def serve_command(config_file: Path, check: bool) -> None:
    """Reconstruct the scans published on a document bus, as CONFIG_FILE (TOML) says, until SIGTERM."""
    from .service import ConfigError, ReconstructionService, load_config
    from .service.service import log_to

    try:
        config = load_config(config_file)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if check:
        click.echo(
            f"{config_file}: bus {config.bus.kind}, runner {config.runner.kind}, "
            f"catalog {config.catalog.uri or 'embedded'}: OK"
        )
        return
    log_to(config.service.log_file, config.service.log_level)
    service = ReconstructionService(config)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(
            number, lambda received, _: service.stop(f"was stopped by {signal.Signals(received).name}")
        )
    service.run()
