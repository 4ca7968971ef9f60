"""Real document buses and a real ``bluesky-ptycho serve`` process, for tests and benchmarks."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bluesky_ptycho.catalog import reconstructions_of

SCRIPTS = Path(sys.executable).parent


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


def listening(port: int) -> bool:
    """Whether something accepts connections on loopback ``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ZmqProxy:
    """A real ``bluesky-0MQ-proxy`` on two fixed loopback ports, which can be stopped and started again."""

    def __init__(self) -> None:
        self.in_port, self.out_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> ZmqProxy:
        self.process = subprocess.Popen(
            [
                str(SCRIPTS / "bluesky-0MQ-proxy"),
                f"--in-address={self.in_port}",
                f"--out-address={self.out_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: listening(self.out_port), 30, "the 0MQ proxy listens")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class Service:
    """``bluesky-ptycho serve CONFIG`` in a process of its own, and its log."""

    def __init__(self, config_text: str, directory: Path) -> None:
        self.config = directory / "serve.toml"
        self.config.write_text(config_text)
        self.log = directory / "serve.log"
        self.process = subprocess.Popen(
            [str(SCRIPTS / "bluesky-ptycho"), "serve", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60, count: int = 1) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited ({self.process.returncode}):\n{self.output()}")
            return self.log_text().count(text) >= count

        wait_until(seen, timeout, f"{text!r} in the service's log:\n{self.log_text()}")

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self) -> str:
        return (self.process.stdout.read() if self.process.poll() is not None else "") + self.log_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def close_publisher(publisher) -> None:
    """Close a bluesky 0MQ ``Publisher`` at once: its own ``close`` waits forever to deliver to a stopped proxy."""
    publisher._socket.close(linger=0)
    publisher._context.term()


def service_config(tmp_path: Path, bus: str, process: bool = False, **reconstruction: str) -> str:
    """A configuration file's text: ``bus`` (the [bus] table's lines), the embedded catalog in ``tmp_path``.

    The reconstructions run in a thread of the service, or with ``process`` in its worker process;
    ``reconstruction`` overrides the [reconstruction] table's (short) values, as TOML text.
    """
    recon = {
        "preview_every": "20",
        "preview_iterations": "5",
        "final": '{algorithm = "rpie", probe_modes = 1, iterations = 20}',
        **reconstruction,
    }
    return "\n".join(
        [
            "[bus]",
            bus,
            "[catalog]",
            f'directory = "{tmp_path / "catalog"}"',
            f'spool_directory = "{tmp_path / "spool"}"',
            "[runner]",
            'kind = "local"',
            f"process = {str(process).lower()}",
            "[reconstruction]",
            *(f"{key} = {value}" for key, value in recon.items()),
            "[service]",
            f'log_file = "{tmp_path / "serve.log"}"',
            "stop_grace_s = 5",
        ]
    )


def recorded(catalog, raw_uid: str, timeout: float = 120) -> dict:
    """The stop document of the reconstruction of ``raw_uid``, once the catalog has it."""

    def stop():
        runs = [run for run in reconstructions_of(catalog, raw_uid) if run.metadata.get("stop")]
        return runs[-1].metadata["stop"] if runs else None

    return wait_until(stop, timeout, f"a reconstruction of {raw_uid} in the catalog", interval=0.5)
