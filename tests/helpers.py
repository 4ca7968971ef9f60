"""Helpers shared by the tests that run real scans."""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.catalog import pairs_as_complex
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
