"""The catalog to write to: an embedded local Tiled server by default, or any Tiled URI or profile."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs

from .embedded import EmbeddedServer

logger = logging.getLogger(__name__)
_servers: dict[Path, EmbeddedServer] = {}


def default_catalog_directory() -> Path:
    """Where the embedded catalog keeps its data: ``<user data dir>/bluesky-ptycho/catalog``."""
    return Path(platformdirs.user_data_dir("bluesky-ptycho")) / "catalog"


def default_frames_directory() -> Path:
    """Where detectors that write HDF5 files put them by default: ``<user data dir>/bluesky-ptycho/frames``.

    The embedded catalog may read external files there.
    """
    return Path(platformdirs.user_data_dir("bluesky-ptycho")) / "frames"


def embedded_server(
    directory: str | Path | None = None, readable_storage: list[str | Path] | None = None
) -> EmbeddedServer:
    """A persistent local Tiled server on loopback, started on first use (one per directory).

    It runs in a child process (see :mod:`bluesky_ptycho.catalog.embedded`)
    and stops when this process exits. ``readable_storage``: directories of
    external (e.g. HDF5 detector) files the catalog may read; default
    :func:`default_frames_directory`.
    """
    directory = Path(directory or default_catalog_directory()).resolve()
    if directory not in _servers:
        directory.mkdir(parents=True, exist_ok=True)
        if not _servers:
            atexit.register(close_embedded_servers)
        readable = [Path(p) for p in (readable_storage or [default_frames_directory()])]
        for path in readable:
            path.mkdir(parents=True, exist_ok=True)
        _servers[directory] = EmbeddedServer(directory, readable)
        logger.info(
            "embedded Tiled catalog at %s (data in %s)", redact(_servers[directory].web_ui_link), directory
        )
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
    An API key in the URI is sent as a header, never in request URLs (which
    HTTP libraries log); better still, give it in ``TILED_API_KEY``.
    """
    from tiled.client import from_profile, from_uri

    if catalog is None:
        catalog = embedded_server(directory, readable_storage).uri
    if "://" not in catalog:
        return from_profile(catalog)
    uri, api_key = _split_api_key(catalog)
    return from_uri(uri, api_key=api_key) if api_key else from_uri(uri)


def _split_api_key(uri: str) -> tuple[str, str | None]:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query)
    keys = [value for key, value in query if key == "api_key"]
    rest = urlencode([(key, value) for key, value in query if key != "api_key"])
    return urlunsplit(parts._replace(query=rest)), (keys[0] if keys else None)


def redact(uri: str) -> str:
    """``uri`` with any ``api_key`` query value masked, for printing and logging."""
    bare, api_key = _split_api_key(uri)
    if api_key is None:
        return uri
    return f"{bare}{'&' if urlsplit(bare).query else '?'}api_key=****"
