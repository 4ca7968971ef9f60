"""Helpers shared by the tests that run real scans."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import single_gen
from globus_sdk.token_storage import TokenStorageData

from bluesky_ptycho.catalog import from_polar
from bluesky_ptycho.federation.auth import make_app, make_clients, token_storage
from bluesky_ptycho.federation.globus_settings import load_globus_settings
from bluesky_ptycho.federation.testing import access_token
from bluesky_ptycho.solver import (
    ReconstructionResult,
    ReconstructionSettings,
    Reconstructor,
)
from bluesky_ptycho.solver.data import ELECTRON_VOLT
from bluesky_ptycho.solver.imperfections import stage_of_frames

# the robustness benchmark's geometry A (benchmarks/robustness.py): a hard X-ray nanoprobe
NANOPROBE = {"energy": 8.8e3 * ELECTRON_VOLT, "detector_distance": 2.0, "detector_pixel_size": 75e-6}


class Documents(list):
    """Collects (name, doc) pairs, like a catalog would receive them."""

    __hash__ = object.__hash__

    def __call__(self, name, doc):
        self.append((name, doc))

    def named(self, name):
        return [doc for n, doc in self if n == name]


def scan_positions(raw: Documents, stage) -> np.ndarray:
    events = raw.named("event")
    return np.array([[e["data"]["stage_x"], e["data"]["stage_y"]] for e in events]) * 1e-6


def result_of(data, settings):
    return ReconstructionResult(
        object=from_polar(data["object_amplitude"], data["object_phase"]),
        probe=from_polar(data["probe_amplitude"], data["probe_phase"]),
        positions=data["positions"],
        pixel_size=(data["pixel_size_y"], data["pixel_size_x"]),
        object_origin=(data["object_origin_x"], data["object_origin_y"]),
        cost_history=[],
        iterations=data["iteration"],
        settings=settings.to_dict(),
        wall_time=data["wall_time"],
    )


FEDERATION_DOC = (Path(__file__).parents[1] / "docs" / "federation.md").read_text()


def named_block(name: str) -> str:
    """The code block of docs/federation.md right after the line naming ``name`` (e.g. `config.yaml`:)."""
    return re.search(rf"^`{re.escape(name)}`:\n\n```\w*\n(.*?)```", FEDERATION_DOC, re.S | re.M).group(1)


def store_tokens(expires_in: float, refresh: bool = True) -> list[str]:
    """Tokens for every scope the app asks for, as a login would have left them; the scopes consented to."""
    settings = load_globus_settings()
    app = make_app(settings)
    make_clients(settings, app)
    storage = token_storage()
    identity = str(uuid.uuid4())
    storage.store_token_data_by_resource_server(
        {
            server: TokenStorageData(
                resource_server=server,
                identity_id=identity,
                scope=" ".join(str(scope) for scope in scopes),
                access_token=access_token(server),
                refresh_token="refresh" if refresh else None,
                expires_at_seconds=int(time.time() + expires_in),
                token_type="Bearer",
            )
            for server, scopes in app.scope_requirements.items()
        }
    )
    return [str(scope) for scopes in app.scope_requirements.values() for scope in scopes]


class TiledTestServer:
    """A real Tiled server on loopback, stoppable and restartable on the same port and storage.

    ``postgresql`` (a DSN) puts the catalog and its tables in PostgreSQL, as a
    production deployment does; otherwise SQLite, as the embedded server.
    """

    def __init__(self, directory, postgresql: str | None = None, readable_storage=None) -> None:
        from pathlib import Path

        self.directory = Path(directory)
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self.postgresql = postgresql
        self.readable_storage = [str(p) for p in readable_storage or []]
        self.api_key = "testkey" + uuid.uuid4().hex[:12]
        self.port = 0
        self.start()

    def start(self) -> None:
        import httpx
        import uvicorn
        from tiled.catalog import from_uri as catalog_from_uri
        from tiled.config import Authentication
        from tiled.server.app import build_app
        from tiled.server.simple import ThreadedServer

        database = self.postgresql or f"sqlite:///{self.directory / 'catalog.db'}"
        tables = self.postgresql or f"duckdb:///{self.directory / 'storage.duckdb'}"
        catalog = catalog_from_uri(
            database,
            writable_storage=[self.directory / "data", tables],
            readable_storage=self.readable_storage,
            init_if_not_exists=True,
        )
        app = build_app(catalog, authentication=Authentication(single_user_api_key=self.api_key))
        self._server = ThreadedServer(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="asyncio", log_level="warning")
        )
        self._running = self._server.run_in_thread()
        base = self._running.__enter__()
        self.port = int(base.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        self.uri = f"{base}/api/v1?api_key={self.api_key}"

    def stop(self) -> None:
        self._running.__exit__(None, None, None)


def after_event(plan, n_events: int, then):
    """``plan``, with the plan ``then()`` run right after its ``n_events``-th event."""
    saved = 0

    def insert(msg):
        nonlocal saved
        if msg.command == "save":
            saved += 1
            if saved == n_events:
                return single_gen(msg), then()
        return None, None

    return bpp.plan_mutator(plan, insert)


def reconstructing_run_engine(catalog, iterations: int):
    """A RunEngine whose scans and their final reconstructions (no previews) go into ``catalog``; and the callback."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_ptycho.callbacks import PtychoCallback
    from bluesky_ptycho.solver import ReconstructionSettings

    writer = TiledWriter(catalog, batch_size=1)
    ptycho = PtychoCallback(writer, settings=ReconstructionSettings(iterations=iterations), preview_every=0)
    RE = RunEngine()
    RE.subscribe(writer)
    RE.subscribe(ptycho)
    return RE, ptycho


def assert_previews_then_final(
    frames: list[int],
    iterations: list[int],
    scheduled: list[int],
    preview_iterations: int,
    final_iterations: int,
) -> None:
    """Previews at the ``scheduled`` frame counts, each continuing the last; then the final, with every frame.

    ``frames`` and ``iterations`` are the recorded events' ``n_frames`` and
    ``iteration``. A preview that finishes after the scan's stop is not
    recorded (the final, queued behind it, continues from it and cuts it
    short): the recorded previews are the first of ``scheduled``, and the
    final adds its own iterations and those of the unrecorded previews.
    """
    *previews, final = frames
    assert previews == scheduled[: len(previews)] and final == scheduled[-1], frames
    steps = np.diff([0, *iterations])
    assert all(step == preview_iterations for step in steps[:-1]), iterations
    unrecorded = len(scheduled) - len(previews)
    assert final_iterations <= steps[-1] <= final_iterations + unrecorded * preview_iterations, iterations


def reconstructed(sim, **settings) -> ReconstructionResult:
    """The result of reconstructing a simulation's data with ``ReconstructionSettings(**settings)``."""
    return Reconstructor.from_data(sim.data, ReconstructionSettings(**settings)).iterate().result()


def beam_amplitudes(sim) -> np.ndarray:
    """Each frame's beam amplitude relative to the scan's mean, in a simulation with a drifting probe."""
    power = np.sum(np.abs(sim.true_probes) ** 2, axis=(1, 2, 3))[
        stage_of_frames(len(sim.data), len(sim.true_probes))
    ]
    return np.sqrt(power / power.mean())
