"""Shared fixtures: simulated datasets and the array modules to test on."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import NANOPROBE

from bluesky_ptycho.catalog.table_storage import serialize_duckdb_connections
from bluesky_ptycho.service.testing import free_port
from bluesky_ptycho.solver import ProbeDrift, StageErrors, simulate
from bluesky_ptycho.solver.backend import FFTW_INSTALLED, STRICT_DEVICE, gpu_available
from bluesky_ptycho.solver.simulate import aperture_probe, realistic

serialize_duckdb_connections()  # the catalog servers started in this process, as the embedded one

DEVICES = [
    "cpu",
    STRICT_DEVICE,
    pytest.param("gpu", marks=pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")),
]


@pytest.fixture(scope="session")
def drifting():
    """A weak-phase object under a beam whose power wanders by up to 50 % through the scan (160 frames of 32²)."""
    return simulate(
        n_frames=160,
        frame_size=32,
        photons=1e6,
        seed=4,
        object_kind="weak_phase",
        probe_drift=ProbeDrift(intensity=0.5),
    )


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every test that takes ``device`` runs on NumPy, on the strict (CuPy-like) module, and on CuPy where a GPU is present."""
    return request.param


@pytest.fixture(
    params=[
        "scipy",
        pytest.param("fftw", marks=pytest.mark.skipif(not FFTW_INSTALLED, reason="needs pyFFTW")),
    ]
)
def fft_library(request) -> str:
    """Each CPU FFT library: scipy.fft always, FFTW where pyFFTW is installed."""
    return request.param


@pytest.fixture
def xp(device):
    """The array module of ``device``."""
    from bluesky_ptycho.solver.backend import module_for_device

    return module_for_device(device)


@pytest.fixture(scope="session")
def clean_sim():
    """200 frames of 64 x 64, 70 % overlap, noise-free."""
    return simulate(n_frames=200, frame_size=64, overlap=0.7, photons=None, seed=1)


@pytest.fixture(scope="session")
def noisy_sim():
    """200 frames of 64 x 64, 70 % overlap, 1e6 photons per frame with Poisson noise."""
    return simulate(n_frames=200, frame_size=64, overlap=0.7, photons=1e6, seed=2)


@pytest.fixture(scope="session")
def half_a_step_off():
    """Issue 26's case: a porous sample, 128² frames defocused 1 mm, positions recorded half a scan step rms off."""
    return realistic(
        -1e-3,
        photons=1e5,
        seed=11,
        object_kind="porous",
        stage=StageErrors(random=0.5),
        **NANOPROBE,
    )


@pytest.fixture(scope="session")
def wrong_probe() -> np.ndarray:
    """A reasonable but wrong starting probe: a flat-phase aperture 15 % too wide."""
    return aperture_probe((64, 64), 64 / 3 * 1.15, curvature=0.0)


def _start_postgresql(directory: Path) -> str:
    """A throw-away PostgreSQL cluster on loopback; returns its DSN."""
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(directory, "postgres")
    data = directory / "data"
    subprocess.run(
        [*run_as, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*run_as, "pg_ctl", "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*run_as, "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tiled"], check=True
    )
    return f"postgresql://postgres@127.0.0.1:{port}/tiled"


@pytest.fixture(scope="session")
def postgresql():
    """A PostgreSQL server started for the tests (skipped when PostgreSQL is not installed)."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL is not installed (Debian: apt install postgresql; initdb and pg_ctl on PATH)")
    # not under pytest's temporary directory: the postgres user must be able to reach it
    directory = Path(tempfile.mkdtemp(prefix="ptycho-postgresql-"))
    dsn = _start_postgresql(directory)
    yield dsn
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*run_as, "pg_ctl", "-D", str(directory / "data"), "-m", "fast", "stop"], capture_output=True
    )
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def tiled_server_factory(request, tmp_path):
    """Makes real Tiled servers with the catalog in SQLite (embedded) or PostgreSQL (production-like)."""
    dsn = request.getfixturevalue("postgresql") if request.param == "postgresql" else None
    servers = []

    def make(directory=None, readable_storage=None):
        from helpers import TiledTestServer

        directory = directory or tmp_path / f"catalog{len(servers)}"
        if dsn is not None:  # one database per server
            name = f"tiled{uuid.uuid4().hex[:8]}"
            subprocess.run(["psql", dsn, "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
            server = TiledTestServer(directory, dsn.rsplit("/", 1)[0] + f"/{name}", readable_storage)
        else:
            server = TiledTestServer(directory, None, readable_storage)
        servers.append(server)
        return server

    yield make
    _close_each(servers, lambda server: server.stop())


@pytest.fixture
def simple_tiled_server(tmp_path):
    """Makes Tiled's embedded servers (SQLite, loopback), each closed after the test, passed or failed.

    Its server thread is not a daemon: one left running keeps pytest from exiting.
    """
    from tiled.server import SimpleTiledServer

    servers = []

    def make(directory=None, **kwargs):
        servers.append(SimpleTiledServer(directory or tmp_path / f"catalog{len(servers)}", **kwargs))
        return servers[-1]

    yield make
    _close_each(servers, lambda server: server.close())


def _close_each(servers: list, close) -> None:
    """Close every server a factory made, whatever state its test left it in."""
    for server in servers:
        with contextlib.suppress(Exception):
            close(server)


@pytest.fixture(scope="session")
def compute_endpoint(tmp_path_factory):
    """A Globus Compute endpoint on this machine: the SDK's serialisation and a real ProcessPoolEngine."""
    pytest.importorskip("globus_compute_endpoint")
    from bluesky_ptycho.federation.testing import LocalComputeEndpoint

    with LocalComputeEndpoint(tmp_path_factory.mktemp("compute-endpoint")) as endpoint:
        yield endpoint


@pytest.fixture
def http():
    """The Globus web services' HTTP layer, for the stand-ins to answer (``responses``)."""
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def compute(http, compute_endpoint):
    """The Compute web service in front of the local endpoint: it runs the code registered with it."""
    from bluesky_ptycho.federation.testing import LocalComputeService

    return LocalComputeService(http, compute_endpoint)
