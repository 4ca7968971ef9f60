"""Each frame's position step, grown while the frame is on its way somewhere.

Refinement takes a share (``ReconstructionSettings.position_step``) of each
frame's least-squares shift: a small share keeps the positions of a nearly
right scan still against the noise and bias in their shifts, but a frame
recorded a few pixels off then takes a hundred iterations to get there.
A frame whose shift is larger than :data:`MIN_SHIFT` and points the way its
last one did grows its step by :data:`GROWTH`, up to the whole least-squares
shift; any other shrinks it by :data:`SHRINK`, down to the settings' share.
The size matters, not the direction alone: a nearly right frame's shifts
point the same way from one iteration to the next too (the object they are
measured against changes slowly), and taken whole they let the positions
wander as the full step does (docs/imperfect-scans.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: a frame's step grows by this factor each time its shift keeps the direction of its last
GROWTH = 1.25
#: and shrinks by this factor each time it does not
SHRINK = 0.5
#: pixels: a frame's step grows only while its least-squares shift is larger. Nearly right frames
#: ask for a hundredth of a pixel or a few (median 0.008-0.04 px from the 20th iteration on, porous
#: sample, 1e5 and 1e7 photons), frames half a scan step off for a quarter of one (0.23-0.31 px)
MIN_SHIFT = 0.1


@dataclass
class PositionGains:
    """Every frame's step as a multiple of the settings' share, and its last least-squares shift.

    Attributes
    ----------
    gains
        (N,) host float64, from 1 (the settings' share) to ``1 / share`` (the whole shift).
    last
        (N, 2) host float64: each frame's last shift (rows, columns) in pixels, 0 before its first.
    kept_on
        (N,) True where a frame's last shift kept the direction of the one before, and was larger
        than :data:`MIN_SHIFT`: what grows a step, and says a frame is on its way where the whole
        shift is taken (a share of 1, whose steps cannot grow).
    """

    gains: np.ndarray = field(default_factory=lambda: np.ones(0))
    last: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    kept_on: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def take(self, n_frames: int) -> None:
        """Gains for ``n_frames`` frames in all, those new here at 1."""
        new = n_frames - len(self.gains)
        self.gains = np.concatenate([self.gains, np.ones(new)])
        self.last = np.concatenate([self.last, np.zeros((new, 2))])
        self.kept_on = np.concatenate([self.kept_on, np.zeros(new, bool)])

    def follow(self, frames: np.ndarray, shifts: np.ndarray, share: float) -> np.ndarray:
        """The steps (B,) of ``frames`` for their new least-squares ``shifts`` (B, 2): ``share`` times their gains."""
        kept_on = (np.sum(shifts * self.last[frames], axis=1) > 0) & (
            np.hypot(shifts[:, 0], shifts[:, 1]) > MIN_SHIFT
        )
        gains = self.gains[frames] * np.where(kept_on, GROWTH, SHRINK)
        self.gains[frames] = np.clip(gains, 1.0, 1.0 / share)
        self.last[frames] = shifts
        self.kept_on[frames] = kept_on
        return share * self.gains[frames]

    def on_its_way(self, frames: np.ndarray) -> np.ndarray:
        """(B,) True where a frame's last shift kept on, or its step has grown and not yet shrunk back to the share."""
        return self.kept_on[frames] | (self.gains[frames] > 1.0)

    def restart(self, frames: np.ndarray) -> None:
        """``frames`` moved by other means (the search): their steps start again from the settings' share."""
        self.gains[frames] = 1.0
        self.last[frames] = 0.0
        self.kept_on[frames] = False
