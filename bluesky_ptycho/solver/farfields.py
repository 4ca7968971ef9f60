"""The difference map's stored far fields, every frame's, in half precision or in single.

DM's iterate is the set of exit waves, one complex number a pixel for every
frame and mode, kept from one iteration to the next (as far fields,
:mod:`.dm`): 50,000 frames of 256² are 26 GB in single precision, four
times the frames themselves (6.5 GB of float16 amplitudes). In half
precision (``DMOptions.farfield_precision``'s default) each complex number
is two float16s, four bytes: 11 significant bits, a relative rounding of at
most 2^-11 of each stored number each time it is written, below the Poisson
noise of the amplitudes it is projected onto (:mod:`.frames`). The numbers
are stored times a power of two (:func:`.frames.storage_scale` of the
brightest one first stored) so that faint values keep their precision and
DM's excursions above the measured amplitudes stay far below float16's
largest value.

The FFTs and the update stay in single precision: DM's Fourier update
reads and writes the float16 pairs in the same compiled pass
(:func:`.kernels.difference_map_fourier_half`); every other read and write
goes a chunk of frames at a time through a single-precision workspace.

The far fields are held in pages of ``PAGE_FRAMES`` frames, as the frames
are: frames added to a live scan take new pages (and the last page, partly
filled, is copied into a larger one), so that a scan's far fields are
never copied whole nor held twice while they grow.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import psutil

from .frames import PAGE_FRAMES, storage_scale

# DMOptions.farfield_precision: the bytes each stored complex number takes
BYTES_PER_NUMBER = {"single": 8, "half": 4}
PRECISIONS = tuple(BYTES_PER_NUMBER)


class StoredFarFields:
    """Far fields (N, modes, h, w) of every frame, held in ``precision``, in pages of ``PAGE_FRAMES`` frames.

    The frames of a ``part`` (a slice) read or written at once lie in one
    page (:meth:`runs`).

    Parameters
    ----------
    backend
        The array backend: its array module holds the values, its compiled
        kernels (where it has them) convert them.
    precision
        "single" (complex64, eight bytes a number) or "half" (two float16s, four).
    """

    def __init__(self, backend, precision: str) -> None:
        self.backend = backend
        self.precision = precision
        self.pages: list = []  # every page but the last holds PAGE_FRAMES frames
        self.scale = None

    def __len__(self) -> int:
        return sum(len(page) for page in self.pages)

    @property
    def nbytes(self) -> int:
        return sum(int(page.nbytes) for page in self.pages)

    def bytes_per_frame(self, shape: tuple[int, int, int]) -> int:
        """Bytes a frame of (modes, h, w) far fields takes as stored."""
        return int(np.prod(shape)) * BYTES_PER_NUMBER[self.precision]

    def grow(self, n_frames: int, shape: tuple[int, int, int]) -> None:
        """Room for ``n_frames`` frames of (modes, h, w), the frames stored so far kept first.

        Only the last page, partly filled, is copied. Refuses, naming what
        would help, far fields that would not fit in the host's free memory.
        """
        held = len(self)
        sizes = [
            min(PAGE_FRAMES, n_frames - first)
            for first in range(held - held % PAGE_FRAMES, n_frames, PAGE_FRAMES)
        ]
        if self.backend.xp is np:
            needed, available = sum(sizes) * self.bytes_per_frame(shape), psutil.virtual_memory().available
            if needed > available:
                raise MemoryError(self.too_large(n_frames, shape, needed, available))
        if held % PAGE_FRAMES:
            partial = self.pages.pop()
            self.pages.append(self.empty_page(sizes[0], shape))
            self.pages[-1][: held % PAGE_FRAMES] = partial
            sizes = sizes[1:]
        self.pages += [self.empty_page(size, shape) for size in sizes]

    def empty_page(self, n_frames: int, shape: tuple[int, int, int]):
        """Uninitialised room for ``n_frames`` frames of (modes, h, w) as stored."""
        modes, h, w = shape
        if self.precision == "single":
            return self.backend.xp.empty((n_frames, modes, h, w), np.complex64)
        return self.backend.xp.empty((n_frames, modes, h, 2 * w), np.float16)

    def too_large(self, n_frames: int, shape: tuple[int, int, int], needed: int, available: int) -> str:
        """Why ``n_frames`` frames' far fields (``needed`` bytes more than held) cannot be held, and what would help."""
        gib = 2**30
        modes, h, w = shape
        smaller = "farfield_precision='half' halves that, " if self.precision == "single" else ""
        more = f" ({needed / gib:.1f} GiB more than held)" if self.pages else ""
        return (
            f"dm keeps every frame's far fields: {n_frames} frames x {modes} modes of {h}x{w} need "
            f"{n_frames * self.bytes_per_frame(shape) / gib:.1f} GiB in {self.precision} precision{more}, "
            f"and {available / gib:.1f} GiB of memory is free; {smaller}several MPI ranks (--ranks) share it, "
            "and rpie or lsqml keep none"
        )

    def runs(self, first: int, stop: int) -> list[range]:
        """The frames ``first`` to ``stop`` (exclusive) in runs that each lie in one page."""
        edges = [first, *range((first // PAGE_FRAMES + 1) * PAGE_FRAMES, stop, PAGE_FRAMES), stop]
        return [range(low, high) for low, high in itertools.pairwise(edges) if high > low]

    def stored(self, part: slice):
        """The stored values of ``part`` (within one page): a view."""
        page, row = divmod(part.start, PAGE_FRAMES)
        if part.stop - page * PAGE_FRAMES > PAGE_FRAMES:
            raise IndexError(f"frames {part.start}-{part.stop - 1} span pages of {PAGE_FRAMES} frames")
        return self.pages[page][row : part.stop - page * PAGE_FRAMES]

    def put(self, part: slice, values) -> None:
        """Store the complex ``values`` (n, modes, h, w) as the frames of ``part``."""
        if self.precision == "single":
            self.stored(part)[...] = values
            return
        if self.scale is None:
            self.scale = np.float32(storage_scale(float(abs(values).max())))
        kernels = self.backend.kernels
        if kernels is not None:
            kernels.half_rows_from_single(rows(values.view(np.float32)), self.scale, rows(self.bits(part)))
        else:
            self.stored(part)[...] = half_from_single(values, self.scale)

    def chunk(self, part: slice, workspace):
        """The far fields of ``part`` as complex64 to read or change: the stored ones, or a copy in ``workspace``.

        A change reaches the store with :meth:`keep`.
        """
        if self.precision == "single":
            return self.stored(part)
        return self.read(part, workspace[: part.stop - part.start])

    def read(self, part: slice, out):
        """``out`` (n, modes, h, w) complex64 = the far fields of ``part``; returns ``out``."""
        if self.precision == "single":
            out[...] = self.stored(part)
            return out
        kernels = self.backend.kernels
        if kernels is not None:
            kernels.single_rows_from_half(rows(self.bits(part)), self.unscale, rows(out.view(np.float32)))
        else:
            single_from_half(self.stored(part), self.unscale, out)
        return out

    def bits(self, part: slice):
        """The stored float16 pairs of ``part`` as their uint16 bits (what compiled kernels take; half precision)."""
        return self.stored(part).view(np.uint16)

    @property
    def unscale(self) -> np.float32:
        """The inverse of the stored numbers' scale (half precision)."""
        return np.float32(1 / self.scale)

    def keep(self, part: slice, chunk) -> None:
        """Keep a :meth:`chunk` of ``part`` changed in place (in single precision it is the store itself)."""
        if self.precision == "half":
            self.put(part, chunk)

    def change(self, parts: list[slice], change: Callable, workspace) -> None:
        """``change(far_fields)`` every part's far fields in place, and keep them."""
        for part in parts:
            values = self.chunk(part, workspace)
            change(values)
            self.keep(part, values)


def rows(values):
    """A C-contiguous array as 2-D rows of its last axis (what the conversion kernels take)."""
    return values.reshape(-1, values.shape[-1])


def half_from_single(values, scale: float):
    """Complex64 ``values`` (..., w) times ``scale`` as float16 pairs (..., 2w): the definition of
    :func:`.kernels.half_rows_from_single`."""
    return (values.view(np.float32) * np.float32(scale)).astype(np.float16)


def single_from_half(stored, unscale, out) -> None:
    """``out`` (..., w) complex64 = float16 pairs ``stored`` (..., 2w) times ``unscale``: the definition of
    :func:`.kernels.single_rows_from_half`."""
    out.view(np.float32)[...] = stored.astype(np.float32) * np.float32(unscale)
