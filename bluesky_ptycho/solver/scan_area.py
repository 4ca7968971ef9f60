"""The area a scan is planned to cover, and one fixed object canvas for all of a scan's results.

A live reconstruction's canvas grows as the scan leaves it, so its previews
have different shapes. When the plan is known in advance every result can be
placed on one canvas that covers the whole planned scan, so a catalog stores
them as one regular array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import ReconstructionResult
from .pages import ordinary_empty
from .state import canvas_margin


@dataclass(frozen=True)
class ScanArea:
    """The rectangle the scan positions are planned to cover, (x, y) in metres.

    Positions may stray outside it by up to half a frame's field of view
    (motor readbacks, drift); :meth:`admits` says whether a position does.
    """

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def __post_init__(self) -> None:
        values = (self.x_min, self.x_max, self.y_min, self.y_max)
        if not all(math.isfinite(v) for v in values) or self.x_min > self.x_max or self.y_min > self.y_max:
            raise ValueError(f"scan area {values} is not [x_min, x_max, y_min, y_max] with min <= max")

    @classmethod
    def of_positions(cls, positions: np.ndarray) -> ScanArea:
        """The bounding box of (N, 2) (x, y) positions."""
        positions = np.asarray(positions, dtype=float).reshape(-1, 2)
        (x_min, y_min), (x_max, y_max) = positions.min(axis=0), positions.max(axis=0)
        return cls(float(x_min), float(x_max), float(y_min), float(y_max))

    def admits(self, position: tuple[float, float], field_of_view: float) -> bool:
        """Whether ``position`` lies within the area widened by half of ``field_of_view`` metres."""
        x, y = position
        slack = field_of_view / 2
        return self.x_min - slack <= x <= self.x_max + slack and self.y_min - slack <= y <= self.y_max + slack

    def canvas_for(self, result: ReconstructionResult) -> ObjectCanvas:
        """A canvas on ``result``'s pixel grid that holds the object of any admitted position."""
        h, w = result.probe.shape[-2:]
        py, px = result.pixel_size
        margin_y, margin_x = canvas_margin((h, w)) + 2
        slack = result.geometry.field_of_view / 2
        low = np.array([self.x_min - slack - margin_x * px, self.y_min - slack - margin_y * py])
        high = np.array([self.x_max + slack + (w + margin_x) * px, self.y_max + slack + (h + margin_y) * py])
        step = np.array([px, py])
        origin = np.asarray(result.object_origin) - np.ceil((result.object_origin - low) / step) * step
        cols, rows = np.ceil((high - origin) / step).astype(int)
        return ObjectCanvas(origin=(float(origin[0]), float(origin[1])), shape=(int(rows), int(cols)))


@dataclass(frozen=True)
class ObjectCanvas:
    """A fixed object canvas: (x, y) metres of its top-left pixel and its (rows, columns)."""

    origin: tuple[float, float]
    shape: tuple[int, int]

    def place(self, result: ReconstructionResult, image: np.ndarray, fill: float) -> np.ndarray:
        """``image`` (an image of ``result.object``, its shape) on this canvas; the rest holds ``fill``.

        A writer places the object's images (amplitude and phase) rather than
        the complex object: one canvas-sized array per image, no complex one.

        Raises
        ------
        ValueError
            If the object does not fit (its positions left the planned area).
        """
        py, px = result.pixel_size
        offset_x, offset_y = np.rint((np.asarray(result.object_origin) - self.origin) / (px, py)).astype(int)
        rows, cols = result.object.shape
        if offset_y < 0 or offset_x < 0 or offset_y + rows > self.shape[0] or offset_x + cols > self.shape[1]:
            raise ValueError(
                f"the object ({rows} x {cols} pixels) does not fit the {self.shape[0]} x {self.shape[1]} "
                "canvas of the planned scan area: positions left that area"
            )
        canvas = ordinary_empty(self.shape, image.dtype)
        canvas.fill(fill)
        canvas[offset_y : offset_y + rows, offset_x : offset_x + cols] = image
        return canvas
