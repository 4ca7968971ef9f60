"""Reconstruction results as event-model documents in Tiled/databroker catalogs, and queries."""

from .documents import PLAN_NAME, ReconstructionRunWriter, pairs_as_complex, reconstruction_data_keys
from .queries import latest_final_reconstruction, reconstructions_of, result_from_run
from .server import connect, default_catalog_directory, default_frames_directory, embedded_server

__all__ = [
    "PLAN_NAME",
    "ReconstructionRunWriter",
    "connect",
    "default_catalog_directory",
    "default_frames_directory",
    "embedded_server",
    "latest_final_reconstruction",
    "pairs_as_complex",
    "reconstruction_data_keys",
    "reconstructions_of",
    "result_from_run",
]
