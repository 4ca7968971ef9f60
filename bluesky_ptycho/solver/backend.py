"""The array backend: the same solver code runs on NumPy (CPU) and CuPy (GPU).

A reconstruction keeps one :class:`ArrayBackend` on its state: the array
module, the FFTs (library, threads and, for FFTW, plans kept per thread) and
the compiled CPU kernels or none (:mod:`.kernels`). Nothing here is switched
globally: two reconstructions in two threads may use different backends.
Routines that work on arrays of any module ask :func:`array_module` for it and
call the few operations that differ between NumPy and CuPy (FFTs,
scatter-add, sliding windows) through this module.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import platformdirs
import scipy.fft

from . import strict

# the optional "fftw" extra; imported on first use, since importing pyFFTW imports
# dask.array where dask is installed (0.7 s that a short CLI call need not pay)
FFTW_INSTALLED = importlib.util.find_spec("pyfftw") is not None

try:  # pragma: no cover - exercised only where CuPy and a GPU are present
    import cupy
    import cupyx
    import cupyx.scipy.fft as cupy_fft
except Exception:  # ImportError, or CUDA libraries missing at import time
    cupy = None

DEVICES = ("cpu", "gpu")
# for tests: the array-expression (CuPy) path on NumPy arrays as strict as CuPy's (see .strict)
STRICT_DEVICE = "strict"

FFT_LIBRARIES = ("scipy", "fftw")
# FFTW transforms a stack of frames in chunks of about this size, with plans
# kept per thread; frames this large or larger get measured plans
_FFTW_CHUNK_BYTES = 4 * 2**20
_FFTW_PLANS_KEPT = 16
_FFTW_MEASURED_PIXELS = 256 * 256
# what the solver keeps between runs on this machine: compiled kernels, FFTW's measurements
USER_CACHE = Path(platformdirs.user_cache_dir("bluesky-ptycho"))

logger = logging.getLogger(__name__)
_fftw_plans = threading.local()
_fftw_threads_used = False
# FFTW's thread pool does not survive fork(): set in a child forked after it ran
_fftw_lost_in_fork = False


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
    if device == STRICT_DEVICE:
        return strict.xp
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
    """Return numpy or cupy (or the strict test module), whichever owns the array ``x``."""
    if cupy is not None and isinstance(x, cupy.ndarray):  # pragma: no cover
        return cupy
    if isinstance(x, strict.StrictArray):
        return strict.xp
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of either module to host memory (no copy for NumPy)."""
    if cupy is not None and isinstance(x, cupy.ndarray):  # pragma: no cover
        return cupy.asnumpy(x)
    if isinstance(x, strict.StrictArray):
        return x.array.copy()
    return np.asarray(x)


def default_workers() -> int:
    """Number of threads for CPU FFTs: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_fft_library() -> str:
    """The library that computes CPU FFTs unless told otherwise: "fftw" where pyFFTW is installed, else "scipy"."""
    return "fftw" if FFTW_INSTALLED else "scipy"


def check_fft_library(name: str) -> str:
    """``name`` if it is a CPU FFT library that can run here.

    Raises
    ------
    ValueError
        If ``name`` is unknown, or "fftw" is asked for without pyFFTW.
    """
    if name not in FFT_LIBRARIES:
        raise ValueError(f"FFT library must be one of {FFT_LIBRARIES}, got {name!r}")
    if name == "fftw" and not FFTW_INSTALLED:
        raise ValueError("the 'fftw' FFT library needs pyFFTW: pip install 'bluesky-ptycho[fftw]'")
    return name


def _fftw_plan(shape: tuple[int, ...], dtype, forward: bool, threads: int):
    """A planned in-place 2-D FFT of aligned (n, h, w) arrays, and the scratch array it was planned on.

    Plans are made once per thread (executing a plan on new arrays changes
    it) on a scratch array, since measuring overwrites the data: frames of
    256 x 256 pixels and more are measured (FFTW_MEASURE), smaller ones
    estimated, which plans them as well.
    """
    key = (shape, dtype, forward, threads)
    kept = getattr(_fftw_plans, "plans", None)
    if kept is None:
        kept = _fftw_plans.plans = OrderedDict()
    if key in kept:
        kept.move_to_end(key)
        return kept[key]
    scratch = _pyfftw().empty_aligned(shape, dtype)
    effort = "FFTW_MEASURE" if shape[-1] * shape[-2] >= _FFTW_MEASURED_PIXELS else "FFTW_ESTIMATE"
    plan = _pyfftw().FFTW(
        scratch,
        scratch,
        axes=(-2, -1),
        direction="FFTW_FORWARD" if forward else "FFTW_BACKWARD",
        flags=(effort,),
        threads=threads,
    )
    if effort == "FFTW_MEASURE":
        _save_wisdom()
    kept[key] = plan, scratch
    while len(kept) > _FFTW_PLANS_KEPT:
        kept.popitem(last=False)
    return plan, scratch


def is_aligned(x) -> bool:
    """Whether ``x`` starts where FFTW's SIMD code wants it (always True without pyFFTW)."""
    return not FFTW_INSTALLED or x.ctypes.data % _pyfftw().simd_alignment == 0


