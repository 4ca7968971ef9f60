"""What an iteration costs, as measured: a fixed part (canvas-wide steps) plus a part per frame visited."""

from __future__ import annotations

from collections import deque

import numpy as np


class IterationCost:
    """Seconds of an iteration over ``n`` frames as ``fixed + per_frame * n``, fitted to the last ``keep`` measured.

    With one frame count measured so far the fixed part is taken as zero.
    The fixed part (the once-per-iteration steps over the whole canvas)
    grows with the scan's area, which the fit follows by forgetting old
    measurements.
    """

    def __init__(self, keep: int = 8) -> None:
        self._measured: deque[tuple[int, float]] = deque(maxlen=keep)
        self.fixed = 0.0
        self.per_frame: float | None = None

    def add(self, frames: int, seconds: float) -> None:
        """One iteration over ``frames`` took ``seconds``."""
        self._measured.append((int(frames), float(seconds)))
        n, s = np.array(self._measured, dtype=float).T
        slope, intercept = np.polyfit(n, s, 1) if len(set(n)) > 1 else (0.0, 0.0)
        if slope > 0 and intercept >= 0:
            self.fixed, self.per_frame = float(intercept), float(slope)
        else:
            self.fixed, self.per_frame = 0.0, float(s.sum() / n.sum())

    def seconds(self, frames: int) -> float:
        """The predicted seconds of an iteration over ``frames`` (0 before anything is measured)."""
        return 0.0 if self.per_frame is None else self.fixed + self.per_frame * frames

    def frames_in(self, seconds: float) -> int:
        """How many frames an iteration of ``seconds`` visits (0 if not even the fixed part fits)."""
        if self.per_frame is None:
            raise ValueError("nothing measured yet")
        return max(0, int((seconds - self.fixed) / self.per_frame))
