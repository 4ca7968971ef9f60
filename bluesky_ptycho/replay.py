"""Reconstruct a scan archived in the catalog, through the same callback as a live scan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callbacks import PtychoCallback
from .catalog import raw_scan_documents
from .catalog.queries import full_uid
from .catalog.tiled_writer import CatalogWriter
from .solver import ReconstructionResult, ReconstructionSettings


def reconstruct_archived_scan(
    catalog,
    raw_uid: str,
    settings: ReconstructionSettings,
    on_result: Callable[[str, ReconstructionResult, bool], Any] | None = None,
    initial_probe: ReconstructionResult | str | None = None,
    **geometry: Any,
) -> PtychoCallback:
    """Replay the raw scan ``raw_uid`` from ``catalog`` into a :class:`PtychoCallback`.

    The reconstruction is written back to the same catalog as a new
    reconstruction run linked to the scan. ``raw_uid`` may be the beginning
    of the scan's uid (as ``catalog ls`` shows it). Returns the callback after its
    work is recorded.

    Raises
    ------
    KeyError
        If the catalog has no run ``raw_uid``.
    """
    raw_uid = full_uid(catalog, raw_uid)
    if raw_uid not in catalog:
        raise KeyError(f"the catalog has no run {raw_uid!r}")
    writer = CatalogWriter(catalog, batch_size=1)
    callback = PtychoCallback(
        writer,
        settings=settings,
        preview_every=None,
        on_result=on_result,
        initial_probe=initial_probe,
        catalog=catalog,
        **geometry,
    )
    for name, doc in raw_scan_documents(catalog[raw_uid]):
        callback(name, doc)
    callback.wait()
    callback.runner.shutdown()
    return callback
