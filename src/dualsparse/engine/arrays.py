"""Arrays of the engine: argument checks of the packed formats (weights in: ``as_matrix``;
stored arrays: ``check_array``; errors name the argument) and cache-line aligned allocation
(``aligned_empty``, ``aligned_copy``)."""

from __future__ import annotations

import math

import numpy as np
import torch


def check_array(name: str, a: np.ndarray, shape: tuple | None, dtypes: tuple) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``a`` is a C-contiguous numpy array of one
    of ``dtypes`` (and of ``shape`` unless ``None``)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


#: Byte alignment of the arrays that the SIMD kernels load and store 16 floats at a time: a
#: 64-byte load from an address that is not a multiple of 64 spans two cache lines. NumPy
#: aligns large arrays to 16 bytes only; aligned, the paper decoder's 512-token product took
#: 42 instead of 60 us per token on an Intel Xeon (docs/engine.md).
ALIGN_BYTES = 64


def aligned_empty(shape: int | tuple, dtype: type | np.dtype = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose first element is :data:`ALIGN_BYTES`-aligned."""
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise ValueError(f"shape must be non-negative integers, got {shape}")
    nbytes = math.prod(shape) * dt.itemsize
    buf = np.empty(nbytes + ALIGN_BYTES, dtype=np.uint8)
    off = -buf.__array_interface__["data"][0] % ALIGN_BYTES  # (``ctypes.data``: 3 us a call)
    return buf[off:off + nbytes].view(dt).reshape(shape)


def aligned_zeros(shape: int | tuple, dtype: type | np.dtype = np.float32) -> np.ndarray:
    """As :func:`aligned_empty`, filled with zeros."""
    a = aligned_empty(shape, dtype)
    a.fill(0)
    return a


def aligned_copy(a: np.ndarray, dtype: type | np.dtype | None = None) -> np.ndarray:
    """A C-contiguous, :data:`ALIGN_BYTES`-aligned copy of ``a`` (cast to ``dtype`` if given)."""
    out = aligned_empty(a.shape, a.dtype if dtype is None else dtype)
    out[...] = a
    return out


def as_matrix(weight: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """A finite, non-empty 2-D float32 numpy copy of ``weight`` (``name`` in errors)."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to("cpu", torch.float32).numpy()
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf")
    return w


__all__ = ["ALIGN_BYTES", "aligned_copy", "aligned_empty", "aligned_zeros", "as_matrix",
           "check_array"]
