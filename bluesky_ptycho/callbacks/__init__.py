"""RunEngine callbacks: live reconstruction of ptychography scans, and a live view of it."""

from .live_view import LiveReconstructionView
from .ptycho import PtychoCallback, ScanGeometry

__all__ = ["LiveReconstructionView", "PtychoCallback", "ScanGeometry"]