def empty_aligned(shape: tuple[int, ...], dtype, xp: ModuleType = np):
    """An uninitialised array on ``xp``, SIMD-aligned for FFTW on NumPy."""
    if xp is np and FFTW_INSTALLED:
        return _pyfftw().empty_aligned(shape, dtype)
    return xp.empty(shape, dtype)


def _after_fork_in_child() -> None:
    """FFTW's thread pool does not survive a fork: a child forked after it ran uses scipy.fft."""
    global _fftw_lost_in_fork, _fftw_plans
    _fftw_plans = threading.local()
    _fftw_lost_in_fork = _fftw_threads_used


@cache
def _pyfftw() -> ModuleType:
    """pyFFTW, imported once, with the wisdom measured before; FFTW's threads do not survive a fork, which the child is told."""
    import pyfftw

    os.register_at_fork(after_in_child=_after_fork_in_child)
    _load_wisdom(pyfftw)
    return pyfftw


def fftw_wisdom_file() -> Path:
    """Where FFTW's measured plans are kept for this machine (measuring a 256 x 256 plan takes a few 0.1 s)."""
    return USER_CACHE / f"fftw-wisdom-{platform.node() or 'this-machine'}.json"


def _load_wisdom(pyfftw: ModuleType) -> None:
    try:
        pyfftw.import_wisdom(tuple(text.encode() for text in json.loads(fftw_wisdom_file().read_text())))
    except FileNotFoundError:
        pass
    except (
        OSError,
        ValueError,
        TypeError,
        AttributeError,
    ) as error:  # unreadable: the plans are measured again
        logger.debug("FFTW wisdom in %s not used: %s", fftw_wisdom_file(), error)


def _save_wisdom() -> None:
    path = fftw_wisdom_file()
    written = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(json.dumps([text.decode() for text in _pyfftw().export_wisdom()]))
        os.replace(written, path)
    except OSError as error:  # a read-only cache: plans are measured again next time
        logger.debug("FFTW wisdom not kept in %s: %s", path, error)


