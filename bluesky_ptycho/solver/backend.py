"""Array-module dispatch: the same solver code runs on NumPy (CPU) and CuPy (GPU).

Every numerical routine of the solver asks :func:`array_module` for the module
of its inputs and calls the few operations that differ between NumPy and CuPy
(FFTs, scatter-add, sliding windows) through this module.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

try:  # pragma: no cover - exercised only where CuPy and a GPU are present
    import cupy
    import cupyx
    import cupyx.scipy.fft as cupy_fft
except Exception:  # ImportError, or CUDA libraries missing at import time
    cupy = None

DEVICES = ("cpu", "gpu")


def gpu_available() -> bool:
    """Return True when CuPy is installed and can see at least one GPU."""
    if cupy is None:
        return False
    try:  # pragma: no cover
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover
        return False


def module_for_device(device: str) -> ModuleType:
    """Return the array module (numpy or cupy) that serves ``device``.

    Raises
    ------
    ValueError
        If ``device`` is unknown, or "gpu" is asked for where no GPU is usable.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return np
    if not gpu_available():
        raise ValueError(
            "device='gpu' needs CuPy and a CUDA GPU: install the 'gpu' extra "
            "(pip install 'bluesky-ptycho[gpu]') on a machine with a GPU"
        )
    return cupy  # pragma: no cover


def array_module(x: Any) -> ModuleType:
    """Return numpy or cupy, whichever owns the array ``x``."""
    if cupy is not None and isinstance(x, cupy.ndarray):  # pragma: no cover
        return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of either module to host memory (no copy for NumPy)."""
    if cupy is not None and isinstance(x, cupy.ndarray):  # pragma: no cover
        return cupy.asnumpy(x)
    return np.asarray(x)


def default_workers() -> int:
    """Number of threads for CPU FFTs: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def fft2(x, workers: int | None = None, overwrite_x: bool = False):
    """Orthonormal 2-D FFT over the last two axes, zero frequency at index 0."""
    if array_module(x) is np:
        return scipy.fft.fft2(x, norm="ortho", workers=workers or default_workers(), overwrite_x=overwrite_x)
    return cupy_fft.fft2(x, norm="ortho", overwrite_x=overwrite_x)  # pragma: no cover


def ifft2(x, workers: int | None = None, overwrite_x: bool = False):
    """Orthonormal inverse 2-D FFT over the last two axes."""
    if array_module(x) is np:
        return scipy.fft.ifft2(x, norm="ortho", workers=workers or default_workers(), overwrite_x=overwrite_x)
    return cupy_fft.ifft2(x, norm="ortho", overwrite_x=overwrite_x)  # pragma: no cover


def rfft2(x, workers: int | None = None):
    """2-D FFT of a real array over the last two axes (half spectrum)."""
    if array_module(x) is np:
        return scipy.fft.rfft2(x, workers=workers or default_workers())
    return cupy_fft.rfft2(x)  # pragma: no cover


def irfft2(x, shape: tuple[int, int], workers: int | None = None):
    """Inverse of :func:`rfft2` for real output of ``shape``."""
    if array_module(x) is np:
        return scipy.fft.irfft2(x, s=shape, workers=workers or default_workers())
    return cupy_fft.irfft2(x, s=shape)  # pragma: no cover


def sliding_windows(image, window_shape: tuple[int, int]):
    """Read-only view of every ``window_shape`` window of a 2-D ``image``.

    ``windows[r, c]`` is ``image[r:r + h, c:c + w]``; indexing it with arrays of
    rows and columns gathers many patches in one vectorised copy.
    """
    xp = array_module(image)
    return xp.lib.stride_tricks.sliding_window_view(image, window_shape)


def scatter_add(target, flat_index, values) -> None:
    """Add ``values`` into the flat view of ``target`` at ``flat_index``, in place.

    Repeated indices accumulate, as needed for overlapping patches.
    ``flat_index`` and ``values`` must have the same number of elements.
    """
    xp = array_module(target)
    flat_index = flat_index.ravel()
    flat_target = target.reshape(-1)
    if xp is np:
        # np.bincount is several times faster than np.add.at here, and, unlike
        # np.add.at, its speed does not depend on where the arrays lie in memory
        parts = (flat_target.real, flat_target.imag) if np.iscomplexobj(target) else (flat_target,)
        sources = (values.real, values.imag) if np.iscomplexobj(values) else (values,)
        for part, source in zip(parts, sources, strict=True):
            part += np.bincount(flat_index, source.ravel(), minlength=flat_target.size)
        return
    if xp.iscomplexobj(target):  # pragma: no cover - CuPy: scatter as float pairs
        pairs = flat_target.view(target.real.dtype)
        doubled = xp.stack([2 * flat_index, 2 * flat_index + 1], axis=-1).ravel()
        cupyx.scatter_add(pairs, doubled, values.ravel().view(pairs.dtype))
    else:  # pragma: no cover
        cupyx.scatter_add(flat_target, flat_index, values.ravel())
