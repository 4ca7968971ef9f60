"""Scans from Bluesky Queue Server: a real RE Manager (with a real redis-server) runs the example profile.

Two deployments: the callback subscribed inside the RE Manager's worker, and
the worker publishing to a 0MQ proxy with ``bluesky-ptycho serve`` reading it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bluesky_ptycho.catalog import connect
from bluesky_ptycho.service.testing import (
    SCRIPTS,
    Service,
    ZmqProxy,
    free_port,
    listening,
    recorded,
    service_config,
    wait_until,
)

pytest.importorskip("bluesky_queueserver_api")
PROFILE = Path(__file__).resolve().parents[1] / "profile_collection" / "startup"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A throw-away redis-server on loopback (Debian: apt install redis-server)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
    )
    wait_until(lambda: listening(port), 30, "redis-server listens")
    yield f"localhost:{port}"
    process.kill()
    process.wait(10)


@pytest.fixture
def re_manager(tmp_path, redis_server):
    """Starts ``start-re-manager`` on a copy of the example profile; yields a function that does it."""
    managers = []

    def start(**environment: str):
        from bluesky_queueserver_api.zmq import REManagerAPI

        startup = tmp_path / "startup"
        shutil.copytree(PROFILE, startup)
        control, info = free_port(), free_port()
        env = {
            **os.environ,
            "BLUESKY_PTYCHO_CATALOG_DIR": str(tmp_path / "catalog"),
            "BLUESKY_PTYCHO_FRAMES_DIR": str(tmp_path / "frames"),
            "BLUESKY_PTYCHO_SPOOL_DIR": str(tmp_path / "spool"),
            "BLUESKY_PTYCHO_MD_DIR": str(tmp_path / "md"),
            "MPLBACKEND": "Agg",
            **environment,
        }
        log = open(tmp_path / "re-manager.log", "w")
        process = subprocess.Popen(
            [
                str(SCRIPTS / "start-re-manager"),
                f"--startup-dir={startup}",
                f"--redis-addr={redis_server}",
                f"--redis-name-prefix=qs_{control}",
                f"--zmq-control-addr=tcp://127.0.0.1:{control}",
                f"--zmq-info-addr=tcp://127.0.0.1:{info}",
                "--zmq-publish-console=ON",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        manager = REManagerAPI(
            zmq_control_addr=f"tcp://127.0.0.1:{control}",
            zmq_info_addr=f"tcp://127.0.0.1:{info}",
            timeout_recv=10,
        )
        managers.append((process, manager, log))
        wait_until(lambda: _answers(manager), 60, "the RE Manager answers")
        manager.environment_open()
        manager.wait_for_idle(timeout=180)
        status = manager.status()
        assert status["worker_environment_exists"], (tmp_path / "re-manager.log").read_text()
        return manager

    yield start
    for process, manager, log in managers:
        try:
            manager.environment_close()
            manager.wait_for_idle(timeout=60)
            manager.close()
        except Exception:
            pass
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _answers(manager) -> bool:
    try:
        manager.status()
        return True
    except Exception:
        return False


def run_plan(manager, **parameters) -> str:
    """Queue the profile's spiral scan, run the queue, and return the raw scan's uid."""
    from bluesky_queueserver_api import BPlan

    manager.item_add(BPlan("fermat_spiral_ptycho_scan", "det", "stage", **parameters))
    manager.queue_start()
    manager.wait_for_idle(timeout=300)
    (item,) = manager.history_get()["items"][-1:]
    assert item["result"]["exit_status"] == "completed", item["result"]
    (uid,) = item["result"]["run_uids"]
    return uid


def test_the_profile_runs_in_the_re_manager_and_reconstructs_in_its_worker(tmp_path, re_manager):
    catalog = connect(None, tmp_path / "catalog")  # served by this process; the worker finds it
    manager = re_manager()
    allowed = manager.plans_allowed()["plans_allowed"]
    spiral = allowed["fermat_spiral_ptycho_scan"]
    assert [p["name"] for p in spiral["parameters"]][:3] == ["detector", "stage", "n_points"]
    assert "raster_ptycho_scan" in allowed and "count" not in allowed  # the profile's own plans only
    uid = run_plan(manager, n_points=40)
    stop = recorded(catalog, uid, timeout=300)
    assert stop["exit_status"] == "success", stop


def test_the_re_manager_publishes_to_the_proxy_and_the_service_reconstructs(tmp_path, re_manager):
    catalog = connect(None, tmp_path / "catalog")
    proxy = ZmqProxy().start()
    bus = f'kind = "zmq"\naddress = "localhost:{proxy.out_port}"'
    service = Service(service_config(tmp_path, bus), tmp_path)
    try:
        service.wait_for_log("connected to the document bus")
        manager = re_manager(BLUESKY_PTYCHO_PUBLISH_TO=f"localhost:{proxy.in_port}")
        uid = run_plan(manager, n_points=40)
        stop = recorded(catalog, uid, timeout=120)
        assert stop["exit_status"] == "success", stop
        assert service.terminate() == 0
    finally:
        service.kill()
        proxy.stop()
