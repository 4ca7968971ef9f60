"""Find reconstructions in a Tiled catalog and read them as NumPy arrays."""

from __future__ import annotations

import numpy as np
from tiled.queries import Key

from ..solver.data import ReconstructionResult
from .documents import PLAN_NAME, pairs_as_complex


def reconstructions_of(catalog, raw_uid: str) -> list:
    """Reconstruction runs of the raw scan ``raw_uid``, oldest first."""
    found = catalog.search(Key("start.raw_uid") == raw_uid).search(Key("start.plan_name") == PLAN_NAME)
    runs = list(found.values())
    return sorted(runs, key=lambda run: run.metadata["start"]["time"])


def result_from_run(run, index: int = -1) -> ReconstructionResult:
    """Event ``index`` (default: the last) of a reconstruction run as a :class:`ReconstructionResult`."""
    stream = run["primary"]

    def row(key: str) -> np.ndarray:
        return np.asarray(
            stream[key].read()[index].tolist()
            if key in {"object", "positions"}
            else stream[key].read()[index]
        )

    start = run.metadata["start"]
    return ReconstructionResult(
        object=pairs_as_complex(row("object")),
        probe=pairs_as_complex(row("probe")),
        positions=row("positions").astype(float),
        pixel_size=tuple(float(v) for v in row("pixel_size")),
        object_origin=tuple(float(v) for v in row("object_origin")),
        cost_history=[],
        iterations=int(row("iteration")),
        settings=start["ptycho_solver"]["settings"],
        wall_time=float(row("wall_time")),
        extra={"final": bool(row("final")), "partial": bool(row("partial")), "run_uid": start["uid"]},
    )


def latest_final_reconstruction(catalog, raw_uid: str) -> ReconstructionResult:
    """The final result of the newest successful reconstruction of ``raw_uid``.

    Raises
    ------
    LookupError
        If the scan has no successful reconstruction with a final result.
    """
    for run in reversed(reconstructions_of(catalog, raw_uid)):
        stop = run.metadata.get("stop") or {}
        if stop.get("exit_status") == "success" and bool(np.asarray(run["primary"]["final"].read())[-1]):
            return result_from_run(run)
    raise LookupError(f"no successful final reconstruction of scan {raw_uid} in the catalog")
