"""The part of the object canvas a batch of frames covers, and batches that cover little.

A minibatch's object update is zero wherever none of its patches lies, so
the algorithms divide, step and clear only the tiles its patches cover
(:class:`CanvasRegion`): the work per batch is bounded by the batch's
frames, not by the canvas. And the batches of a large scan are drawn from
spatially compact blocks of at most ``BLOCK_FRAMES`` frames
(:func:`spatial_blocks`): each batch then covers, and finds in cache, no
more canvas than a batch of a scan of that size does, so an iteration
costs in proportion to the scan's frames however large its area grows.
Scans of up to ``BLOCK_FRAMES`` frames are one block: their batches are
random draws from the whole scan, as ever. DM, whose one batch is every
frame, visits them block after block (:func:`spatial_order`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

TILE = 16
BLOCK_FRAMES = 1000


def spatial_blocks(positions: np.ndarray, largest: int = BLOCK_FRAMES) -> list[np.ndarray]:
    """Frame indices split into spatially compact blocks of at most ``largest`` frames.

    Each block too large is halved at the median of its longer extent
    (a k-d tree's leaves), so blocks hold between ``largest / 2`` and
    ``largest`` frames, in the order of ``positions`` within each.
    ``positions`` is (N, 2); one block of every frame when N <= ``largest``.
    """
    blocks, pending = [], [np.arange(len(positions))]
    while pending:
        frames = pending.pop()
        if len(frames) <= largest:
            blocks.append(frames)
            continue
        spread = positions[frames]
        order = np.argsort(spread[:, np.argmax(np.ptp(spread, axis=0))], kind="stable")
        half = len(frames) // 2
        pending += [np.sort(frames[order[half:]]), np.sort(frames[order[:half]])]
    return blocks


def spatial_order(positions: np.ndarray) -> np.ndarray:
    """Frame indices (N,), the :func:`spatial_blocks` of ``positions`` one after another."""
    return np.concatenate(spatial_blocks(positions))


@dataclass(frozen=True, eq=False)
class CanvasRegion:
    """The ``tile`` x ``tile`` squares of a canvas that some patch touches.

    Attributes
    ----------
    runs
        (R, 3) int64 host array, one row per run of side-by-side covered
        tiles: the run's row in the tile grid, its first column and its end
        column (exclusive) in canvas pixels, clipped to the canvas; in
        row-major order, no two runs touching. Kernels sweep whole runs, row
        by row, in contiguous memory.
    canvas_shape
        (rows, columns) of the canvas.
    tile
        Edge of a tile, in pixels.
    """

    runs: np.ndarray
    canvas_shape: tuple[int, int]
    tile: int = TILE
    _on_device: dict = field(default_factory=dict, repr=False)  # pixel_index by array module

    @classmethod
    def covering(
        cls,
        corners: np.ndarray,
        frame_shape: tuple[int, int],
        canvas_shape: tuple[int, int],
        tile: int = TILE,
    ) -> CanvasRegion:
        """The tiles covered by the ``frame_shape`` patches at ``corners`` ((B, 2) integer host array)."""
        corners = np.asarray(corners, dtype=np.int64).reshape(-1, 2)
        extent = np.asarray(frame_shape)
        first = corners // tile
        last = (corners + extent - 1) // tile
        span = (extent - 1) // tile + 2  # the most tiles a patch can cover along each axis
        grid = (np.asarray(canvas_shape) + tile - 1) // tile
        covered = np.zeros(grid, dtype=bool)
        rows = np.minimum(first[:, :1] + np.arange(span[0]), last[:, :1])
        cols = np.minimum(first[:, 1:] + np.arange(span[1]), last[:, 1:])
        covered[rows[:, :, None], cols[:, None, :]] = True
        edges = np.diff(covered.astype(np.int8), axis=1, prepend=0, append=0)
        tile_row, start = np.nonzero(edges == 1)
        _, end = np.nonzero(edges == -1)
        runs = np.stack([tile_row, start * tile, np.minimum(end * tile, canvas_shape[1])], axis=1)
        return cls(runs.astype(np.int64), tuple(int(n) for n in canvas_shape), tile)

    @cached_property
    def pixel_index(self) -> np.ndarray:
        """Flat indices into the canvas of every pixel of the region, (P,) int64 host array, each once."""
        band = self.runs[:, :1] * self.tile + np.arange(self.tile)
        inside = band < self.canvas_shape[0]
        run = np.repeat(np.arange(len(self.runs)), inside.sum(axis=1))  # one (run, canvas row) pair each
        length = (self.runs[:, 2] - self.runs[:, 1])[run]
        starts = band[inside] * self.canvas_shape[1] + self.runs[run, 1]
        offsets = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
        return np.repeat(starts, length) + offsets

    def flat_index(self, xp):
        """:attr:`pixel_index` on the array module ``xp``, copied there once."""
        if xp.__name__ not in self._on_device:
            self._on_device[xp.__name__] = xp.asarray(self.pixel_index)
        return self._on_device[xp.__name__]
