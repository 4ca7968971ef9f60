"""The embedded catalog: a Tiled server on loopback, in a child process of its own, shared by every process.

The server does not share the RunEngine's interpreter (its request handling
would compete for the GIL, and its memory would grow with the process).
The child prints one line of JSON (uri, port, web UI link) when it listens,
and stops when its standard input closes: when the parent closes it, or
exits, or dies.

One catalog directory has one server: its database takes one process at a
time. While it listens, its address (with its API key) is in
``<directory>/server.json``, readable only by its owner; every other process
that opens the catalog (a second IPython, the CLI, a notebook) finds it there
and connects to that server instead of starting its own.

The child runs :func:`main` with the catalog directory and readable storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 120
ALIVE_TIMEOUT_S = 2.0
ADDRESS_FILE = "server.json"
# the runs live in this container, made as production Tiled deployments of Bluesky
# make theirs, so that bluesky-tiled-plugins' and databroker's clients serve it
RUNS = "runs"
RUNS_SPEC = ("CatalogOfBlueskyRuns", "3.0")  # 3.x: runs in SQL, searched by SQL queries
CHILD = "import sys; from bluesky_ptycho.catalog.embedded import main; main(sys.argv[1:])"


@dataclass(frozen=True)
class ServerAddress:
    """Where a catalog's server listens: what ``<directory>/server.json`` holds.

    Attributes
    ----------
    uri
        The Tiled API URI, with the server's API key.
    port
        The loopback port.
    web_ui_link
        The web interface, with the API key.
    pid
        The server's process.
    """

    uri: str
    port: int
    web_ui_link: str
    pid: int

    @classmethod
    def read(cls, directory: Path) -> ServerAddress | None:
        """The address recorded in ``directory``, or None where there is none (or it is unreadable)."""
        try:
            return cls(**json.loads((directory / ADDRESS_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, directory: Path) -> None:
        """Record this address in ``directory``, readable by its owner only (it holds the API key)."""
        part = directory / f".{ADDRESS_FILE}.{self.pid}"
        descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(asdict(self), file)
        os.replace(part, directory / ADDRESS_FILE)

    def forget(self, directory: Path) -> None:
        """Remove the recorded address if it is still this one."""
        if ServerAddress.read(directory) == self:
            (directory / ADDRESS_FILE).unlink(missing_ok=True)

    def alive(self) -> bool:
        """Whether a server answers at this address (a stale file names a dead one)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process reuses the number
            return False
        try:
            reply = httpx.get(
                f"http://127.0.0.1:{self.port}/healthz", timeout=ALIVE_TIMEOUT_S, trust_env=False
            )
        except httpx.TimeoutException:  # busy: a second server started on its files would corrupt them
            return True
        except httpx.HTTPError:
            return False
        return reply.status_code == 200


class EmbeddedServer:
    """A Tiled server in a child process, storing in ``directory``.

    Parameters
    ----------
    directory
        The catalog's data (SQLite database and array files); the server's
        log goes to ``directory / "server.log"``.
    readable_storage
        Directories of external files (e.g. HDF5 frames) the catalog may read.

    Raises
    ------
    RuntimeError
        If the server does not start (its log is named).
    """

    def __init__(self, directory: Path, readable_storage: list[Path]) -> None:
        self.directory = Path(directory)
        self.log_path = self.directory / "server.log"
        arguments = [sys.executable, "-c", CHILD, str(self.directory), *map(str, readable_storage)]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                arguments, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(STARTUP_TIMEOUT_S)
            raise RuntimeError(
                f"the embedded Tiled server did not start (exit code {self._process.returncode}); see {self.log_path}"
            )
        self.address = ServerAddress(**json.loads(line))
        self.uri, self.port, self.web_ui_link = self.address.uri, self.address.port, self.address.web_ui_link

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self._process.pid

    def close(self, timeout: float = 30) -> None:
        """Stop the server (it finishes its requests and closes its database)."""
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process.stdout.close()


def ensure_runs_container(uri: str) -> None:
    """Create the catalog of runs (:data:`RUNS`) under the root at ``uri`` if it is not there yet."""
    from tiled.client import from_uri
    from tiled.structures.core import Spec

    root = from_uri(uri)
    if RUNS not in root:
        root.create_container(RUNS, specs=[Spec(*RUNS_SPEC)])


def main(arguments: list[str]) -> None:
    """Serve ``arguments[0]`` (readable storage: the rest) until standard input closes."""
    from tiled.server import SimpleTiledServer

    from .table_storage import serialize_duckdb_connections

    serialize_duckdb_connections()
    directory, *readable = arguments
    server = SimpleTiledServer(directory, readable_storage=readable or None)
    ensure_runs_container(server.uri)
    address = ServerAddress(server.uri, server.port, server.web_ui_link, os.getpid())
    address.write(Path(directory))
    print(json.dumps(asdict(address)), flush=True)
    try:
        sys.stdin.buffer.read()  # returns at end of file: the parent is gone or wants the server stopped
    finally:
        address.forget(Path(directory))
        server.close()
