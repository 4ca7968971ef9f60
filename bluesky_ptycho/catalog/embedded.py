"""The embedded catalog: a Tiled server on loopback, in a child process of its own.

The server does not share the RunEngine's interpreter (its request handling
would compete for the GIL, and its memory would grow with the process).
The child prints one line of JSON (uri, port, web UI link) when it listens,
and stops when its standard input closes: when the parent closes it, or
exits, or dies.

The child runs :func:`main` with the catalog directory and readable storage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STARTUP_TIMEOUT_S = 120
CHILD = "import sys; from bluesky_ptycho.catalog.embedded import main; main(sys.argv[1:])"


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
        started = json.loads(line)
        self.uri: str = started["uri"]
        self.port: int = started["port"]
        self.web_ui_link: str = started["web_ui_link"]

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


def main(arguments: list[str]) -> None:
    """Serve ``arguments[0]`` (readable storage: the rest) until standard input closes."""
    from tiled.server import SimpleTiledServer

    directory, *readable = arguments
    server = SimpleTiledServer(directory, readable_storage=readable or None)
    print(json.dumps({"uri": server.uri, "port": server.port, "web_ui_link": server.web_ui_link}), flush=True)
    sys.stdin.buffer.read()  # returns at end of file: the parent is gone or wants the server stopped
    server.close()
