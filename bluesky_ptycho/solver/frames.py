"""The measured frames as the solver holds them: amplitudes in float16, two bytes a pixel.

A scan of 50,000 frames of 256 x 256 is 6.5 GB of 16-bit counts; held as
float32 amplitudes it would be twice that, and each preview's
concatenation would copy it all again. :class:`MeasuredAmplitudes` keeps
the square roots of the counts in float16 (11 significant bits: a relative
rounding of at most 2^-11, far below the Poisson noise of an amplitude,
``0.5 / sqrt(counts)``, up to about four million counts in a pixel), in
pages of ``PAGE_FRAMES`` frames that are filled as frames arrive and never
copied again. The algorithms read a few frames at a time as float32
(:meth:`MeasuredAmplitudes.gather`); their FFT work stays in single precision.

The amplitudes are stored times a power of two (exact in floating point)
that puts the brightest pixel seen near ``2**12``: processed frames with
values far below one (normalised counts) keep their precision instead of
falling into float16's subnormals, and counts up to 256 times brighter than
the first frames' fit before the store rescales itself.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import ArrayBackend

# ReconstructionSettings.frame_precision: the type the amplitudes are stored in
PRECISIONS = {"half": np.float16, "single": np.float32}
PAGE_FRAMES = 256
# the brightest amplitude is stored near this (float16 holds up to 65504)
BRIGHTEST_STORED = 2.0**12


def storage_scale(brightest: float) -> float:
    """The power of two that stores an amplitude of ``brightest`` within a factor of two of ``BRIGHTEST_STORED``."""
    if not brightest > 0:
        return 1.0
    return 2.0 ** math.floor(math.log2(BRIGHTEST_STORED / brightest))


class MeasuredAmplitudes:
    """Square roots of the measured counts, zero frequency at index 0, on the backend's array module.

    Parameters
    ----------
    backend
        The array backend whose module the pages live on (numpy, cupy, the
        strict module) and whose compiled kernels, where it has them, read them.
    frame_shape
        (h, w) of every frame.
    precision
        A key of :data:`PRECISIONS`: "half" (float16, the default) or
        "single" (float32, twice the memory, for comparison).
    """

    def __init__(self, backend: ArrayBackend, frame_shape: tuple[int, int], precision: str = "half") -> None:
        self.backend = backend
        self.frame_shape = tuple(frame_shape)
        self.storage = PRECISIONS[precision]
        self.scale = None  # amplitudes are stored times this; set by the first frames
        self._pages: list = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes the pages take (the last one partly filled)."""
        return sum(int(page.nbytes) for page in self._pages)

    def append(self, frames: np.ndarray) -> None:
        """Append counts (N, h, w) of any real type, zero frequency at the frame centre (as recorded).

        Converted a page at a time: the only temporaries are one page's worth.
        """
        if frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frames have shape {frames.shape[1:]}, the scan's are {self.frame_shape}")
        start = 0
        while start < len(frames):
            row = self._n % PAGE_FRAMES
            if row == 0:
                self._pages.append(self.backend.xp.empty((PAGE_FRAMES, *self.frame_shape), self.storage))
            stop = min(len(frames), start + PAGE_FRAMES - row)
            self._store(frames[start:stop], self._pages[-1][row : row + stop - start])
            self._n += stop - start
            start = stop

    def _store(self, counts: np.ndarray, rows) -> None:
        """Write ``counts`` into a page's ``rows`` as stored (rescaling the store first if they need it)."""
        brightest = float(np.sqrt(np.float32(counts.max())))
        if self.scale is None:
            self.scale = storage_scale(brightest)
        elif brightest * self.scale > float(np.finfo(self.storage).max):
            self._rescale(storage_scale(brightest))
        kernels = self.backend.kernels
        if kernels is not None and self.storage is np.float16:
            kernels.half_amplitudes(counts, np.float32(self.scale), rows.view(np.uint16))
        else:
            rows[...] = self.backend.xp.asarray(stored(counts, self.scale, self.storage))

    def _rescale(self, scale: float) -> None:
        """Store every frame times ``scale`` instead (a smaller power of two: exact but for the faintest values)."""
        factor = self.storage(scale / self.scale)
        for page in self._pages:
            page *= factor
        self.scale = scale

    def gather(self, frames: np.ndarray | slice):
        """Float32 amplitudes (B, h, w) of the frames numbered ``frames`` (a host integer array, or a slice)."""
        numbers = np.arange(self._n)[frames] if isinstance(frames, slice) else np.asarray(frames, np.int64)
        if numbers.size and not (0 <= numbers.min() and numbers.max() < self._n):
            raise IndexError(f"frames {numbers.min()}-{numbers.max()} of a store of {self._n}")
        xp, kernels = self.backend.xp, self.backend.kernels
        out = xp.empty((len(numbers), *self.frame_shape), np.float32)
        unscale = np.float32(1 / self.scale)
        pages, rows = np.divmod(numbers, PAGE_FRAMES)
        for page in np.unique(pages):
            targets = np.flatnonzero(pages == page)
            if kernels is not None and self.storage is np.float16:
                bits = self._pages[page].view(np.uint16)  # numba has no float16
                kernels.single_from_half(bits, rows[targets], targets, unscale, out)
            else:
                out[xp.asarray(targets)] = single_from_stored(
                    self._pages[page], xp.asarray(rows[targets]), unscale
                )
        return out


def stored(counts: np.ndarray, scale: float, storage) -> np.ndarray:
    """Counts as a store of type ``storage`` holds them: ``sqrt(counts) * scale`` in FFT order.

    The definition of :func:`.kernels.half_amplitudes`.
    """
    amplitude = np.sqrt(np.fft.ifftshift(counts, axes=(-2, -1)), dtype=np.float32)
    amplitude *= np.float32(scale)
    return amplitude.astype(storage)


def single_from_stored(page, rows, unscale):
    """Float32 amplitudes of a page's ``rows``: the definition of :func:`.kernels.single_from_half`."""
    return page[rows].astype(np.float32) * unscale
