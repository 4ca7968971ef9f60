"""File input and output."""

from .cxi import CXIFormatError, read_cxi, read_positions, read_result, write_cxi, write_result

__all__ = ["CXIFormatError", "read_cxi", "read_positions", "read_result", "write_cxi", "write_result"]
