"""Whether NumPy asks Linux for transparent huge pages for this process's large arrays.

NumPy advises the kernel to back every array of 4 MiB or more with 2 MiB
huge pages (``madvise(MADV_HUGEPAGE)``). Where the kernel's huge-page defrag
setting is ``madvise`` (the common default), each such page is found by
compacting memory on the spot, so the first write to fresh memory costs 10-20
times as much as with ordinary pages on a machine whose memory is in use: on
the 2-core development machine, storing a 256² frame in the frame store took
1.1-1.3 ms with huge pages and 0.07 ms without, while iterations took the
same time either way (docs/performance.md, "Scans at detector rate"). A reconstruction
writes fresh memory all the time (frame stores that grow with the scan,
canvases, results), so the processes this package starts for itself (the
worker, the MPI ranks, the command line and ``serve``) use ordinary pages,
and in the RunEngine's process, whose NumPy setting is the user's, the large
arrays that arrive with each result (copied out of the worker's reply,
converted to images, placed on the scan's canvas) are made in ordinary pages
by :func:`ordinary_empty`. NumPy's own ``NUMPY_MADVISE_HUGEPAGE`` environment
variable, when set, still decides.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

HUGE_PAGES_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"
# NumPy advises huge pages for arrays of this many bytes or more
HUGE_PAGE_THRESHOLD = 4 * 2**20


def prefer_ordinary_pages() -> bool:
    """Stop NumPy advising huge pages for this process's new arrays, unless ``NUMPY_MADVISE_HUGEPAGE`` is set.

    Returns
    -------
    bool
        Whether NumPy advised huge pages before (False as well where the
        variable decides or this NumPy has no such switch).
    """
    switch = getattr(np._core.multiarray, "_set_madvise_hugepage", None)
    if HUGE_PAGES_VARIABLE in os.environ or switch is None:
        return False
    return switch(False)


def ordinary_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array in ordinary pages whatever this process's NumPy setting (unless the variable asks for huge).

    An array of ``HUGE_PAGE_THRESHOLD`` bytes or more is an anonymous memory
    map, which nothing advises to be huge; a smaller one is NumPy's.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < HUGE_PAGE_THRESHOLD or os.environ.get(HUGE_PAGES_VARIABLE, "0") != "0":
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)
