"""Reconstruction results as event-model documents in Tiled/databroker catalogs, and queries."""

from .documents import PLAN_NAME, ReconstructionRunWriter, from_polar, reconstruction_data_keys
from .queries import (
    ReconstructionSummary,
    find_reconstruction,
    latest_final_reconstruction,
    latest_probe_for,
    raw_scan_documents,
    recent_reconstructions,
    reconstructions_of,
    result_from_run,
    summarize,
)
from .server import connect, default_catalog_directory, default_frames_directory, embedded_server
from .spool import DocumentSpool, DurableCatalogWriter, default_spool_directory, replay_spool

__all__ = [
    "PLAN_NAME",
    "DocumentSpool",
    "DurableCatalogWriter",
    "ReconstructionRunWriter",
    "ReconstructionSummary",
    "connect",
    "default_catalog_directory",
    "default_frames_directory",
    "default_spool_directory",
    "embedded_server",
    "find_reconstruction",
    "from_polar",
    "latest_final_reconstruction",
    "latest_probe_for",
    "raw_scan_documents",
    "recent_reconstructions",
    "reconstruction_data_keys",
    "reconstructions_of",
    "replay_spool",
    "result_from_run",
    "summarize",
]
