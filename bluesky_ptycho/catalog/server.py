"""The catalog to write to: an embedded local Tiled server by default, or any Tiled URI or profile."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import platformdirs

logger = logging.getLogger(__name__)
_servers: dict[Path, object] = {}


def default_catalog_directory() -> Path:
    """Where the embedded catalog keeps its data: ``<user data dir>/bluesky-ptycho/catalog``."""
    return Path(platformdirs.user_data_dir("bluesky-ptycho")) / "catalog"


def embedded_server(directory: str | Path | None = None):
    """A persistent local Tiled server on loopback, started on first use (one per directory)."""
    from tiled.server import SimpleTiledServer

    directory = Path(directory or default_catalog_directory()).resolve()
    if directory not in _servers:
        directory.mkdir(parents=True, exist_ok=True)
        if not _servers:
            # The server's thread is not a daemon: stop it when the interpreter
            # exits, before Python waits for non-daemon threads (atexit runs
            # after that wait; concurrent.futures uses the same hook).
            threading._register_atexit(close_embedded_servers)
        _servers[directory] = SimpleTiledServer(directory)
        logger.info("embedded Tiled catalog at %s (data in %s)", _servers[directory].web_ui_link, directory)
    return _servers[directory]


def close_embedded_servers() -> None:
    """Stop every embedded server this process started."""
    while _servers:
        _, server = _servers.popitem()
        server.close()


def connect(catalog: str | None = None, directory: str | Path | None = None):
    """A Tiled client: the embedded server (``catalog`` None), a URI, or a Tiled profile name."""
    from tiled.client import from_profile, from_uri

    if catalog is None:
        return from_uri(embedded_server(directory).uri)
    if "://" in catalog:
        return from_uri(catalog)
    return from_profile(catalog)
