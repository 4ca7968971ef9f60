"""Reconstruction results as event-model documents, for Tiled/databroker catalogs."""

from .documents import PLAN_NAME, ReconstructionRunWriter, reconstruction_data_keys

__all__ = ["PLAN_NAME", "ReconstructionRunWriter", "reconstruction_data_keys"]
