"""The catalog to write to: an embedded local Tiled server by default, or any Tiled URI or profile."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs
from filelock import FileLock

from .embedded import RUNS, STARTUP_TIMEOUT_S, EmbeddedServer, ServerAddress

logger = logging.getLogger(__name__)
_children: dict[Path, EmbeddedServer] = {}  # the servers this process started


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
) -> ServerAddress:
    """The local Tiled server of the catalog in ``directory``: the one already running, or a new one.

    Every process on the machine shares one server per catalog (its database
    takes one process at a time): where another process's server answers
    (its address in ``directory / "server.json"``), this one connects to it;
    otherwise it starts one in a child process (see
    :mod:`bluesky_ptycho.catalog.embedded`), which stops when this process
    exits. ``bluesky-ptycho catalog serve`` runs one until it is stopped.
    ``readable_storage``: directories of external (e.g. HDF5 detector) files
    the catalog may read; default :func:`default_frames_directory`.
    """
    directory = Path(directory or default_catalog_directory()).resolve()
    if directory in _children:
        return _children[directory].address
    directory.mkdir(parents=True, exist_ok=True)
    # two processes opening the catalog at once must not both start a server
    with FileLock(directory / "server.lock", timeout=STARTUP_TIMEOUT_S):
        running = ServerAddress.read(directory)
        if running is not None and running.alive():
            logger.debug("embedded catalog served by process %d", running.pid)
            return running
        if not _children:
            atexit.register(close_embedded_servers)
        readable = [Path(p) for p in (readable_storage or [default_frames_directory()])]
        for path in readable:
            path.mkdir(parents=True, exist_ok=True)
        _children[directory] = EmbeddedServer(directory, readable)
    address = _children[directory].address
    logger.info("embedded Tiled catalog at %s (data in %s)", redact(address.web_ui_link), directory)
    return address


def started_here(address: ServerAddress) -> bool:
    """Whether this process started the server at ``address`` (it stops when this process exits)."""
    return any(child.address == address for child in _children.values())


def close_embedded_servers() -> None:
    """Stop every embedded server this process started."""
    while _children:
        _, server = _children.popitem()
        server.close()


def connect(
    catalog: str | None = None,
    directory: str | Path | None = None,
    readable_storage: list[str | Path] | None = None,
    api_key: str | None = None,
):
    """A Tiled client: the embedded catalog (``catalog`` None), a URI, or a Tiled profile name.

    The embedded catalog's runs are in a container with the
    ``CatalogOfBlueskyRuns`` spec, so the client is bluesky-tiled-plugins'
    ``CatalogOfBlueskyRuns``: ``catalog[-1]``, ``catalog[scan_id]``,
    ``catalog["partial uid"]``, ``catalog.v1``/``v2`` and its queries work.
    ``directory`` and ``readable_storage`` configure the embedded server (see :func:`embedded_server`).
    An API key in the URI is sent as a header, never in request URLs (which
    HTTP libraries log); better still, give it in ``TILED_API_KEY``, or as
    ``api_key`` (read from a file only its owner reads), which overrides the
    URI's or the profile's.
    """
    from tiled.client import from_profile, from_uri

    if catalog is None:
        return from_uri(embedded_server(directory, readable_storage).uri)[RUNS]
    given = {} if api_key is None else {"api_key": api_key}
    if "://" not in catalog:
        return from_profile(catalog, **given)
    uri, in_uri = _split_api_key(catalog)
    return from_uri(uri, **({"api_key": in_uri} if in_uri else {}), **given)


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