def _fftw_transform(x, forward: bool, workers: int, overwrite_x: bool):
    """Orthonormal 2-D FFT of ``x``'s last two axes with FFTW, in chunks of frames; in place when allowed."""
    global _fftw_threads_used
    dtype = np.dtype(np.result_type(x.dtype, np.complex64))
    if overwrite_x and x.dtype == dtype and x.flags.c_contiguous and x.flags.writeable and is_aligned(x):
        out = x
    else:
        out = empty_aligned(x.shape, dtype)
        out[...] = x
    frames = out.reshape(-1, *out.shape[-2:])
    chunk = max(1, _FFTW_CHUNK_BYTES // frames[0].nbytes)
    _fftw_threads_used = _fftw_threads_used or workers > 1
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        plan, scratch = _fftw_plan(part.shape, dtype, forward, workers)
        plan.update_arrays(part, part)
        plan.execute()
        plan.update_arrays(scratch, scratch)  # so the plan does not keep ``out`` alive
    out *= out.real.dtype.type(1 / np.sqrt(x.shape[-1] * x.shape[-2]))
    return out


def _fftw_serves(x, library: str) -> bool:
    """FFTW runs the frames of ``x`` in aligned chunks: every frame must keep the alignment."""
    if library != "fftw" or not FFTW_INSTALLED or _fftw_lost_in_fork:
        return False
    frame_bytes = x.shape[-1] * x.shape[-2] * np.dtype(np.result_type(x.dtype, np.complex64)).itemsize
    return frame_bytes % _pyfftw().simd_alignment == 0


def _transform2(x, forward: bool, workers: int | None, overwrite_x: bool, library: str | None = None):
    """Orthonormal 2-D FFT (``forward``) or inverse over the last two axes, on x's device.

    CPU FFTs use ``library`` (default: :func:`default_fft_library`) with
    ``workers`` threads (default: every core).
    """
    if array_module(x) is strict.xp:
        transform = scipy.fft.fft2 if forward else scipy.fft.ifft2
        return strict.wrap(transform(x.array, norm="ortho", overwrite_x=overwrite_x))
    if array_module(x) is not np:
        transform = cupy_fft.fft2 if forward else cupy_fft.ifft2  # pragma: no cover
        return transform(x, norm="ortho", overwrite_x=overwrite_x)  # pragma: no cover
    workers = workers or default_workers()
    if _fftw_serves(x, library or default_fft_library()):
        return _fftw_transform(x, forward, workers, overwrite_x)
    transform = scipy.fft.fft2 if forward else scipy.fft.ifft2
    return transform(x, norm="ortho", workers=workers, overwrite_x=overwrite_x)


def fft2(x, workers: int | None = None, overwrite_x: bool = False):
    """Orthonormal 2-D FFT over the last two axes, zero frequency at index 0.

    ``overwrite_x`` lets the transform reuse ``x``'s memory (in place);
    always use the returned array.
    """
    return _transform2(x, True, workers, overwrite_x)


def ifft2(x, workers: int | None = None, overwrite_x: bool = False):
    """Orthonormal inverse 2-D FFT over the last two axes (see :func:`fft2`)."""
    return _transform2(x, False, workers, overwrite_x)


def rfft2(x, workers: int | None = None):
    """2-D FFT of a real array over the last two axes (half spectrum)."""
    if array_module(x) is np:
        return scipy.fft.rfft2(x, workers=workers or default_workers())
    if array_module(x) is strict.xp:
        return strict.wrap(scipy.fft.rfft2(x.array))
    return cupy_fft.rfft2(x)  # pragma: no cover


def irfft2(x, shape: tuple[int, int], workers: int | None = None):
    """Inverse of :func:`rfft2` for real output of ``shape``."""
    if array_module(x) is np:
        return scipy.fft.irfft2(x, s=shape, workers=workers or default_workers())
    if array_module(x) is strict.xp:
        return strict.wrap(scipy.fft.irfft2(x.array, s=shape))
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
    if xp is strict.xp:
        scatter_add(target.array, strict.unwrap(flat_index), strict.unwrap(values))
        return
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


@dataclass(frozen=True)
class ArrayBackend:
    """Where the solver's arrays live and what computes on them: one object, kept on the solver state.

    Attributes
    ----------
    device
        "cpu", "gpu" or "strict" (the CuPy-like test module, :mod:`.strict`).
    xp
        The array module: numpy, cupy or the strict module.
    fft_library
        "scipy" or "fftw" on the CPU (FFTW's plans are kept per thread);
        "cupy" on the GPU, "scipy" on the strict module.
    workers
        Threads of the CPU FFTs.
    kernels
        The compiled CPU kernels (:mod:`.kernels`) that run the per-pixel
        work of an iteration on NumPy arrays, or None: the array expressions
        then run, which are the definition and what CuPy runs.
    """

    device: str
    xp: ModuleType
    fft_library: str
    workers: int
    kernels: ModuleType | None

    def fft2(self, x, overwrite_x: bool = False):
        """Orthonormal 2-D FFT over the last two axes (see :func:`fft2`)."""
        return _transform2(x, True, self.workers, overwrite_x, self.fft_library)

    def ifft2(self, x, overwrite_x: bool = False):
        """Orthonormal inverse 2-D FFT over the last two axes (see :func:`fft2`)."""
        return _transform2(x, False, self.workers, overwrite_x, self.fft_library)

    def describe(self) -> str:
        """In words, for the record: e.g. "cpu: fftw FFTs on 2 threads, compiled kernels"."""
        if self.xp is not np:
            return f"{self.device}: {self.fft_library} FFTs, array expressions"
        code = "compiled kernels" if self.kernels is not None else "array expressions"
        return f"{self.device}: {self.fft_library} FFTs on {self.workers} threads, {code}"


def make_backend(
    device: str = "cpu", fft_library: str | None = None, workers: int | None = None, compiled: bool = True
) -> ArrayBackend:
    """The :class:`ArrayBackend` of ``device``.

    ``fft_library`` (CPU: "scipy" or "fftw"; default :func:`default_fft_library`),
    ``workers`` (default: every core) and ``compiled`` (False: the array
    expressions on NumPy too, to compare the two paths) choose how the CPU computes.

    Raises
    ------
    ValueError
        For an unknown device or FFT library, or one that cannot run here.
    """
    xp = module_for_device(device)
    if xp is not np:
        library = "cupy" if device == "gpu" else "scipy"
        return ArrayBackend(device, xp, library, 1, None)
    library = check_fft_library(fft_library or default_fft_library())
    return ArrayBackend(device, xp, library, workers or default_workers(), _kernels() if compiled else None)


@cache
def _kernels() -> ModuleType | None:
    """The compiled CPU kernels, or None where numba cannot be imported (with one warning)."""
    try:
        from . import kernels
    except ImportError as error:  # pragma: no cover - numba is a dependency
        logger.warning("compiled kernels unavailable (%s); using NumPy array expressions", error)
        return None
    return kernels
