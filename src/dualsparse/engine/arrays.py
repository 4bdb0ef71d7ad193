"""Argument checks of the packed formats: weights in (``as_matrix``), stored arrays
(``check_array``); errors name the argument."""

from __future__ import annotations

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


__all__ = ["as_matrix", "check_array"]
