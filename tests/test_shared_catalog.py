"""Every process on the machine shares one embedded catalog: the first one serves it, the others find it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bluesky_ptycho.catalog.embedded import ADDRESS_FILE, ServerAddress
from bluesky_ptycho.catalog.server import close_embedded_servers, connect, embedded_server, started_here

WRITER = """
import sys
from bluesky import RunEngine
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det
from bluesky_ptycho.catalog import connect

catalog = connect(directory=sys.argv[1])
RE = RunEngine()
RE.subscribe(TiledWriter(catalog, batch_size=1))
(uid,) = RE(count([det], 3))
print(uid, flush=True)
sys.stdin.read()
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bluesky_ptycho.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def session(tmp_path):
    """Another process (an IPython session, say) that opened the catalog first and wrote a scan to it."""
    directory = tmp_path / "catalog"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    uid = process.stdout.readline().strip()
    assert uid, "the writing process failed"
    yield directory, uid, process
    if process.poll() is None:
        process.stdin.close()
        process.wait(60)
    close_embedded_servers()


def test_a_second_process_uses_the_running_catalog(session):
    directory, uid, process = session
    address = ServerAddress.read(directory)
    assert address is not None and address.alive()
    assert (directory / ADDRESS_FILE).stat().st_mode & 0o077 == 0  # it holds the API key
    found = embedded_server(directory)
    assert found == address and not started_here(found)
    assert connect(directory=directory)[uid].metadata["start"]["uid"] == uid
    listing = cli("catalog", "ls", "--raw", "--catalog-dir", str(directory))
    assert listing.returncode == 0 and uid[:8] in listing.stdout, listing.stdout + listing.stderr

    process.stdin.close()  # the session ends: its server stops and says so
    process.wait(60)
    assert not (directory / ADDRESS_FILE).exists()
    again = embedded_server(directory)
    assert started_here(again) and again.pid != address.pid
    assert connect(directory=directory)[uid].metadata["start"]["uid"] == uid  # nothing was lost


def test_a_stale_address_is_not_trusted(tmp_path):
    directory = tmp_path / "catalog"
    directory.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ServerAddress("http://127.0.0.1:9/api/v1", 9, "http://127.0.0.1:9", dead.pid).write(directory)
    server = embedded_server(directory)
    assert started_here(server) and ServerAddress.read(directory) == server
    close_embedded_servers()
    assert not (directory / ADDRESS_FILE).exists()


def test_a_busy_server_is_not_replaced(tmp_path):
    busy = socket.create_server(("127.0.0.1", 0))  # it takes connections and never answers
    port = busy.getsockname()[1]
    try:
        address = ServerAddress(f"http://127.0.0.1:{port}/api/v1", port, "key", os.getpid())
        assert address.alive()
    finally:
        busy.close()
    assert not address.alive()  # nothing listens there now


def test_catalog_serve_serves_until_stopped(session):
    directory, uid, process = session
    already = cli("catalog", "serve", "--catalog-dir", str(directory))
    assert already.returncode == 0 and f"already served, by process {process.pid}" not in already.stdout
    assert f"by process {ServerAddress.read(directory).pid}" in already.stdout
    process.stdin.close()
    process.wait(60)

    server = subprocess.Popen(
        [sys.executable, "-m", "bluesky_ptycho.cli", "catalog", "serve", "--catalog-dir", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "serving the catalog" in server.stdout.readline()
        assert "api_key=" in server.stdout.readline()
        address = ServerAddress.read(directory)
        assert address.pid != server.pid  # the server is its child
        start = time.perf_counter()
        listing = cli("catalog", "ls", "--raw", "--catalog-dir", str(directory))
        print(f"catalog ls against the running catalog: {time.perf_counter() - start:.2f} s")
        assert uid[:8] in listing.stdout and not started_here(address)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    assert "stopped" in server.stdout.read()
    assert not (directory / ADDRESS_FILE).exists()


def test_the_embedded_catalog_takes_rows_from_writers_at_the_same_time(tmp_path):
    """A raw scan's writer and a reconstruction's append table rows at once; every row goes in once."""
    pyarrow = pytest.importorskip("pyarrow")
    from tiled.client import from_uri

    address = embedded_server(tmp_path / "catalog")
    schema = pyarrow.schema([("seq_num", pyarrow.int64()), ("time", pyarrow.float64())])
    failures = []

    def write(key: str) -> None:
        table = from_uri(address.uri).create_appendable_table(schema, key=key)
        for seq_num in range(1, 81):  # one request per event, as a live writer sends them
            try:
                table.append_partition(0, pyarrow.table({"seq_num": [seq_num], "time": [time.time()]}))
            except Exception as error:
                failures.append(repr(error))

    try:
        writers = [threading.Thread(target=write, args=(f"writer{i}",)) for i in range(3)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(120)
        assert not failures, f"{len(failures)} appends failed, first: {failures[0]}"
        root = from_uri(address.uri)
        for i in range(3):
            assert list(root[f"writer{i}"].read()["seq_num"]) == list(range(1, 81))
    finally:
        close_embedded_servers()
