"""RunEngine callbacks: live reconstruction of ptychography scans."""

from .ptycho import PtychoCallback, ScanGeometry

__all__ = ["PtychoCallback", "ScanGeometry"]
