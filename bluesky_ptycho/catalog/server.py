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


def default_frames_directory() -> Path:
    """Where detectors that write HDF5 files put them by default: ``<user data dir>/bluesky-ptycho/frames``.

    The embedded catalog may read external files there.
    """
    return Path(platformdirs.user_data_dir("bluesky-ptycho")) / "frames"


def embedded_server(directory: str | Path | None = None, readable_storage: list[str | Path] | None = None):
    """A persistent local Tiled server on loopback, started on first use (one per directory).

    ``readable_storage``: directories of external (e.g. HDF5 detector) files
    the catalog may read; default :func:`default_frames_directory`.
    """
    from tiled.server import SimpleTiledServer

    directory = Path(directory or default_catalog_directory()).resolve()
    if directory not in _servers:
        directory.mkdir(parents=True, exist_ok=True)
        if not _servers:
            # The server's thread is not a daemon: stop it when the interpreter
            # exits, before Python waits for non-daemon threads (atexit runs
            # after that wait; concurrent.futures uses the same hook).
            threading._register_atexit(close_embedded_servers)
        readable = [Path(p) for p in (readable_storage or [default_frames_directory()])]
        for path in readable:
            path.mkdir(parents=True, exist_ok=True)
        _servers[directory] = SimpleTiledServer(directory, readable_storage=readable)
        logger.info("embedded Tiled catalog at %s (data in %s)", _servers[directory].web_ui_link, directory)
    return _servers[directory]


def close_embedded_servers() -> None:
    """Stop every embedded server this process started."""
    while _servers:
        _, server = _servers.popitem()
        server.close()


def connect(
    catalog: str | None = None,
    directory: str | Path | None = None,
    readable_storage: list[str | Path] | None = None,
):
    """A Tiled client: the embedded server (``catalog`` None), a URI, or a Tiled profile name.

    ``directory`` and ``readable_storage`` configure the embedded server (see :func:`embedded_server`).
    """
    from tiled.client import from_profile, from_uri

    if catalog is None:
        return from_uri(embedded_server(directory, readable_storage).uri)
    if "://" in catalog:
        return from_uri(catalog)
    return from_profile(catalog)
