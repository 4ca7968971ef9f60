"""Helpers shared by the tests that run real scans."""

from __future__ import annotations

import time
import uuid

import numpy as np
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

from bluesky_ptycho.catalog import pairs_as_complex
from bluesky_ptycho.federation.auth import make_app, make_clients
from bluesky_ptycho.federation.globus_settings import load_globus_settings, token_file
from bluesky_ptycho.solver import ReconstructionResult


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
        object=pairs_as_complex(data["object"]),
        probe=pairs_as_complex(data["probe"]),
        positions=data["positions"],
        pixel_size=tuple(data["pixel_size"]),
        object_origin=tuple(data["object_origin"]),
        cost_history=[],
        iterations=data["iteration"],
        settings=settings.to_dict(),
        wall_time=data["wall_time"],
    )


def store_tokens(expires_in: float, refresh: bool = True) -> None:
    """Tokens for every scope the app asks for, as a login would have left them."""
    settings = load_globus_settings()
    app = make_app(settings)
    make_clients(settings, app)
    storage = JSONTokenStorage(token_file())
    identity = str(uuid.uuid4())
    storage.store_token_data_by_resource_server(
        {
            server: TokenStorageData(
                resource_server=server,
                identity_id=identity,
                scope=" ".join(str(scope) for scope in scopes),
                access_token=f"access-{server}",
                refresh_token="refresh" if refresh else None,
                expires_at_seconds=int(time.time() + expires_in),
                token_type="Bearer",
            )
            for server, scopes in app.scope_requirements.items()
        }
    )
