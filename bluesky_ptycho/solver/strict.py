"""A NumPy array module as strict as CuPy: arrays that never turn into host arrays implicitly.

``device="strict"`` runs the solver's array-expression path (the code CuPy
runs, without the compiled CPU kernels) on these arrays, so machines without
a GPU test it: ``numpy.asarray`` of a strict array raises, as it does for a
CuPy array; reductions return 0-d arrays, as CuPy's do; ``float()``,
``int()`` and ``bool()`` of one are allowed (CuPy synchronises there);
:func:`~.backend.to_numpy` copies one to the host explicitly, as
``cupy.asnumpy`` does. Every NumPy function and ufunc works on them through
NumPy's dispatch protocols, and returns strict arrays.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


def unwrap(value: Any) -> Any:
    """The NumPy array inside every strict array of ``value`` (recursing into tuples, lists and dicts)."""
    if isinstance(value, StrictArray):
        return value.array
    if isinstance(value, tuple | list):
        return type(value)(unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


def wrap(value: Any) -> Any:
    """Strict arrays for every NumPy array or scalar in ``value`` (recursing into tuples and lists)."""
    if isinstance(value, np.ndarray):
        return StrictArray(value)
    if isinstance(value, np.generic):
        return StrictArray(np.asarray(value))  # CuPy reductions give 0-d arrays, not scalars
    if hasattr(value, "_fields"):  # a named tuple (numpy.linalg's results)
        return type(value)(*(wrap(v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(wrap(v) for v in value)
    return value


class StrictArray(NDArrayOperatorsMixin):
    """A NumPy array that refuses implicit conversion to a host array."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "implicit conversion of a strict (CuPy-like) array to a NumPy array is not allowed; "
            "use backend.to_numpy()"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for value in (*inputs, *kwargs.get("out", ())):
            if isinstance(value, np.ndarray) and value.ndim:  # as CuPy's ufuncs refuse host arrays
                raise TypeError(
                    f"{ufunc.__name__} of a strict (CuPy-like) array and a host array of shape {value.shape}: "
                    "move it to the device first (xp.asarray)"
                )
        return wrap(getattr(ufunc, method)(*unwrap(inputs), **unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        return wrap(func(*unwrap(args), **unwrap(kwargs)))

    def __getitem__(self, key):
        return wrap(self.array[unwrap(key)])

    def __setitem__(self, key, value) -> None:
        self.array[unwrap(key)] = unwrap(value)

    def __getattr__(self, name: str):
        if name.startswith("__"):  # __array_interface__ and the like would hand NumPy the host array
            raise AttributeError(name)
        attribute = getattr(self.array, name)
        if callable(attribute):
            return lambda *args, **kwargs: wrap(attribute(*unwrap(args), **unwrap(kwargs)))
        return wrap(attribute)

    def __len__(self) -> int:
        return len(self.array)

    def __iter__(self):
        return (wrap(item) for item in self.array)

    def __float__(self) -> float:
        return float(self.array)

    def __int__(self) -> int:
        return int(self.array)

    def __complex__(self) -> complex:
        return complex(self.array)

    def __bool__(self) -> bool:
        return bool(self.array)

    def __index__(self) -> int:
        return self.array.__index__()

    def __repr__(self) -> str:
        return f"strict({self.array!r})"

    def __getstate__(self):
        return self.array

    def __setstate__(self, state) -> None:
        self.array = state


class _StrictNamespace(types.ModuleType):
    """NumPy's functions (or a submodule's), taking and giving strict arrays."""

    def __init__(self, name: str, source: types.ModuleType) -> None:
        super().__init__(name)
        self._source = source

    def __getattr__(self, name: str):
        attribute = getattr(self._source, name)
        if isinstance(attribute, types.ModuleType):
            return _StrictNamespace(f"{self.__name__}.{name}", attribute)
        if isinstance(attribute, type) or not callable(attribute):
            return attribute  # dtypes and constants pass through
        return lambda *args, **kwargs: wrap(attribute(*unwrap(args), **unwrap(kwargs)))


#: The strict array module, used where the solver would use ``numpy`` or ``cupy``.
xp = _StrictNamespace("strict", np)
