"""RunEngine callbacks: live reconstruction of ptychography scans, and a live view of it."""

from ..scan_metadata import ScanGeometry
from .live_view import LiveReconstructionView
from .ptycho import PtychoCallback

__all__ = ["LiveReconstructionView", "PtychoCallback", "ScanGeometry"]
